"""The criteria each step can have: what is compared, how, within which bounds, and the defaults.

The defaults follow the usual go-live practice (docs/going-live.md). golive.gates measures each
criterion; this module only says what a threshold means and which values make sense.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

BACKTEST, PAPER, SHADOW, SMALL_CAPITAL, FULL = (
    "backtest",
    "paper",
    "shadow",
    "small_capital",
    "full",
)
# Each stage's next one; full production has none.
NEXT_STAGE = {BACKTEST: PAPER, PAPER: SHADOW, SHADOW: SMALL_CAPITAL, SMALL_CAPITAL: FULL}

OPS = {">": "above", ">=": "at least", "<": "below", "<=": "at most", "range": "between"}


@dataclass(frozen=True)
class Spec:
    from_stage: str
    key: str
    label: str
    op: str  # one of OPS
    unit: str  # "", "%", "pp", "days", "bps", ...
    default: Decimal
    default_high: Decimal | None = None
    minimum: Decimal = Decimal(0)
    maximum: Decimal | None = None
    integer: bool = False
    # Grows with time alone (days in the stage, trades closed): it cannot pass before its time,
    # so the capital ramp does not wait for it (golive.ramp).
    accrues: bool = False

    def passes(self, value: float, low: Decimal, high: Decimal | None) -> bool:
        lo = float(low)
        if self.op == ">":
            return value > lo
        if self.op == ">=":
            return value >= lo
        if self.op == "<":
            return value < lo
        if self.op == "<=":
            return value <= lo
        return lo <= value <= float(high if high is not None else low)

    def threshold_text(self, low: Decimal, high: Decimal | None) -> str:
        unit = f" {self.unit}" if self.unit and self.unit != "%" else self.unit
        if self.op == "range":
            return f"between {_plain(low)} and {_plain(high) if high is not None else '?'}{unit}"
        return f"{self.op} {_plain(low)}{unit}"

    def errors(self, low: Decimal | None, high: Decimal | None) -> dict[str, str]:
        """Each bad field with what is wrong, empty when the thresholds make sense."""
        errors: dict[str, str] = {}
        if low is None:
            return {"threshold": "Give a threshold."}
        if not low.is_finite():
            return {"threshold": "The threshold must be a number."}
        if low < self.minimum:
            errors["threshold"] = f"{self.label}: the threshold is at least {_plain(self.minimum)}."
        elif self.maximum is not None and low > self.maximum:
            errors["threshold"] = f"{self.label}: the threshold is at most {_plain(self.maximum)}."
        elif self.integer and low != low.to_integral_value():
            errors["threshold"] = (
                f"{self.label} counts whole {self.unit or 'units'}: a whole number."
            )
        if self.op == "range":
            if high is None:
                errors["threshold_high"] = f"{self.label} is a range: give its upper bound."
            elif not high.is_finite():
                errors["threshold_high"] = "The upper bound must be a number."
            elif high < low:
                errors["threshold_high"] = "The upper bound must not be below the threshold."
            elif self.maximum is not None and high > self.maximum:
                errors["threshold_high"] = f"The upper bound is at most {_plain(self.maximum)}."
        elif high is not None:
            errors["threshold_high"] = f"{self.label} takes one threshold: leave this blank."
        return errors


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


D = Decimal
SPECS = (
    # Backtest → paper: the engine's backtest baseline.
    Spec(BACKTEST, "baseline_sharpe", "Backtest Sharpe ratio", ">", "", D(1)),
    Spec(
        BACKTEST,
        "baseline_max_drawdown_pct",
        "Backtest max drawdown",
        "<",
        "%",
        D(15),
        maximum=D(100),
    ),
    Spec(BACKTEST, "baseline_profit_factor", "Backtest profit factor", ">", "", D("1.3")),
    Spec(BACKTEST, "baseline_history_days", "Backtest history", ">=", "days", D(365), integer=True),
    # Paper → shadow: the paper period against the baseline, and the plumbing.
    Spec(PAPER, "min_days", "Days in paper", ">=", "days", D(14), integer=True, accrues=True),
    Spec(PAPER, "min_round_trips", "Round trips", ">=", "", D(30), integer=True, accrues=True),
    Spec(
        PAPER,
        "return_vs_baseline_pct",
        "Return against the baseline (relative difference)",
        "<=",
        "%",
        D(10),
    ),
    Spec(
        PAPER,
        "win_rate_vs_baseline_pp",
        "Win rate against the baseline",
        "<=",
        "pp",
        D(5),
        maximum=D(100),
    ),
    Spec(
        PAPER, "trade_count_ratio", "Trade count / the baseline's", "range", "", D("0.8"), D("1.25")
    ),
    Spec(PAPER, "rejection_rate_pct", "Order rejection rate", "<", "%", D(1), maximum=D(100)),
    Spec(PAPER, "error_logs", "Error and critical logs", "<=", "", D(0), integer=True),
    Spec(
        PAPER,
        "disconnects_recovered",
        "Disconnects recovered with no event lost",
        ">=",
        "",
        D(1),
        integer=True,
    ),
    # Shadow → small capital.
    Spec(SHADOW, "min_days", "Days in shadow", ">=", "days", D(7), integer=True, accrues=True),
    Spec(
        SHADOW,
        "slippage_bps",
        "Slippage the market would have charged beyond the modelled",
        "<=",
        "bps",
        D(2),
    ),
    Spec(
        SHADOW,
        "unexplained_critical_alerts",
        "Critical alerts left unexplained",
        "<=",
        "",
        D(0),
        integer=True,
    ),
    # Small capital → full.
    Spec(
        SMALL_CAPITAL,
        "min_days",
        "Days with small capital",
        ">=",
        "days",
        D(28),
        integer=True,
        accrues=True,
    ),
    Spec(
        SMALL_CAPITAL,
        "sharpe_vs_paper_pct",
        "Sharpe ratio against paper (relative difference)",
        "<=",
        "%",
        D(30),
    ),
    Spec(
        SMALL_CAPITAL,
        "kill_drill_days",
        "Last kill drill passed, days ago",
        "<=",
        "days",
        D(30),
        integer=True,
    ),
    Spec(
        SMALL_CAPITAL,
        "statement_verified_days",
        "P&L verified against the broker statement, days ago",
        "<=",
        "days",
        D(7),
        integer=True,
    ),
    Spec(
        SMALL_CAPITAL,
        "post_trade_limit_kinds_missing",
        "Post-trade limit kinds not configured",
        "<=",
        "",
        D(0),
        integer=True,
    ),
)
CATALOG = {(spec.from_stage, spec.key): spec for spec in SPECS}
