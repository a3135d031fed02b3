"""The red lines a strategy can cross (docs/going-live.md, "Red lines"): what each measures, what
its threshold and window mean, and which values make sense. golive.redlines measures them; risk
managers set the numbers (golive.models.RedLine), each change with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

MAX_DRAWDOWN, SHARPE, DIVERGENCE, CRITICAL_ERRORS = (
    "max_drawdown",
    "sharpe",
    "divergence",
    "critical_errors",
)
DEMOTE, PAUSE, KILL = "demote", "pause", "kill"
ACTIONS = [
    (DEMOTE, "pause, then demote to the target stage"),
    (PAUSE, "pause only"),
    (KILL, "kill (flatten, latched)"),
]
# The stages a red line watches: those a promotion reached past paper, on live data. Paper is
# where a strategy is allowed to lose: its losses are what the gates read before shadow.
WATCHED_STAGES = ("shadow", "small_capital", "full")
# Where a demotion may send an engine (full production is never a demotion's target).
DEMOTION_TARGETS = ("backtest", "paper", "shadow", "small_capital")
# Stages in order, to tell a demotion (down) from a move that would not be one.
ORDER = ("backtest", "paper", "shadow", "small_capital", "full")


@dataclass(frozen=True)
class RedLineSpec:
    kind: str
    label: str
    # How the figure crosses: "above" (value > threshold), "below" (value < threshold),
    # "at least" (value >= threshold).
    op: str
    unit: str
    default: Decimal
    minimum: Decimal
    maximum: Decimal
    integer: bool = False
    # The window's unit; "" when the rule takes no window.
    window_unit: str = ""
    window_default: int | None = None
    window_min: int = 1
    window_max: int = 0

    def crossed(self, value: float, threshold: Decimal) -> bool:
        limit = float(threshold)
        if self.op == "above":
            return value > limit
        if self.op == "below":
            return value < limit
        return value >= limit

    def threshold_text(self, threshold: Decimal, window: int | None) -> str:
        unit = self.unit if self.unit in ("", "%") else f" {self.unit}"
        text = f"{self.op} {_plain(threshold)}{unit}"
        if self.window_unit and window is not None:
            text += f" over {window} {self.window_unit}"
        return text

    def errors(self, threshold: object, window: object) -> dict[str, str]:
        """Each bad field with what is wrong; empty when the numbers make sense."""
        errors: dict[str, str] = {}
        if not isinstance(threshold, Decimal):
            errors["threshold"] = "Give the threshold as a number."
        elif not threshold.is_finite():
            errors["threshold"] = "The threshold must be a finite number."
        elif threshold < self.minimum:
            errors["threshold"] = f"{self.label}: the threshold is at least {_plain(self.minimum)}."
        elif threshold > self.maximum:
            errors["threshold"] = f"{self.label}: the threshold is at most {_plain(self.maximum)}."
        elif self.integer and threshold != threshold.to_integral_value():
            errors["threshold"] = f"{self.label} counts whole {self.unit}: a whole number."
        if not self.window_unit:
            if window is not None:
                errors["window"] = f"{self.label} takes no window: leave it blank."
        elif not isinstance(window, int) or isinstance(window, bool):
            errors["window"] = f"Give the window in {self.window_unit}, a whole number."
        elif not self.window_min <= window <= self.window_max:
            errors["window"] = (
                f"{self.label}: the window is {self.window_min} to {self.window_max} "
                f"{self.window_unit}."
            )
        return errors


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


D = Decimal
SPECS = (
    RedLineSpec(
        MAX_DRAWDOWN,
        "Maximum drawdown in the stage",
        "above",
        "%",
        D(15),
        minimum=D("0.1"),
        maximum=D(100),
    ),
    RedLineSpec(
        SHARPE,
        "Live Sharpe ratio over a rolling window",
        "below",
        "",
        D(0),
        minimum=D(-10),
        maximum=D(10),
        window_unit="trading days",
        window_default=20,
        window_min=3,
        window_max=260,
    ),
    RedLineSpec(
        DIVERGENCE,
        "Trading days in a row beyond the divergence threshold",
        "at least",
        "days",
        D(3),
        minimum=D(1),
        maximum=D(60),
        integer=True,
    ),
    RedLineSpec(
        CRITICAL_ERRORS,
        "Critical errors the engine logged",
        "at least",
        "errors",
        D(3),
        minimum=D(1),
        maximum=D(10_000),
        integer=True,
        window_unit="hours",
        window_default=24,
        window_min=1,
        window_max=720,
    ),
)
CATALOG = {spec.kind: spec for spec in SPECS}
