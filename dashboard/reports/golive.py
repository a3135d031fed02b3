"""The baselines' figures the go-live gates compare against (golive.gates.baselines_from)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from controlplane.trading_math import max_drawdown_pct
from dashboard.models import Baseline
from dashboard.reports.baselines import expected_annual_return_pct
from golive.gates import BaselineFigures


def curve_max_drawdown_pct(curve: list[list[str]]) -> float | None:
    """The equity curve's largest fall from its running peak, in % (0 if it never fell)."""
    return max_drawdown_pct([Decimal(raw) for _, raw in curve])


def curve_history_days(curve: list[list[str]]) -> int | None:
    if len(curve) < 2:
        return None
    first = datetime.fromisoformat(curve[0][0])
    last = datetime.fromisoformat(curve[-1][0])
    return (last - first).days


def baseline_figures(engine_ids: Sequence[int]) -> dict[int, BaselineFigures]:
    """One query: each engine's baseline, as the gates read it."""
    return {
        baseline.engine_id: BaselineFigures(
            name=baseline.name,
            sharpe=baseline.sharpe,
            max_drawdown_pct=curve_max_drawdown_pct(baseline.equity_curve),
            profit_factor=baseline.profit_factor,
            history_days=curve_history_days(baseline.equity_curve),
            annual_return_pct=expected_annual_return_pct(baseline),
            win_rate_pct=baseline.win_rate_pct,
            trades_per_day=baseline.trades_per_day,
        )
        for baseline in Baseline.objects.filter(engine_id__in=list(engine_ids))
    }
