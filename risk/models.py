"""Risk limits: edited by risk managers, versioned, every change kept with its reason.

Pre-trade limits are pushed to the engines and enforced by engine_sdk before each order;
post-trade limits are evaluated by the server as each batch is stored (risk.evaluation).
docs/risk.md defines each kind precisely.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from controlplane.models import Engine


class LimitKind(models.TextChoices):
    # Pre-trade: enforced by the engine before each order.
    MAX_ORDER_QTY = "max_order_qty", "Max order quantity"
    MAX_ORDER_NOTIONAL = "max_order_notional", "Max order notional"
    PRICE_COLLAR_PCT = "price_collar_pct", "Price collar (% from last price)"
    MAX_ORDER_RATE = "max_order_rate", "Max orders per second"
    DUPLICATE_ORDER = "duplicate_order", "Duplicate order window (s)"
    # Post-trade: evaluated by the server as each batch is stored.
    MAX_POSITION_PCT = "max_position_pct", "Max position (% of equity)"
    MAX_SECTOR_PCT = "max_sector_pct", "Max sector exposure (% of equity)"
    MAX_GROSS_EXPOSURE_PCT = "max_gross_exposure_pct", "Max gross exposure (% of equity)"
    MAX_DAILY_LOSS_PCT = "max_daily_loss_pct", "Max daily loss (% of session start equity)"
    MAX_DAILY_LOSS = "max_daily_loss", "Max daily loss (absolute)"
    MAX_DRAWDOWN_PCT = "max_drawdown_pct", "Max drawdown from high-water mark (%)"
    MAX_TRADES_PER_DAY = "max_trades_per_day", "Max trades per day"
    MAX_REJECTION_RATE_PCT = "max_rejection_rate_pct", "Max rejection rate (%)"
    CAPITAL_CEILING_PCT = (
        "capital_ceiling_pct",
        "Gross exposure (% of the engine's capital ceiling)",
    )
    # Portfolio: measured across engines by a periodic task (risk.portfolio), not per batch.
    CORRELATION = "correlation", "Correlation of two engines' daily returns"
    PORTFOLIO_DRAWDOWN_PCT = (
        "portfolio_drawdown_pct",
        "Portfolio drawdown from its high-water mark (%)",
    )
    PORTFOLIO_DAILY_LOSS_PCT = (
        "portfolio_daily_loss_pct",
        "Portfolio daily loss (% of session start equity)",
    )
    VAR_95_PCT = "var_95_pct", "Historical value at risk, 95 % (% of equity)"
    VAR_99_PCT = "var_99_pct", "Historical value at risk, 99 % (% of equity)"


PRE_TRADE = frozenset(
    {
        LimitKind.MAX_ORDER_QTY,
        LimitKind.MAX_ORDER_NOTIONAL,
        LimitKind.PRICE_COLLAR_PCT,
        LimitKind.MAX_ORDER_RATE,
        LimitKind.DUPLICATE_ORDER,
    }
)
# Measured across engines (a fleet, a tag, a pair) by the periodic task of risk.portfolio.
PORTFOLIO = frozenset(
    {
        LimitKind.CORRELATION,
        LimitKind.PORTFOLIO_DRAWDOWN_PCT,
        LimitKind.PORTFOLIO_DAILY_LOSS_PCT,
        LimitKind.VAR_95_PCT,
        LimitKind.VAR_99_PCT,
    }
)
# Measured from daily returns over a window of days (RiskLimit.window_days).
WINDOWED = frozenset({LimitKind.CORRELATION, LimitKind.VAR_95_PCT, LimitKind.VAR_99_PCT})
DEFAULT_WINDOW_DAYS = {
    LimitKind.CORRELATION: 60,
    LimitKind.VAR_95_PCT: 365,
    LimitKind.VAR_99_PCT: 365,
}
MIN_WINDOW_DAYS, MAX_WINDOW_DAYS = 10, 1000
# The scopes each portfolio kind takes: a drawdown or a daily loss of one engine is the
# per-engine kind's business (max_drawdown_pct, max_daily_loss_pct).
PORTFOLIO_SCOPES = {
    LimitKind.CORRELATION: ("global", "tag", "engine"),
    LimitKind.PORTFOLIO_DRAWDOWN_PCT: ("global", "tag"),
    LimitKind.PORTFOLIO_DAILY_LOSS_PCT: ("global", "tag"),
    LimitKind.VAR_95_PCT: ("global", "tag", "engine"),
    LimitKind.VAR_99_PCT: ("global", "tag", "engine"),
}
POST_TRADE = frozenset(set(LimitKind) - PRE_TRADE - PORTFOLIO)
# Thresholds that are a share of something: at most 100 %.
PERCENT = frozenset(
    {
        LimitKind.PRICE_COLLAR_PCT,
        LimitKind.MAX_POSITION_PCT,
        LimitKind.MAX_SECTOR_PCT,
        LimitKind.MAX_DAILY_LOSS_PCT,
        LimitKind.MAX_DRAWDOWN_PCT,
        LimitKind.MAX_REJECTION_RATE_PCT,
        LimitKind.CAPITAL_CEILING_PCT,
        LimitKind.PORTFOLIO_DRAWDOWN_PCT,
        LimitKind.PORTFOLIO_DAILY_LOSS_PCT,
        LimitKind.VAR_95_PCT,
        LimitKind.VAR_99_PCT,
    }
)
# Gross exposure may be levered: up to 1,000 % of equity.
MAX_GROSS_PCT = Decimal(1000)


class Scope(models.TextChoices):
    GLOBAL = "global", "Every engine"
    ENGINE = "engine", "One engine"
    TAG = "tag", "A strategy tag"
    SECTOR = "sector", "A sector"
    SYMBOL = "symbol", "A symbol"


class Action(models.TextChoices):
    ALERT = "alert", "Alert only"
    PAUSE = "pause", "Alert and pause"
    REDUCE = "reduce", "Alert and reduce positions"
    KILL = "kill", "Alert and kill (cancel, flatten, halt)"


def default_warning_levels() -> list[int]:
    return [50, 75, 90]


class RiskLimit(models.Model):
    kind = models.CharField(max_length=32, choices=LimitKind.choices)
    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.GLOBAL)
    scope_value = models.CharField(
        max_length=64, blank=True, help_text="Engine name, strategy tag, sector or symbol."
    )
    threshold = models.DecimalField(max_digits=24, decimal_places=8)
    warning_levels = ArrayField(
        models.PositiveSmallIntegerField(),
        default=default_warning_levels,
        blank=True,
        help_text="Warn at these % of the threshold, e.g. 50,75,90.",
    )
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ALERT)
    reduce_to_pct = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
        help_text="For 'reduce': the % of each position to keep.",
    )
    window_days = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Correlation and value at risk: the calendar days of daily returns measured "
            "(default 60 for correlation, 365 for value at risk)."
        ),
    )
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    version = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        ordering = ["kind", "scope", "scope_value"]
        indexes = [models.Index(fields=["enabled", "kind"])]

    def __str__(self) -> str:
        where = "all engines" if self.scope == Scope.GLOBAL else f"{self.scope} {self.scope_value}"
        return f"#{self.pk} {self.kind} {self.threshold} ({where})"

    @property
    def pre_trade(self) -> bool:
        return self.kind in PRE_TRADE

    def clean(self) -> None:
        errors: dict[str, str] = {}
        threshold = self.threshold
        if threshold is not None:
            if threshold <= 0:
                errors["threshold"] = "The threshold must be above zero."
            elif self.kind in PERCENT and threshold > 100:
                errors["threshold"] = f"{self.get_kind_display()} is a percentage: at most 100."
            elif self.kind == LimitKind.MAX_GROSS_EXPOSURE_PCT and threshold > MAX_GROSS_PCT:
                errors["threshold"] = "Gross exposure is at most 1,000 % of equity."
            elif (
                self.kind in (LimitKind.MAX_ORDER_RATE, LimitKind.MAX_TRADES_PER_DAY)
                and threshold != threshold.to_integral_value()
            ):
                errors["threshold"] = "This limit counts orders: use a whole number."
        levels = list(self.warning_levels or [])
        if any(not 0 < level < 100 for level in levels):
            errors["warning_levels"] = (
                "Warning levels are % of the threshold, each above 0 and below 100 "
                "(a warning at or above the threshold would never warn before the breach)."
            )
        elif levels != sorted(set(levels)):
            errors["warning_levels"] = "List the warning levels once each, lowest first."
        if self.scope == Scope.GLOBAL:
            if self.scope_value:
                errors["scope_value"] = "A global limit takes no scope value."
        elif not self.scope_value.strip():
            errors["scope_value"] = f"Name the {self.scope} this limit applies to."
        elif (
            self.scope == Scope.ENGINE and not Engine.objects.filter(name=self.scope_value).exists()
        ):
            errors["scope_value"] = f"No engine is named {self.scope_value!r}."
        if self.kind in PORTFOLIO and self.scope not in PORTFOLIO_SCOPES[self.kind]:  # type: ignore[index]
            scopes = ", ".join(PORTFOLIO_SCOPES[self.kind])  # type: ignore[index]
            errors["scope"] = f"{self.get_kind_display()} takes the scope {scopes}."
        if self.kind == LimitKind.CORRELATION and threshold is not None and threshold > 1:
            errors["threshold"] = "A correlation is at most 1: use a threshold from 0 to 1."
        if self.kind in WINDOWED:
            if self.window_days is None:
                self.window_days = DEFAULT_WINDOW_DAYS[self.kind]  # type: ignore[index]
            elif not MIN_WINDOW_DAYS <= self.window_days <= MAX_WINDOW_DAYS:
                errors["window_days"] = (
                    f"The window is {MIN_WINDOW_DAYS} to {MAX_WINDOW_DAYS} days of daily returns."
                )
        elif self.window_days is not None:
            errors["window_days"] = "Only correlation and value-at-risk limits take a window."
        if self.scope == Scope.SECTOR and self.kind not in PRE_TRADE | {LimitKind.MAX_SECTOR_PCT}:
            errors["scope"] = "A sector scope applies to pre-trade limits and max sector %."
        if self.scope == Scope.SYMBOL and self.kind not in PRE_TRADE | {LimitKind.MAX_POSITION_PCT}:
            errors["scope"] = "A symbol scope applies to pre-trade limits and max position %."
        if self.action == Action.REDUCE:
            if self.reduce_to_pct is None:
                errors["reduce_to_pct"] = "Say how much of each position to keep (0 to 99)."
            elif not 0 <= self.reduce_to_pct < 100:
                errors["reduce_to_pct"] = "Keep between 0 and 99 % of each position."
        elif self.reduce_to_pct is not None:
            errors["reduce_to_pct"] = "Only a 'reduce' action takes a % to keep."
        if self.kind in PRE_TRADE and self.action != Action.ALERT:
            errors["action"] = (
                "A pre-trade limit rejects the order in the engine; its action is 'alert only'."
            )
        if errors:
            raise ValidationError(errors)

    def wire(self) -> dict[str, object]:
        """The limit as engines receive it (docs/protocol.md, pre-trade limits)."""
        scope = {Scope.SYMBOL: "symbol", Scope.SECTOR: "sector"}.get(self.scope, "all")  # type: ignore[call-overload]
        return {
            "id": self.pk,
            "kind": self.kind,
            "threshold": _plain(self.threshold),
            "scope": scope,
            "scope_value": self.scope_value if scope != "all" else None,
        }


def _plain(value: Decimal) -> str:
    """5000, 0.25: no trailing zeros and no exponent, as engines and people read them."""
    return format(value.normalize(), "f")


class RiskLimitChange(models.Model):
    """One change of a limit: who, when, why, and each field from which value to which.

    Its id is also the limits revision engines are told (it only grows, deletions included).
    """

    limit = models.ForeignKey(
        RiskLimit, null=True, on_delete=models.SET_NULL, related_name="changes"
    )
    limit_label = models.CharField(max_length=200)
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
        return f"{self.limit_label} v{self.version} by {self.changed_by_label}"


class Level(models.TextChoices):
    OK = "ok"
    WARNING = "warning"
    BREACHED = "breached"


class LimitState(models.Model):
    """A post-trade limit's current utilisation for one engine, and how far it has gone."""

    limit = models.ForeignKey(RiskLimit, on_delete=models.CASCADE, related_name="states")
    engine = models.ForeignKey(
        "controlplane.Engine", on_delete=models.CASCADE, related_name="limit_states"
    )
    value = models.DecimalField(max_digits=24, decimal_places=8, default=Decimal(0))
    utilisation = models.FloatField(default=0.0, help_text="% of the threshold")
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.OK)
    warned_at_level = models.PositiveSmallIntegerField(default=0)
    breached_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["limit", "engine"], name="limit_state_unique")
        ]

    def __str__(self) -> str:
        return f"{self.limit_id}/{self.engine_id}: {self.utilisation:.0f}% {self.level}"


class PortfolioLimitState(models.Model):
    """A portfolio limit's utilisation for one subject (the fleet, a tag, an engine, a pair of
    engines), and how far it has gone: LimitState's levels, for what spans engines."""

    limit = models.ForeignKey(RiskLimit, on_delete=models.CASCADE, related_name="portfolio_states")
    subject = models.CharField(max_length=200)  # "fleet", "tag momentum", "alpha", "alpha & beta"
    engine_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    value = models.DecimalField(max_digits=24, decimal_places=8, default=Decimal(0))
    utilisation = models.FloatField(default=0.0, help_text="% of the threshold")
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.OK)
    warned_at_level = models.PositiveSmallIntegerField(default=0)
    breached_at = models.DateTimeField(null=True, blank=True)
    # Portfolio drawdown: the combined equity's high-water mark, folded up to peak_at over the
    # snapshots of engine_ids (docs/risk.md).
    peak = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    peak_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["limit", "subject"]
        constraints = [
            models.UniqueConstraint(fields=["limit", "subject"], name="portfolio_state_unique")
        ]

    def __str__(self) -> str:
        return f"{self.limit_id}/{self.subject}: {self.utilisation:.0f}% {self.level}"


class RiskEvent(models.Model):
    """A warning level crossed, a breach and its action, or a breach that cleared."""

    class Kind(models.TextChoices):
        WARNING = "warning"
        BREACH = "breach"
        CLEARED = "cleared"

    limit = models.ForeignKey(RiskLimit, null=True, on_delete=models.SET_NULL, related_name="+")
    # None for a portfolio limit's subject of several engines (a fleet, a tag, a pair).
    engine = models.ForeignKey(
        "controlplane.Engine",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="risk_events",
    )
    subject = models.CharField(
        max_length=200, blank=True, help_text="A portfolio limit's subject: fleet, tag, pair."
    )
    portfolio_state = models.ForeignKey(
        "PortfolioLimitState",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    kind = models.CharField(max_length=8, choices=Kind.choices)
    level = models.PositiveSmallIntegerField(help_text="% of the threshold crossed")
    value = models.DecimalField(max_digits=24, decimal_places=8)
    threshold = models.DecimalField(max_digits=24, decimal_places=8)
    utilisation = models.FloatField()
    message = models.TextField()
    command = models.ForeignKey(
        "controlplane.Command", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return self.message


class AllocationScope(models.TextChoices):
    ENGINE = "engine", "Engine"
    TAG = "tag", "Strategy tag"


class Allocation(models.Model):
    """A target share of the desk's capital for one engine or one strategy tag (docs/risk.md,
    "Allocation"). The fleet page sets it against the actual share: the engine's (or the tag's
    engines') equity over the desk's capital. Enabled engine targets add up to at most 100 %;
    tags may overlap, so theirs are not summed."""

    scope = models.CharField(max_length=10, choices=AllocationScope.choices)
    scope_value = models.CharField(max_length=64, help_text="The engine's name, or the tag.")
    target_pct = models.DecimalField(
        max_digits=5,
        decimal_places=2,
        validators=[MinValueValidator(Decimal("0.01"))],
        help_text="Target share of the desk's capital, in % (more than 0, at most 100).",
    )
    enabled = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=0, editable=False)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "scope_value"]
        constraints = [
            models.UniqueConstraint(fields=["scope", "scope_value"], name="allocation_unique"),
            models.CheckConstraint(
                condition=models.Q(target_pct__gt=0, target_pct__lte=100),
                name="allocation_target_pct_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_scope_display()} {self.scope_value}: {self.target_pct} %"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.target_pct is not None and not Decimal(0) < self.target_pct <= 100:
            errors["target_pct"] = "A target share is more than 0 and at most 100 %."
        value = (self.scope_value or "").strip()
        if not value or "\x00" in value:
            errors["scope_value"] = "Name the engine or the tag (no NUL characters)."
        elif (
            self.scope == AllocationScope.ENGINE and not Engine.objects.filter(name=value).exists()
        ):
            errors["scope_value"] = f"No engine is named {value!r}."
        if errors:
            raise ValidationError(errors)


class DeskCapital(models.Model):
    """The desk's capital, one row (pk 1): what allocation shares are shares of. Without it,
    shares are of the fleet's equity (the active engines' equity summed)."""

    amount = models.DecimalField(
        max_digits=24, decimal_places=2, validators=[MinValueValidator(Decimal("0.01"))]
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        editable=False,
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "desk capital"
        constraints = [
            models.CheckConstraint(condition=models.Q(pk=1), name="desk_capital_single_row"),
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="desk_capital_gt_0"),
        ]

    def __str__(self) -> str:
        return f"Desk capital {self.amount:,.2f}"


class AllocationChange(models.Model):
    """One change of an allocation target or of the desk's capital: who, when, why, and each
    field from which value to which (as RiskLimitChange is for limits)."""

    allocation = models.ForeignKey(
        Allocation, null=True, blank=True, on_delete=models.SET_NULL, related_name="changes"
    )
    label = models.CharField(max_length=200)
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
        return f"{self.label} by {self.changed_by_label}"
