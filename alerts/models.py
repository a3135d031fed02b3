"""Alert rules, alerts and their lifecycle, silences, notification channels and deliveries.

Lifecycle of an alert: pending (the condition holds, for less than the rule's pending duration)
-> firing (notified) -> resolved (notified once more). One open alert per rule and engine: the
database refuses a second (no storm). Every state change is a conditional update, so several
Celery workers can evaluate at once.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from alerts.rule_metrics import EVENT_METRICS, METRICS


def _fernet() -> Fernet:
    # The key comes from CHANNEL_SECRET_KEY when set, else from SECRET_KEY; rotating it makes
    # stored channel targets unreadable (re-enter them), which the admin says when it happens.
    secret = getattr(settings, "CHANNEL_SECRET_KEY", "") or settings.SECRET_KEY
    key = base64.urlsafe_b64encode(hashlib.sha256(f"channels:{secret}".encode()).digest())
    return Fernet(key)


def encrypt(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError("this channel's target cannot be decrypted: enter it again") from exc


class Severity(models.TextChoices):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class NotificationChannel(models.Model):
    """One destination: an e-mail address list, or one Apprise URL (Slack, PagerDuty, ...)."""

    class Kind(models.TextChoices):
        EMAIL = "email", "E-mail (Django mail)"
        APPRISE = "apprise", "Apprise URL (Slack, PagerDuty, Telegram, webhook, ...)"

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # Encrypted at rest: Apprise URLs carry credentials (tokens, passwords, webhook secrets).
    target_encrypted = models.TextField(editable=False)
    target_hint = models.CharField(max_length=64, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def target(self) -> str:
        return decrypt(self.target_encrypted) if self.target_encrypted else ""

    @target.setter
    def target(self, value: str) -> None:
        self.target_encrypted = encrypt(value)
        scheme, sep, _ = value.partition("://")
        self.target_hint = f"{scheme}://…" if sep else value[:3] + "…"


class Scope(models.TextChoices):
    ALL = "all", "All engines"
    ENGINE = "engine", "One engine"
    TAG = "tag", "A strategy tag"


class Comparator(models.TextChoices):
    GT = ">", "above"
    GTE = ">=", "at or above"
    LT = "<", "below"
    LTE = "<=", "at or below"


class RuleAction(models.TextChoices):
    NOTIFY = "notify", "Notify"
    PAUSE = "pause", "Notify and pause the engine"
    KILL = "kill", "Notify and kill the engine"


class AlertRule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    metric = models.CharField(max_length=40, help_text="A metric of the registry (docs/alerts.md).")
    comparator = models.CharField(max_length=2, choices=Comparator.choices, default=Comparator.GT)
    threshold = models.FloatField()
    # The value must come back past threshold -/+ hysteresis to resolve (no flapping).
    hysteresis = models.FloatField(default=0.0)
    pending_s = models.PositiveIntegerField(
        default=0, help_text="How long the condition must hold before the alert fires."
    )
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.ALL)
    scope_value = models.CharField(max_length=64, blank=True)
    channels = models.ManyToManyField(NotificationChannel, blank=True, related_name="rules")
    repeat_interval_s = models.PositiveIntegerField(
        default=3600, help_text="Notify again while firing and unacknowledged; 0: never."
    )
    escalate_after_s = models.PositiveIntegerField(
        null=True, blank=True, help_text="Unacknowledged this long: notify the escalation channels."
    )
    escalation_channels = models.ManyToManyField(
        NotificationChannel, blank=True, related_name="escalation_rules"
    )
    action = models.CharField(max_length=8, choices=RuleAction.choices, default=RuleAction.NOTIFY)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.metric not in METRICS and self.metric not in EVENT_METRICS:
            raise ValidationError({"metric": unknown_metric(self.metric)})


def unknown_metric(name: str) -> str:
    return (
        f"{name!r} is not a metric of the registry: choose one of the list "
        "(docs/alerts.md, the metric registry)."
    )


class Alert(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        FIRING = "firing"
        RESOLVED = "resolved"

    OPEN = (State.PENDING, State.FIRING)

    rule = models.ForeignKey(
        AlertRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    # Alerts not from a rule (a risk limit's warning or breach) say where they came from.
    source = models.CharField(max_length=64, default="rule")
    engine = models.ForeignKey(
        "controlplane.Engine",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="alerts",
    )
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    summary = models.CharField(max_length=300)
    value = models.FloatField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)
    notifications_sent = models.PositiveIntegerField(default=0)
    escalated_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    acknowledged_by_label = models.CharField(max_length=150, blank=True)
    # What an operator found caused it (alerts.services.alert_explain): a critical alert with
    # none holds back an engine's step from shadow to small capital (golive.gates).
    explanation = models.TextField(blank=True)
    explained_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    explained_by_label = models.CharField(max_length=150, blank=True)
    explained_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "engine", "source"],
                condition=Q(state__in=["pending", "firing"]),
                name="alert_one_open_per_rule_engine",
                nulls_distinct=False,
            )
        ]
        indexes = [models.Index(fields=["state", "-started_at"], name="alert_state_idx")]
        permissions = [("acknowledge_alert", "Can acknowledge alerts")]

    def __str__(self) -> str:
        return f"[{self.state}] {self.summary}"


class Silence(models.Model):
    """While it lasts, matching alerts still change state but notify nobody."""

    rule = models.ForeignKey(
        AlertRule, null=True, blank=True, on_delete=models.CASCADE, help_text="Empty: every rule."
    )
    engine = models.ForeignKey(
        "controlplane.Engine",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        help_text="Empty: every engine.",
    )
    tag = models.CharField(max_length=64, blank=True, help_text="Engines with this strategy tag.")
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_by_label = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-ends_at"]

    def __str__(self) -> str:
        return f"silence until {self.ends_at:%Y-%m-%d %H:%M}: {self.reason[:60]}"


class Notification(models.Model):
    """One delivery of one alert event to one channel, with its attempts and result.

    ``key`` makes enqueuing idempotent: the same event for the same channel is one row however
    many times the task that enqueues it runs.
    """

    class Event(models.TextChoices):
        FIRING = "firing"
        REPEAT = "repeat"
        ESCALATION = "escalation"
        RESOLVED = "resolved"
        TEST = "test"

    class Status(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        SENT = "sent"
        FAILED = "failed"

    key = models.CharField(max_length=200, unique=True)
    alert = models.ForeignKey(
        Alert, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.CASCADE, related_name="notifications"
    )
    event = models.CharField(max_length=10, choices=Event.choices)
    subject = models.CharField(max_length=300)
    body = models.TextField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="notification_status_idx")]

    def __str__(self) -> str:
        return f"{self.event} -> {self.channel} ({self.status})"
