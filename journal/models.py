"""The journal's records; each part of it in its own section below."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxLengthValidator
from django.db import models
from django.db.models import Q

from alerts.models import AlertRule
from risk.models import LimitKind

# --- Incidents ------------------------------------------------------------------------------------


class Incident(models.Model):
    """What went wrong, from the kill (or the person) that opened it to its post-mortem.

    ``snapshot`` is taken in the transaction that opens it: the engines as they were at that
    moment (states, P&L, positions, working orders), never updated afterwards.
    """

    class State(models.TextChoices):
        OPEN = "open"
        CLOSED = "closed"

    class Trigger(models.TextChoices):
        PERSON = "person", "A person's kill"
        LIMIT = "limit", "A risk limit's kill"
        ALERT_RULE = "alert_rule", "An alert rule's kill"
        RED_LINE = "red_line", "A red line's kill"
        CONTROL_PLANE = "control_plane", "The control plane's kill"
        BY_HAND = "by_hand", "Opened by hand"

    title = models.CharField(max_length=200)
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    reason = models.TextField(blank=True)
    opened_at = models.DateTimeField()
    opened_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    opened_by_label = models.CharField(max_length=150)
    engines = models.ManyToManyField("controlplane.Engine", related_name="incidents")
    # The kill that opened it; none when opened by hand.
    kill_batch = models.ForeignKey(
        "controlplane.CommandBatch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="incidents",
    )
    # The alert it was opened from by hand, if any.
    source_alert = models.ForeignKey(
        "alerts.Alert", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    snapshot = models.JSONField(default=dict, blank=True)
    # The commands issued to its engines while it is open (the kill, cancels, flattens, the
    # lift), and the alerts of its engines from shortly before it opened until it closes.
    commands = models.ManyToManyField("controlplane.Command", blank=True, related_name="incidents")
    alerts = models.ManyToManyField("alerts.Alert", blank=True, related_name="incidents")
    # When the kill was lifted on its last engine (a resume approved by a second person).
    lifted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    closed_by_label = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["state", "-opened_at"], name="incident_state_idx")]
        permissions = [
            ("open_incident", "Can open an incident by hand"),
            ("tick_incident", "Can tick an incident's checklist steps"),
            ("close_incident", "Can close an incident with its post-mortem"),
        ]

    def __str__(self) -> str:
        return f"incident #{self.pk}: {self.title}"


class Step(models.TextChoices):
    """The rollback checklist, in order (docs/operations.md, "Incidents")."""

    KILL = "kill", "Activate the kill switch"
    CANCEL_ORDERS = "cancel_orders", "Cancel open orders"
    ASSESS = "assess", "Assess positions, P&L and system state"
    DECIDE = "decide", "Decide to flatten or hold"
    FIX = "fix", "Fix the cause"
    TEST_ON_PAPER = "test_on_paper", "Test the fix on paper"
    RESTART_SMALL = "restart_small", "Restart gradually with small capital"
    MONITOR = "monitor", "Monitor closely for 24 hours"


class IncidentStep(models.Model):
    """One step of an incident's checklist: ticked from the data (``by_data``) or by a person."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="steps")
    key = models.CharField(max_length=16, choices=Step.choices)
    position = models.PositiveSmallIntegerField()
    done_at = models.DateTimeField(null=True, blank=True)
    by_data = models.BooleanField(default=False)
    done_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    done_by_label = models.CharField(max_length=150, blank=True)
    # What the data showed, or what the person said (the decision: flatten or hold).
    note = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["incident", "position"]
        constraints = [
            models.UniqueConstraint(fields=["incident", "key"], name="incident_step_unique")
        ]

    def __str__(self) -> str:
        return f"{self.get_key_display()} ({'done' if self.done_at else 'open'})"


class PostMortem(models.Model):
    """Required to close an incident: what went wrong, which assumptions failed, what changes."""

    class Cause(models.TextChoices):
        STRATEGY = "strategy"
        EXECUTION = "execution"
        MARKET = "market"

    incident = models.OneToOneField(Incident, on_delete=models.CASCADE, related_name="postmortem")
    cause = models.CharField(max_length=10, choices=Cause.choices)
    what_went_wrong = models.TextField()
    failed_assumptions = models.TextField()
    improvements = models.TextField()
    written_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    written_by_label = models.CharField(max_length=150)
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"post-mortem of incident #{self.incident_id}"


class FollowUp(models.Model):
    postmortem = models.ForeignKey(PostMortem, on_delete=models.CASCADE, related_name="follow_ups")
    position = models.PositiveSmallIntegerField()
    item = models.CharField(max_length=500)
    owner = models.CharField(max_length=150)

    class Meta:
        ordering = ["postmortem", "position"]

    def __str__(self) -> str:
        return f"{self.item} ({self.owner})"


# --- Emergency contacts ---------------------------------------------------------------------------


class EmergencyContact(models.Model):
    """Who to call when it goes wrong, in escalation order (1 first)."""

    name = models.CharField(max_length=150)
    role = models.CharField(max_length=100)
    phone = models.CharField(max_length=32)
    email = models.EmailField(max_length=254)
    escalation_order = models.PositiveSmallIntegerField()
    # Alert escalations go to the active contacts through the channel the journal keeps
    # (journal.contacts.CHANNEL_NAME), in this order.
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["escalation_order", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["escalation_order"],
                condition=Q(active=True),
                name="contact_one_per_escalation_order",
            )
        ]

    def __str__(self) -> str:
        return f"{self.escalation_order}. {self.name} ({self.role})"


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
