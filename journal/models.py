"""The journal's records; each part of it in its own section below."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

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
