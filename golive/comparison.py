"""Live against its baseline: for an engine and a period, the figures the going-live guides
compare a strategy's live record with its baseline by, and the usual causes they point at
(docs/going-live.md, "Live against the baseline").

The baseline is either the engine's backtest (scaled to the same weekdays) or an earlier stage's
record over the same market days: a reference engine, named by the caller, that runs the same
strategy at an earlier stage (a shadow engine against its paper companion, small capital against
the shadow engine), measured over the same [start, end) the same way.

Every figure is measured from what is stored (account snapshots, fills, orders, metrics) as the
gates measure it (golive.gates.measure_many), in a fixed number of queries for any number of
engines. A figure that cannot be measured says so; it is never made up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import connection

from controlplane.models import Engine, MetricSample
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
    # The backtest baseline's name, or the reference engine's name.
    baseline_name: str | None
    figures: list[Figure] = field(default_factory=list)
    # |return difference| above DIVERGENCE_SIGNIFICANT_PCT; None when it cannot be measured.
    significant: bool | None = None
    threshold_pct: float = 20.0
    # The reference engine compared against (an earlier stage's record); None: the backtest.
    against: Engine | None = None

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

    @property
    def by_key(self) -> dict[str, Figure]:
        """The figures by key (for templates: ``c.by_key.return_pct.difference``)."""
        return {f.key: f for f in self.figures}


@dataclass(frozen=True)
class Request:
    """One comparison to make: ``engine`` over [start, end), against ``against`` (a reference
    engine's record over the same period) or, when None, the engine's backtest baseline."""

    engine: Engine
    start: datetime
    end: datetime
    against: Engine | None = None


def _latencies(periods: Sequence[tuple[int, datetime, datetime]]) -> list[float | None]:
    """The mean of each engine's latency_ms metric over its period: one query for all."""
    if not periods:
        return []
    sql = f"""
        SELECT w.n, (SELECT avg(m.value) FROM {MetricSample._meta.db_table} m
                     WHERE m.engine_id = w.engine_id AND m.name = 'latency_ms'
                       AND m.ts >= w.start AND m.ts < w.stop)
        FROM unnest(%(ids)s::bigint[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
            WITH ORDINALITY AS w(engine_id, start, stop, n)
    """
    params = {
        "ids": [p[0] for p in periods],
        "starts": [p[1] for p in periods],
        "ends": [p[2] for p in periods],
    }
    result: list[float | None] = [None] * len(periods)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for n, value in cursor.fetchall():
            result[n - 1] = float(value) if value is not None else None
    return result


@dataclass(frozen=True)
class _Side:
    """One engine's measured figures over a period (the live side, or a reference engine)."""

    m: gates._Measures
    latency: float | None

    @property
    def win_rate(self) -> float | None:
        return self.m.win_rate

    @property
    def drawdown(self) -> float | None:
        opening = [self.m.opening_equity] if self.m.opening_equity else []
        return max_drawdown_pct(opening + [close for _, close in self.m.closes])

    @property
    def fill_rate(self) -> float | None:
        return self.m.filled_orders / self.m.orders * 100 if self.m.orders else None

    @property
    def rejection(self) -> float | None:
        return self.m.rejected / self.m.orders * 100 if self.m.orders else None

    @property
    def slippage(self) -> float | None:
        """Against the decision price: what the market would have charged where the fills say
        (a simulating engine's fill.market_price), else the fills' own."""
        return self.m.market_bps if self.m.market_bps is not None else self.m.slippage_bps


def compare(
    engine: Engine, start: datetime, end: datetime, against: Engine | None = None
) -> Comparison:
    """``engine``'s record over [start, end) against its backtest baseline, or against the
    record of ``against`` (an earlier stage's engine of the same strategy) over the same days."""
    return compare_many([Request(engine, start, end, against)])[0]


def compare_many(requests: Sequence[Request]) -> list[Comparison]:
    """Each request's comparison, in the order given: the live and reference records of all of
    them read together (golive.gates.measure_many, and one query for the latencies), and the
    backtest baselines in one query."""
    threshold = float(getattr(settings, "DIVERGENCE_SIGNIFICANT_PCT", 20.0))
    periods: list[tuple[int, datetime, datetime]] = []
    index: dict[tuple[int, datetime, datetime], int] = {}

    def slot(engine: Engine, start: datetime, end: datetime) -> int:
        key = (engine.pk, start, end)
        if key not in index:
            index[key] = len(periods)
            periods.append(key)
        return index[key]

    pairs = [
        (
            slot(r.engine, r.start, r.end),
            slot(r.against, r.start, r.end) if r.against is not None else None,
        )
        for r in requests
    ]
    measures = gates.measure_many(periods)
    latencies = _latencies(periods)
    sides = [_Side(m, lat) for m, lat in zip(measures, latencies, strict=True)]
    backtested = [r.engine.pk for r in requests if r.against is None]
    bases = gates.baselines_of(backtested) if backtested else {}
    results = []
    for request, (live, ref) in zip(requests, pairs, strict=True):
        result = Comparison(
            request.engine,
            request.start,
            request.end,
            None,
            threshold_pct=threshold,
            against=request.against,
        )
        if ref is not None:
            assert request.against is not None
            result.baseline_name = request.against.name
            _against_engine(result, sides[live], sides[ref], request.against.name)
        else:
            base = bases.get(request.engine.pk)
            result.baseline_name = base.name if base else None
            _against_backtest(result, sides[live], base)
        results.append(result)
    return results


def _return_figure(
    result: Comparison, live: float | None, expected: float | None, over: str, who: str
) -> None:
    """|live - expected| / |expected| x 100; significant beyond the threshold."""
    difference = None
    if live is not None and expected:
        difference = abs(live - expected) / abs(expected) * 100
        result.significant = difference > result.threshold_pct
    lower = bool(result.significant) and live is not None and expected is not None
    lower = lower and live < expected  # type: ignore[operator]
    if live is None:
        text = "no account snapshot in the period"
    elif expected and difference is not None:
        text = f"live {live:+.2f} %, {who} {expected:+.2f} %{over}: {difference:.1f} % apart"
    elif expected is not None:
        text = f"live {live:+.2f} %; the {who} made no return to compare with"
    else:
        text = f"live {live:+.2f} %; no {who} figure"
    result.figures.append(
        Figure(
            "return_pct",
            "Return",
            "%",
            live,
            expected,
            difference,
            text,
            "lower_returns" if lower else None,
        )
    )


def _shape_figures(
    result: Comparison,
    live: _Side,
    sharpe_base: float | None,
    dd_base: float | None,
    who: str,
) -> None:
    """Sharpe and drawdown: the shape of the equity curve against the baseline's."""
    none = f"no {who} figure"
    sharpe = live.m.sharpe
    result.figures.append(
        Figure(
            "sharpe",
            "Sharpe ratio",
            "",
            sharpe,
            sharpe_base,
            sharpe - sharpe_base if sharpe is not None and sharpe_base is not None else None,
            "fewer than 2 daily closes"
            if sharpe is None
            else f"live {sharpe:.2f}"
            + (f", {who} {sharpe_base:.2f}" if sharpe_base is not None else f"; {none}"),
            "higher_variance"
            if sharpe is not None and sharpe_base is not None and sharpe < sharpe_base / 2
            else None,
        )
    )
    drawdown = live.drawdown
    result.figures.append(
        Figure(
            "max_drawdown_pct",
            "Max drawdown",
            "%",
            drawdown,
            dd_base,
            drawdown - dd_base if drawdown is not None and dd_base is not None else None,
            "fewer than 2 equity points"
            if drawdown is None
            else f"live {drawdown:.2f} %"
            + (f", {who} {dd_base:.2f} %" if dd_base is not None else f"; {none}"),
            "higher_variance"
            if drawdown is not None and dd_base is not None and drawdown > dd_base * 1.5
            else None,
        )
    )


def _order_figures(result: Comparison, live: _Side, ref: _Side | None, who: str) -> None:
    """Orders: how many got a fill, how many were refused; the engine's latency. Against a
    reference engine, its own; a backtest gives none."""
    m = live.m

    def diff(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    def beside(value: float | None, unit: str) -> str:
        if ref is None:
            return ""
        return f"; {who} {value:.1f}{unit}" if value is not None else f"; {who}: none"

    fill_rate = live.fill_rate
    base_fill = ref.fill_rate if ref else None
    result.figures.append(
        Figure(
            "fill_rate_pct",
            "Fill rate",
            "%",
            fill_rate,
            base_fill,
            diff(fill_rate, base_fill),
            (
                f"{m.filled_orders} of {m.orders} orders filled (at least in part)"
                if m.orders
                else "no order"
            )
            + beside(base_fill, " %"),
            "fewer_trades" if fill_rate is not None and fill_rate < 80 else None,
        )
    )
    rejection = live.rejection
    base_rej = ref.rejection if ref else None
    result.figures.append(
        Figure(
            "rejection_rate_pct",
            "Order rejection rate",
            "%",
            rejection,
            base_rej,
            diff(rejection, base_rej),
            (f"{m.rejected} of {m.orders} orders rejected" if m.orders else "no order")
            + beside(base_rej, " %"),
            "lower_returns" if rejection is not None and rejection >= 1 else None,
        )
    )
    latency = live.latency
    base_lat = ref.latency if ref else None
    result.figures.append(
        Figure(
            "latency_ms",
            "Latency (mean of latency_ms)",
            "ms",
            latency,
            base_lat,
            diff(latency, base_lat),
            (f"{latency:.1f} ms" if latency is not None else "no latency_ms metric")
            + beside(base_lat, " ms"),
        )
    )


def _against_backtest(result: Comparison, live: _Side, base: gates.BaselineFigures | None) -> None:
    m = live.m
    figures = result.figures
    weekdays = gates.weekdays_between(result.start, result.end)
    none = "no baseline figure"

    # Return: the live return against the baseline's annual return over the same weekdays.
    expected = (
        base.annual_return_pct * weekdays / TRADING_DAYS_PER_YEAR
        if base is not None and base.annual_return_pct is not None
        else None
    )
    _return_figure(result, m.return_pct, expected, f" over {weekdays} weekdays", "baseline")

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
    live_win = live.win_rate
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
    live_slip = live.slippage
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
    _shape_figures(
        result,
        live,
        base.sharpe if base is not None else None,
        base.max_drawdown_pct if base is not None else None,
        "baseline",
    )
    _order_figures(result, live, None, "baseline")


def _against_engine(result: Comparison, live: _Side, ref: _Side, name: str) -> None:
    """Figure by figure against the reference engine's record over the same period."""
    m, r = live.m, ref.m
    figures = result.figures
    _return_figure(result, m.return_pct, r.return_pct, " over the same days", name)

    ratio = m.fills / r.fills if r.fills else None
    figures.append(
        Figure(
            "trade_count_ratio",
            "Trade count",
            "ratio",
            float(m.fills),
            float(r.fills),
            ratio,
            f"{m.fills} fills, {name} {r.fills}: ratio {ratio:.2f}"
            if ratio is not None
            else f"{m.fills} fills; {name} none",
            "fewer_trades" if ratio is not None and ratio < 0.8 else None,
        )
    )

    live_win, base_win = live.win_rate, ref.win_rate
    win_diff = live_win - base_win if live_win is not None and base_win is not None else None
    if live_win is None:
        win_text = "no round trip closed in the period"
    elif base_win is None:
        win_text = f"live {live_win:.1f} %; {name} closed no round trip"
    else:
        win_text = f"live {live_win:.1f} %, {name} {base_win:.1f} %: {win_diff:+.1f} points"
    figures.append(
        Figure(
            "win_rate_pp",
            "Win rate",
            "pp",
            live_win,
            base_win,
            win_diff,
            win_text,
            "different_signals" if win_diff is not None and abs(win_diff) > 5 else None,
        )
    )

    # The earlier stage's fills are simulated: their slippage against the decision price is the
    # model. This engine's (what the market charged, or would have) is set against it.
    live_slip, modelled = live.slippage, r.slippage_bps
    slip_diff = live_slip - modelled if live_slip is not None and modelled is not None else None
    if live_slip is None:
        slip_text = "no fill with an expected price"
    elif modelled is None:
        slip_text = f"{live_slip:.2f} bps; {name} has no fill with an expected price"
    else:
        slip_text = (
            f"{live_slip:.2f} bps, {name} (the model) {modelled:.2f} bps: "
            f"{slip_diff:+.2f} bps beyond it"
        )
    figures.append(
        Figure(
            "slippage_bps",
            "Slippage against the expected price",
            "bps",
            live_slip,
            modelled,
            slip_diff,
            slip_text,
            "lower_returns" if slip_diff is not None and slip_diff > 0 else None,
        )
    )
    _shape_figures(result, live, r.sharpe, ref.drawdown, name)
    _order_figures(result, live, ref, name)
