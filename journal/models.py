"""The journal's records; each part of it in its own section below."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxLengthValidator
from django.db import models
from django.db.models import Q

from alerts.models import AlertRule
from risk.models import LimitKind

# --- Trading log ---------------------------------------------------------------------------------


class Trend(models.TextChoices):
    UP = "up", "Up"
    DOWN = "down", "Down"
    SIDEWAYS = "sideways", "Sideways"
    MIXED = "mixed", "Mixed"


class Volatility(models.TextChoices):
    LOW = "low", "Low"
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"
    EXTREME = "extreme", "Extreme"


NOTES_MAX = 20_000
KEY_EVENTS_MAX = 2_000


class LogEntry(models.Model):
    """The trading log of one day (in the desk's time zone): the desk's (no engine) or one
    engine's. Its figures are filled in from the data when it is saved (journal.tradinglog)."""

    day = models.DateField()
    engine = models.ForeignKey(
        "controlplane.Engine",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="log_entries",
    )
    trend = models.CharField(max_length=10, choices=Trend.choices, blank=True)
    volatility = models.CharField(max_length=10, choices=Volatility.choices, blank=True)
    key_events = models.TextField(blank=True, validators=[MaxLengthValidator(KEY_EVENTS_MAX)])
    notes = models.TextField(
        blank=True, validators=[MaxLengthValidator(NOTES_MAX)], help_text="Markdown."
    )
    figures = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by_label = models.CharField(max_length=150)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-day"]
        verbose_name_plural = "log entries"
        constraints = [
            models.UniqueConstraint(fields=["day", "engine"], name="logentry_one_per_engine_day"),
            # NULLs are distinct to a plain unique constraint: the desk's entry has its own.
            models.UniqueConstraint(
                fields=["day"], condition=Q(engine__isnull=True), name="logentry_one_desk_day"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.engine.name if self.engine_id else 'desk'}"  # type: ignore[union-attr]


class LogEntryRevision(models.Model):
    """What an entry said after each save, kept for ever: its history."""

    entry = models.ForeignKey(LogEntry, on_delete=models.CASCADE, related_name="revisions")
    version = models.PositiveIntegerField()
    trend = models.CharField(max_length=10, blank=True)
    volatility = models.CharField(max_length=10, blank=True)
    key_events = models.TextField(blank=True)
    notes = models.TextField(blank=True)
    edited_by_label = models.CharField(max_length=150)
    edited_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["entry", "version"], name="logrevision_unique_version")
        ]

    def __str__(self) -> str:
        return f"{self.entry} v{self.version}"


# --- Runbooks ------------------------------------------------------------------------------------

RUNBOOK_BODY_MAX = 50_000


class Runbook(models.Model):
    """A plan for a scenario (docs/operations.md, "Runbooks"); its body is Markdown."""

    slug = models.SlugField(max_length=64, unique=True)
    title = models.CharField(max_length=120)
    scenario = models.CharField(max_length=300, help_text="When this plan applies.")
    body = models.TextField(validators=[MaxLengthValidator(RUNBOOK_BODY_MAX)])
    version = models.PositiveIntegerField(default=1)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    updated_by_label = models.CharField(max_length=150)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title


class RunbookRevision(models.Model):
    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="revisions")
    version = models.PositiveIntegerField()
    title = models.CharField(max_length=120)
    scenario = models.CharField(max_length=300)
    body = models.TextField()
    reason = models.TextField(blank=True)
    edited_by_label = models.CharField(max_length=150)
    edited_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["runbook", "version"], name="runbookrevision_unique_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.title} v{self.version}"


class RunbookLink(models.Model):
    """An alert rule or a kind of risk limit pointing at its runbook: one runbook each."""

    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="links")
    alert_rule = models.OneToOneField(
        AlertRule, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    limit_kind = models.CharField(max_length=32, choices=LimitKind.choices, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(Q(alert_rule__isnull=False) & Q(limit_kind=""))
                | (Q(alert_rule__isnull=True) & ~Q(limit_kind="")),
                name="runbooklink_rule_or_kind",
            ),
            models.UniqueConstraint(
                fields=["limit_kind"], condition=~Q(limit_kind=""), name="runbooklink_one_per_kind"
            ),
        ]

    def __str__(self) -> str:
        target = self.alert_rule.name if self.alert_rule_id else self.limit_kind  # type: ignore[union-attr]
        return f"{target} -> {self.runbook.slug}"


# --- Reviews -------------------------------------------------------------------------------------


class Period(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    QUARTERLY = "quarterly", "Quarterly"


class ReviewItem(models.Model):
    """One line of a period's checklist. ``computed`` names a check the data answers
    (journal.reviews.CHECKS), or is empty: a person ticks it."""

    period = models.CharField(max_length=10, choices=Period.choices)
    key = models.SlugField(max_length=40)
    label = models.CharField(max_length=200)
    computed = models.CharField(max_length=40, blank=True)
    position = models.PositiveSmallIntegerField(default=0)
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["period", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["period", "key"], name="reviewitem_unique_key")
        ]

    def __str__(self) -> str:
        return f"{self.period}: {self.label}"


class ReviewSchedule(models.Model):
    """When a period's reviews are owed: every period ending on or after ``starts_on``, due
    ``grace_days`` after the period's end (midnight in the desk's time zone)."""

    period = models.CharField(max_length=10, choices=Period.choices, unique=True)
    starts_on = models.DateField()
    grace_days = models.PositiveSmallIntegerField(default=1)
    enabled = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.period} since {self.starts_on}"


class Review(models.Model):
    """A signed-off review of one period: its checks as computed at the sign-off, each manual
    item as ticked, and who signed."""

    period = models.CharField(max_length=10, choices=Period.choices)
    period_start = models.DateField()
    period_end = models.DateField(help_text="Inclusive.")
    due_at = models.DateTimeField()
    results = models.JSONField(default=list)
    note = models.TextField(blank=True, validators=[MaxLengthValidator(NOTES_MAX)])
    signed_off_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    signed_off_by_label = models.CharField(max_length=150)
    signed_off_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period_start", "period"]
        permissions = [
            ("sign_review", "Sign off a daily or weekly review"),
            ("sign_period_review", "Sign off a monthly or quarterly review"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["period", "period_start"], name="review_one_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.period} review of {self.period_start}"
