"""The promotion policy: for each step from one stage to the next, its criteria and thresholds.

One row per criterion of a step. Which criteria exist, and how each is measured, is fixed by
the code (golive.policy.CATALOG, golive.gates); risk managers switch them on or off and set their
thresholds, each change with a reason, kept in the criterion's history and the audit log.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from controlplane.models import Engine, Stage, StageChange
from golive import policy, redline_specs


class PromotionCriterion(models.Model):
    from_stage = models.CharField(
        max_length=16,
        choices=[(s.value, s.label) for s in Stage if s.value in policy.NEXT_STAGE],
        editable=False,
        help_text="The step this criterion decides: from this stage to the next.",
    )
    key = models.CharField(max_length=40, editable=False)
    enabled = models.BooleanField(default=True)
    threshold = models.DecimalField(max_digits=18, decimal_places=6)
    threshold_high = models.DecimalField(
        max_digits=18,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="The upper bound, for criteria that take a range (e.g. the trade count ratio).",
    )
    version = models.PositiveIntegerField(default=0, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        ordering = ["from_stage", "key"]
        verbose_name = "promotion criterion"
        verbose_name_plural = "promotion policy (criteria of each step)"
        constraints = [
            models.UniqueConstraint(fields=["from_stage", "key"], name="golive_criterion_unique")
        ]

    def __str__(self) -> str:
        spec = self.spec
        label = spec.label if spec is not None else self.key
        return f"{self.step_label}: {label}"

    @property
    def spec(self) -> policy.Spec | None:
        return policy.CATALOG.get((self.from_stage, self.key))

    @property
    def to_stage(self) -> str:
        return policy.NEXT_STAGE[self.from_stage]

    @property
    def step_label(self) -> str:
        return f"{Stage(self.from_stage).label} → {Stage(self.to_stage).label}"

    @property
    def threshold_text(self) -> str:
        spec = self.spec
        if spec is None:
            return str(self.threshold)
        return spec.threshold_text(self.threshold, self.threshold_high)

    def clean(self) -> None:
        spec = self.spec
        if spec is None:
            step = self.from_stage
            raise ValidationError({"key": f"No criterion {self.key!r} is measured from {step}."})
        errors = spec.errors(self.threshold, self.threshold_high)
        if errors:
            raise ValidationError(errors)


class PromotionCriterionChange(models.Model):
    """One change of a criterion: who, when, why, and each field from which value to which."""

    criterion = models.ForeignKey(
        PromotionCriterion, null=True, on_delete=models.SET_NULL, related_name="changes"
    )
    criterion_label = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    change = models.CharField(max_length=10, default="changed")  # created / changed
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    changed_by_label = models.CharField(max_length=150)
    changed_at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField()
    changes = models.JSONField(default=dict, help_text="{field: [old, new]}")

    class Meta:
        ordering = ["-changed_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.criterion_label} v{self.version} by {self.changed_by_label}"


class PromotionRequest(models.Model):
    """A step of an engine to its next stage: one person asks, a second one with the risk right
    approves (golive.services). While a gate fails the approval is refused, unless the approver
    overrides it with a written reason."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        CANCELLED = "cancelled"

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="promotion_requests")
    from_stage = models.CharField(max_length=16, choices=Stage.choices)
    to_stage = models.CharField(max_length=16, choices=Stage.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150)
    reason = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_by_label = models.CharField(max_length=150, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)
    # Approved although a gate failed or was not known: the written reason is decision_reason.
    override = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        permissions = [
            ("request_promotion", "Can request an engine's promotion to its next stage"),
            ("approve_promotion", "Can approve or reject a promotion, and override its gates"),
        ]
        constraints = [
            # At most one pending request per engine: a second ask is refused, naming the first.
            models.UniqueConstraint(
                fields=["engine"],
                condition=Q(status="pending"),
                name="promotion_request_one_pending",
            ),
            # Four eyes, enforced by the database too: the approver is never the requester.
            models.CheckConstraint(
                condition=~Q(status="approved") | ~Q(decided_by=models.F("requested_by")),
                name="promotion_request_four_eyes",
            ),
        ]

    def __str__(self) -> str:
        return f"promotion of {self.engine} to {self.to_stage} ({self.status})"

    @property
    def step_label(self) -> str:
        return f"{Stage(self.from_stage).label} → {Stage(self.to_stage).label}"


class KillDrill(models.Model):
    """One drill of an engine's kill path (golive.drills): on an engine that sends no real orders
    a real kill, released once it is done; on one that does, the SDK's check of its halt path
    (the kill_drill command), nothing traded. Its latencies are the evidence for "kill switch
    tested" (the kill_drill_days criterion, the kill_switch_drilled pre-flight check)."""

    class Kind(models.TextChoices):
        KILL_RELEASE = "kill_release", "a real kill, then released"
        HALT_PATH = "halt_path", "the halt path verified, nothing traded"

    class Status(models.TextChoices):
        RUNNING = "running"  # the kill (or kill_drill) is out, not answered yet
        RELEASING = "releasing"  # the kill is done, its release is out
        PASSED = "passed"
        FAILED = "failed"

    OPEN = (Status.RUNNING, Status.RELEASING)

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="kill_drills")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    stage = models.CharField(max_length=16, choices=Stage.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    reason = models.TextField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    # The command ids (commands are kept apart from this app's tables, in their own partitions).
    command_id = models.UUIDField(null=True, blank=True, help_text="The kill, or the kill_drill.")
    release_id = models.UUIDField(null=True, blank=True, help_text="The resume that released it.")
    issued_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)
    ack_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Issued to acknowledged.")
    done_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Issued to done.")
    release_ms = models.PositiveIntegerField(
        null=True, blank=True, help_text="The release, issued to done."
    )
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            # One drill at a time per engine: a second is refused, naming the first.
            models.UniqueConstraint(
                fields=["engine"],
                condition=Q(status__in=["running", "releasing"]),
                name="kill_drill_one_open",
            ),
        ]
        indexes = [models.Index(fields=["engine", "status", "-done_at"], name="kill_drill_last")]

    def __str__(self) -> str:
        return f"kill drill of {self.engine} ({self.status})"


class DivergenceDay(models.Model):
    """One engine's trading day against its baseline (golive.divergence): kept for ever, with what
    a person found when it diverged."""

    class RootCause(models.TextChoices):
        NONE = "", "not said"
        INFRASTRUCTURE = "infrastructure", "Infrastructure"
        MARKET = "market", "Market"
        STRATEGY = "strategy", "Strategy"

    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="divergence_days")
    day = models.DateField()
    stage = models.CharField(max_length=16, choices=Stage.choices)
    live_return_pct = models.FloatField(null=True, blank=True)
    baseline_return_pct = models.FloatField(null=True, blank=True)
    # |live - baseline| / |baseline| x 100, as golive.comparison measures the return.
    divergence_pct = models.FloatField(null=True, blank=True)
    # Every figure of the day's comparison: {key: {"live", "baseline", "difference", "text"}}.
    figures = models.JSONField(default=dict)
    computed_at = models.DateTimeField(auto_now=True)
    note = models.TextField(blank=True)
    root_cause = models.CharField(max_length=16, choices=RootCause.choices, blank=True)
    noted_by_label = models.CharField(max_length=150, blank=True)
    noted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-day", "engine"]
        constraints = [
            models.UniqueConstraint(fields=["engine", "day"], name="divergence_day_unique")
        ]

    def __str__(self) -> str:
        return f"{self.engine} {self.day}: {self.divergence_pct}"


class RedLine(models.Model):
    """A red line that stops a strategy (golive.redlines): one row per kind the code measures
    (golive.redline_specs), its numbers and its action set by risk managers, each change with a
    reason kept in its history and the audit log."""

    kind = models.CharField(
        max_length=20,
        unique=True,
        editable=False,
        choices=[(s.kind, s.label) for s in redline_specs.SPECS],
    )
    enabled = models.BooleanField(default=True)
    threshold = models.DecimalField(max_digits=18, decimal_places=6)
    window = models.PositiveIntegerField(
        null=True, blank=True, help_text="Trading days or hours, for the rules that take one."
    )
    action = models.CharField(
        max_length=10, choices=redline_specs.ACTIONS, default=redline_specs.DEMOTE
    )
    demote_to = models.CharField(
        max_length=16,
        choices=[(s.value, s.label) for s in Stage if s.value in redline_specs.DEMOTION_TARGETS],
        default=Stage.PAPER,
        help_text="Where a demotion sends the engine (an engine at or below it is only paused).",
    )
    version = models.PositiveIntegerField(default=0, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        ordering = ["pk"]
        verbose_name = "red line"

    def __str__(self) -> str:
        return f"red line #{self.pk} {self.label}"

    @property
    def spec(self) -> redline_specs.RedLineSpec | None:
        return redline_specs.CATALOG.get(self.kind)

    @property
    def label(self) -> str:
        spec = self.spec
        return spec.label if spec is not None else self.kind

    @property
    def threshold_text(self) -> str:
        spec = self.spec
        if spec is None:
            return str(self.threshold)
        return spec.threshold_text(self.threshold, self.window)

    def clean(self) -> None:
        spec = self.spec
        if spec is None:
            raise ValidationError({"kind": f"No red line {self.kind!r} is measured."})
        errors = spec.errors(self.threshold, self.window)
        if self.action not in dict(redline_specs.ACTIONS):
            errors["action"] = f"{str(self.action)[:40]!r} is no action: demote, pause or kill."
        if self.demote_to not in redline_specs.DEMOTION_TARGETS:
            allowed = ", ".join(redline_specs.DEMOTION_TARGETS)
            errors["demote_to"] = f"{str(self.demote_to)[:40]!r} is no target: one of {allowed}."
        if errors:
            raise ValidationError(errors)


class RedLineChange(models.Model):
    """One change of a red line: who, when, why, and each field from which value to which."""

    red_line = models.ForeignKey(
        RedLine, null=True, on_delete=models.SET_NULL, related_name="changes"
    )
    red_line_label = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    change = models.CharField(max_length=10, default="changed")  # created / changed
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changed_by_label = models.CharField(max_length=150)
    changed_at = models.DateTimeField(auto_now_add=True)
    reason = models.TextField()
    changes = models.JSONField(default=dict, help_text="{field: [old, new]}")

    class Meta:
        ordering = ["-changed_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.red_line_label} v{self.version} by {self.changed_by_label}"


class RedLineState(models.Model):
    """Where an engine stands against a red line in its current stage: crossed or not. The
    evaluation that turns it to crossed (a conditional update) is the only one that acts."""

    red_line = models.ForeignKey(RedLine, on_delete=models.CASCADE, related_name="states")
    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="+")
    crossed = models.BooleanField(default=False)
    # The start of the stage period it was crossed in: a later period is a new crossing.
    period_start = models.DateTimeField(null=True, blank=True)
    value = models.FloatField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["red_line", "engine"], name="red_line_state_unique")
        ]

    def __str__(self) -> str:
        return f"{self.engine} against red line #{self.red_line_id}: crossed={self.crossed}"


class RedLineEvent(models.Model):
    """A red line crossed: the figures that crossed, and what was done (kept for ever)."""

    red_line = models.ForeignKey(
        RedLine, null=True, on_delete=models.SET_NULL, related_name="events"
    )
    kind = models.CharField(max_length=20)
    label = models.CharField(max_length=200)
    engine = models.ForeignKey(Engine, on_delete=models.CASCADE, related_name="red_line_events")
    at = models.DateTimeField(auto_now_add=True)
    stage = models.CharField(max_length=16, choices=Stage.choices)
    action = models.CharField(max_length=10, choices=redline_specs.ACTIONS)
    to_stage = models.CharField(max_length=16, choices=Stage.choices, blank=True)
    value = models.FloatField()
    threshold = models.DecimalField(max_digits=18, decimal_places=6)
    threshold_text = models.CharField(max_length=200)
    window = models.PositiveIntegerField(null=True, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    # What the figure was computed from: {"window": ..., "data": ...}.
    figures = models.JSONField(default=dict)
    message = models.TextField()
    command_id = models.UUIDField(null=True, blank=True, help_text="The pause or the kill.")
    stage_change = models.ForeignKey(
        StageChange, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    alert_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["engine", "-at"], name="red_line_event_engine")]

    def __str__(self) -> str:
        return f"{self.label} crossed by {self.engine} ({self.action})"
