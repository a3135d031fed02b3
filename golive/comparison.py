"""Live against its baseline: for an engine and a period, the figures the going-live guides
compare a strategy's live record with its backtest by, and the usual causes they point at
(docs/going-live.md, "Live against the baseline").

Every figure is measured from what is stored (account snapshots, fills, orders, metrics) as the
gates measure it (golive.gates.measure), beside the engine's backtest baseline scaled to the same
weekdays. A figure that cannot be measured says so; it is never made up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection

from controlplane.models import Engine, MetricSample, Order
from controlplane.trading_math import TRADING_DAYS_PER_YEAR, max_drawdown_pct
from golive import gates

# The usual causes of a divergence, and the figures that point at each.
CAUSES: tuple[tuple[str, str, str], ...] = (
    (
        "fewer_trades",
        "Fewer trades than the backtest",
        "stricter fills in reality: limit orders the backtest filled that the market did not, "
        "queue position, minimum sizes",
    ),
    (
        "lower_returns",
        "Lower returns than the backtest",
        "slippage the backtest did not charge, or opportunities missed (latency, rejections)",
    ),
    (
        "higher_variance",
        "Higher variance than the backtest",
        "a change of market regime: the strategy meets conditions its backtest period lacked",
    ),
    (
        "different_signals",
        "Different signals from the backtest",
        "the data feed: live prices, bars or timestamps differ from the backtest's data",
    ),
)


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    live: float | None
    baseline: float | None
    # live - baseline (a ratio for the trade count, a relative % for the return).
    difference: float | None
    text: str
    # The cause (CAUSES) this figure points at now, if it does.
    points_at: str | None = None

    @property
    def cause_label(self) -> str:
        return next((label for key, label, _ in CAUSES if key == self.points_at), "")


@dataclass(frozen=True)
class Cause:
    key: str
    label: str
    explanation: str
    figures: list[str]


@dataclass
class Comparison:
    engine: Engine
    start: datetime
    end: datetime
    baseline_name: str | None
    figures: list[Figure] = field(default_factory=list)
    # |return difference| above DIVERGENCE_SIGNIFICANT_PCT; None when it cannot be measured.
    significant: bool | None = None
    threshold_pct: float = 20.0

    @property
    def causes(self) -> list[Cause]:
        """Each usual cause with the figures that point at it now (those pointed at first)."""
        pointing: dict[str, list[str]] = {key: [] for key, _, _ in CAUSES}
        for figure in self.figures:
            if figure.points_at:
                pointing[figure.points_at].append(figure.label)
        causes = [Cause(key, label, why, pointing[key]) for key, label, why in CAUSES]
        return sorted(causes, key=lambda cause: not cause.figures)

    def figure(self, key: str) -> Figure:
        return next(f for f in self.figures if f.key == key)


def _orders_and_latency(
    engine_id: int, start: datetime, end: datetime
) -> tuple[int, int, float | None]:
    """Orders placed in the period that got a fill, orders placed (rejected ones included), and
    the mean of the engine's latency_ms metric."""
    sql = f"""
        SELECT
            (SELECT count(*) FILTER (WHERE filled_quantity > 0) FROM {Order._meta.db_table}
             WHERE engine_id = %(e)s AND created_at >= %(start)s AND created_at < %(end)s),
            (SELECT count(*) FROM {Order._meta.db_table}
             WHERE engine_id = %(e)s AND created_at >= %(start)s AND created_at < %(end)s),
            (SELECT avg(value) FROM {MetricSample._meta.db_table}
             WHERE engine_id = %(e)s AND name = 'latency_ms' AND ts >= %(start)s
               AND ts < %(end)s)
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"e": engine_id, "start": start, "end": end})
        filled, placed, latency = cursor.fetchone()
    return filled or 0, placed or 0, float(latency) if latency is not None else None


def compare(engine: Engine, start: datetime, end: datetime) -> Comparison:
    """``engine``'s record over [start, end) against its backtest baseline."""
    threshold = float(getattr(settings, "DIVERGENCE_SIGNIFICANT_PCT", 20.0))
    m = gates.measure(engine.pk, start, end)
    base = gates.baselines_of([engine.pk]).get(engine.pk)
    weekdays = gates.weekdays_between(start, end)
    result = Comparison(engine, start, end, base.name if base else None, threshold_pct=threshold)
    figures = result.figures
    none = "no baseline figure"

    # Return: the live return against the baseline's annual return over the same weekdays.
    live_return = m.return_pct
    expected = (
        base.annual_return_pct * weekdays / TRADING_DAYS_PER_YEAR
        if base is not None and base.annual_return_pct is not None
        else None
    )
    difference = None
    if live_return is not None and expected:
        difference = abs(live_return - expected) / abs(expected) * 100
        result.significant = difference > threshold
    lower = difference is not None and live_return < expected and result.significant  # type: ignore[operator]
    figures.append(
        Figure(
            "return_pct",
            "Return",
            "%",
            live_return,
            expected,
            difference,
            "no account snapshot in the period"
            if live_return is None
            else f"live {live_return:+.2f} %, baseline {expected:+.2f} % over {weekdays} weekdays: "
            f"{difference:.1f} % apart"
            if expected and difference is not None
            else f"live {live_return:+.2f} %; {none}",
            "lower_returns" if lower else None,
        )
    )

    # Trades: fills against the baseline's trades per day over the same weekdays.
    expected_trades = (
        base.trades_per_day * weekdays if base is not None and base.trades_per_day else None
    )
    ratio = m.fills / expected_trades if expected_trades else None
    figures.append(
        Figure(
            "trade_count_ratio",
            "Trade count",
            "ratio",
            float(m.fills),
            expected_trades,
            ratio,
            f"{m.fills} fills, {expected_trades:.0f} expected: ratio {ratio:.2f}"
            if ratio is not None
            else f"{m.fills} fills; {none}",
            "fewer_trades" if ratio is not None and ratio < 0.8 else None,
        )
    )

    # Win rate: round trips with a profit, in points against the baseline's.
    trips = m.trips
    live_win = sum(1 for pnl in trips if pnl > 0) / len(trips) * 100 if trips else None
    base_win = base.win_rate_pct if base is not None else None
    win_diff = live_win - base_win if live_win is not None and base_win is not None else None
    figures.append(
        Figure(
            "win_rate_pp",
            "Win rate",
            "pp",
            live_win,
            base_win,
            win_diff,
            "no round trip closed in the period"
            if live_win is None
            else f"live {live_win:.1f} %, baseline {base_win:.1f} %: {win_diff:+.1f} points"
            if win_diff is not None
            else f"live {live_win:.1f} %; {none}",
            "different_signals" if win_diff is not None and abs(win_diff) > 5 else None,
        )
    )

    # Slippage against the decision price: a simulating engine's fills say what the market would
    # have charged (fill.market_price), the live figure; its simulation's own is the model.
    excess = m.excess_bps
    simulated = m.market_bps is not None
    live_slip = m.market_bps if simulated else m.slippage_bps
    if live_slip is None:
        slip_text = "no fill with an expected price"
    elif simulated:
        slip_text = (
            f"the market {m.market_bps:.2f} bps, the simulation {m.modelled_bps:.2f} bps over "
            f"{m.marked_fills} simulated fills: {excess:+.2f} bps beyond the model"
        )
    else:
        slip_text = f"{live_slip:.2f} bps over {m.slipped_fills} fills"
    figures.append(
        Figure(
            "slippage_bps",
            "Slippage against the expected price",
            "bps",
            live_slip,
            m.modelled_bps if simulated else None,
            excess if simulated else None,
            slip_text,
            "lower_returns" if excess is not None and excess > 0 else None,
        )
    )

    # Sharpe and drawdown: the shape of the equity curve against the baseline's.
    sharpe = m.sharpe
    base_sharpe = base.sharpe if base is not None else None
    figures.append(
        Figure(
            "sharpe",
            "Sharpe ratio",
            "",
            sharpe,
            base_sharpe,
            sharpe - base_sharpe if sharpe is not None and base_sharpe is not None else None,
            "fewer than 2 daily closes"
            if sharpe is None
            else f"live {sharpe:.2f}"
            + (f", baseline {base_sharpe:.2f}" if base_sharpe is not None else f"; {none}"),
            "higher_variance"
            if sharpe is not None and base_sharpe is not None and sharpe < base_sharpe / 2
            else None,
        )
    )
    opening = [m.opening_equity] if m.opening_equity else []
    drawdown = max_drawdown_pct(opening + [close for _, close in m.closes])
    base_dd = base.max_drawdown_pct if base is not None else None
    figures.append(
        Figure(
            "max_drawdown_pct",
            "Max drawdown",
            "%",
            drawdown,
            base_dd,
            drawdown - base_dd if drawdown is not None and base_dd is not None else None,
            "fewer than 2 equity points"
            if drawdown is None
            else f"live {drawdown:.2f} %"
            + (f", baseline {base_dd:.2f} %" if base_dd is not None else f"; {none}"),
            "higher_variance"
            if drawdown is not None and base_dd is not None and drawdown > base_dd * 1.5
            else None,
        )
    )

    # Orders: how many got a fill, how many were refused; the engine's latency.
    filled, placed, latency = _orders_and_latency(engine.pk, start, end)
    fill_rate = filled / placed * 100 if placed else None
    figures.append(
        Figure(
            "fill_rate_pct",
            "Fill rate",
            "%",
            fill_rate,
            None,
            None,
            f"{filled} of {placed} orders filled (at least in part)" if placed else "no order",
            "fewer_trades" if fill_rate is not None and fill_rate < 80 else None,
        )
    )
    rejection = m.rejected / m.orders * 100 if m.orders else None
    figures.append(
        Figure(
            "rejection_rate_pct",
            "Order rejection rate",
            "%",
            rejection,
            None,
            None,
            f"{m.rejected} of {m.orders} orders rejected" if m.orders else "no order",
            "lower_returns" if rejection is not None and rejection >= 1 else None,
        )
    )
    figures.append(
        Figure(
            "latency_ms",
            "Latency (mean of latency_ms)",
            "ms",
            latency,
            None,
            None,
            f"{latency:.1f} ms" if latency is not None else "no latency_ms metric",
        )
    )
    return result
