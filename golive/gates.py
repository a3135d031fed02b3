"""The gates: for an engine at a stage, each criterion of the step to the next, measured live from
what is stored.

``reports(engines, now)`` reads the whole fleet in a fixed number of queries (one per source
below, whatever the number of engines); ``report(engine, now)`` is the same for one engine.
A criterion that cannot be measured yet (no data, or data the control plane does not record yet)
is ``passed=None`` with ``value_text`` saying what is missing: never a pass.

The period of a stage runs from its start to ``now``. Its start comes from the stage history
(controlplane StageChange); an engine whose history does not say when its current stage began
(none recorded) is taken from its first stored data (its first fill or account snapshot), or its
registration when it has none.

Each criterion: what is measured (the value), when it passes, and where it is read from.

backtest -> paper (no live data: the engine's backtest baseline, dashboard Baseline)
  baseline_sharpe            the baseline's Sharpe ratio; passes if > threshold.
  baseline_max_drawdown_pct  the largest fall of the baseline equity curve from its running
                             peak, in %; passes if < threshold.
  baseline_profit_factor     the baseline's gross profit / gross loss, as given with it;
                             passes if > threshold. Unknown without them.
  baseline_history_days      days from the first to the last point of the baseline equity
                             curve; passes if >= threshold.
paper -> shadow (the period: the stage's start to now)
  min_days                   whole days since the stage began; passes if >= threshold; since:
                             start + threshold days. Source: stage history, else first data.
  min_round_trips            round trips closed in the period (docs/analytics.md, from every
                             fill before now); passes if >= threshold. Source: fills.
  return_vs_baseline_pct     |live - expected| / |expected| * 100, live = last daily close /
                             opening equity - 1 (the last snapshot before the period, else its
                             first), expected = baseline annual return * weekdays / 252;
                             passes if <= threshold. Source: account snapshots, baseline.
  win_rate_vs_baseline_pp    |live win rate - baseline win rate| in points, live = round trips
                             with P&L > 0 / round trips * 100; passes if <= threshold.
  trade_count_ratio          fills in the period / (baseline trades per day * weekdays);
                             passes if threshold <= ratio <= upper bound. Source: fills.
  rejection_rate_pct         rejected / orders created in the period * 100; passes if <
                             threshold; unknown without an order. Source: orders.
  error_logs                 logs at level error or critical in the period; passes if <=
                             threshold; since: the last one (or the start). Source: engine logs.
  disconnects_recovered      frames of the event log received more than 60 s after the
                             previous one and more than 60 s after their first event's time
                             (events the engine's journal held while it was disconnected, sent
                             after it reconnected); passes if >= threshold and the period's
                             frames, in seq order, leave no gap in seq and hold no refused
                             event (else it fails, naming them). Unknown without frames.
shadow -> small_capital
  min_days                   as above.
  slippage_bps               how much more the market would have charged than the simulation
                             did: the mean over the period's fills that carry market_price (the
                             price a real order would have got, reported by a simulating engine)
                             of (market_price - price) / price * 10000 for a buy, (price -
                             market_price) / price * 10000 for a sell (bps, positive: the model
                             is too kind); passes if <= threshold. Unknown without such fills.
  unexplained_critical_alerts  critical alerts fired in the period with no explanation (an
                             operator's, alerts.services.alert_explain); passes if <=
                             threshold (0). Source: alerts.
small_capital -> full
  min_days                   as above.
  sharpe_vs_paper_pct        |Sharpe in this stage - Sharpe in the paper stage| / |Sharpe in
                             paper| * 100, Sharpe of daily closes (docs/analytics.md); passes
                             if <= threshold. Unknown until the stage history records the paper
                             period. Source: account snapshots, stage history.
  kill_drill_days            days since the engine's last passed kill drill was done
                             (golive.drills.last_passed); passes if <= threshold. Unknown with
                             none. Source: kill drills.
  statement_verified_days    days since the day of the engine's latest broker statement, if it
                             matched the ledger (controlplane.statements); fails, whatever the
                             threshold, if that statement differs; passes if <= threshold.
                             Unknown with none. Source: broker statements.
  post_trade_limit_kinds_missing  post-trade limit kinds with no enabled limit covering the
                             engine (global, its name, or one of its tags); passes if <=
                             threshold. Source: risk limits.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db import connection
from django.db.models import F
from django.urls import reverse

from alerts.models import Alert, Severity
from controlplane import partitions
from controlplane.models import (
    AccountSnapshot,
    BrokerStatement,
    EngineLog,
    Fill,
    Instrument,
    Order,
    StageChange,
)
from controlplane.models import Engine as EngineModel
from controlplane.trading_math import TRADING_DAYS_PER_YEAR, sharpe_ratio
from golive import drills, policy
from golive.models import KillDrill, PromotionCriterion
from risk.models import POST_TRADE, RiskLimit, Scope

# A frame received this long after its first event happened, after as long a silence, was held
# in the engine's journal while it could not deliver: a disconnect it recovered from.
RECOVERY_LAG = timedelta(seconds=60)


@dataclass(frozen=True)
class Criterion:
    key: str
    label: str
    threshold_text: str
    value: float | None
    value_text: str
    passed: bool | None  # None: unknown, not enough data
    since: datetime | None  # when it started passing, if knowable
    evidence: str | None  # a URL path to what it was measured from
    source: str


@dataclass(frozen=True)
class GateReport:
    engine: EngineModel
    from_stage: str
    to_stage: str | None  # None: full production, the last stage
    criteria: list[Criterion]
    # When the engine's current stage began: known for every stage, the last (full production)
    # and one whose step has no enabled criterion included, since its comparison with its
    # baseline and its red lines are judged over it too.
    period_start: datetime | None = None

    @property
    def ready(self) -> bool:
        """Every enabled criterion passed (a step with no criterion is not a step: not ready)."""
        return bool(self.criteria) and all(c.passed is True for c in self.criteria)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.passed is False]

    @property
    def unknown(self) -> list[Criterion]:
        return [c for c in self.criteria if c.passed is None]


# --- What the layers above hand over -------------------------------------------------------------


@dataclass(frozen=True)
class BaselineFigures:
    """What an engine's backtest baseline says (dashboard.models.Baseline, read by the reports)."""

    name: str = ""
    sharpe: float | None = None
    max_drawdown_pct: float | None = None
    profit_factor: float | None = None
    history_days: int | None = None
    annual_return_pct: float | None = None
    win_rate_pct: float | None = None
    trades_per_day: float | None = None


BaselineProvider = Callable[[Sequence[int]], Mapping[int, BaselineFigures]]
# engine ids -> for each, the stages it has been in: [(stage, started at)], oldest first.
StageHistory = Callable[[Sequence[int]], Mapping[int, Sequence[tuple[str, datetime]]]]

_baselines: BaselineProvider | None = None


def recorded_stage_history(ids: Sequence[int]) -> dict[int, list[tuple[str, datetime]]]:
    """Each engine's stages, oldest first, as the core's stage history (StageChange) records them;
    one query for all. A step of the capital ramp (small capital to small capital) begins no
    stage: the stage's period runs on from its entry."""
    history: dict[int, list[tuple[str, datetime]]] = defaultdict(list)
    rows = (
        StageChange.objects.filter(engine_id__in=ids)
        .exclude(from_stage=F("to_stage"))
        .order_by("engine_id", "at", "pk")
        .values_list("engine_id", "to_stage", "at")
    )
    for engine_id, stage, at in rows:
        history[engine_id].append((stage, at))
    return history


_stage_history: StageHistory = recorded_stage_history


def baselines_from(provider: BaselineProvider | None) -> None:
    """The baselines live with the reports, a layer above: they hand their reader over when they
    load (dashboard.apps). It takes engine ids and answers in one query."""
    global _baselines
    _baselines = provider


def stage_history_from(provider: StageHistory | None) -> None:
    """Read the stage periods from ``provider`` instead (None: the recorded history again)."""
    global _stage_history
    _stage_history = provider or recorded_stage_history


# --- The fleet's figures, read set-based ---------------------------------------------------------


@dataclass
class _Window:
    """One engine's period: [start, end)."""

    engine_id: int
    start: datetime
    end: datetime


@dataclass
class _Measures:
    # Round trips closed in the period, and those with a P&L above 0.
    round_trips: int = 0
    winning_trips: int = 0
    fills: int = 0
    slippage_bps: float | None = None
    slipped_fills: int = 0
    # Simulated fills that say what a real order would have got (fill.market_price): how much
    # more the market would have charged than the simulation did, and both against the order's
    # expected price where it has one.
    excess_bps: float | None = None
    marked_fills: int = 0
    market_bps: float | None = None
    modelled_bps: float | None = None
    orders: int = 0
    # Orders created in the period that got a fill (at least in part).
    filled_orders: int = 0
    rejected: int = 0
    error_logs: int = 0
    last_error_at: datetime | None = None
    critical_alerts: int = 0
    unexplained_alerts: int = 0
    last_unexplained_at: datetime | None = None
    frames: int = 0
    seq_gaps: int = 0
    refused: int = 0
    recoveries: int = 0
    first_recovery_at: datetime | None = None
    opening_equity: Decimal | None = None
    closes: list[tuple[date, Decimal]] = field(default_factory=list)

    @property
    def win_rate(self) -> float | None:
        """Round trips with P&L > 0 / round trips * 100; None without a round trip."""
        if not self.round_trips:
            return None
        return 100.0 * self.winning_trips / self.round_trips

    @property
    def return_pct(self) -> float | None:
        if not self.closes or not self.opening_equity:
            return None
        return float(self.closes[-1][1] / self.opening_equity - 1) * 100

    @property
    def sharpe(self) -> float | None:
        returns = []
        previous = self.opening_equity
        for _, close in self.closes:
            if previous:
                returns.append(float(close / previous - 1))
            previous = close
        return sharpe_ratio(returns)


def measure(engine_id: int, start: datetime, end: datetime) -> _Measures:
    """One engine's figures over [start, end): equity closes, fills, slippage, orders, logs,
    alerts and round trips, as the gates read them (golive.comparison uses them too)."""
    return measure_many([(engine_id, start, end)])[0]


def measure_many(periods: Sequence[tuple[int, datetime, datetime]]) -> list[_Measures]:
    """``measure`` of each (engine id, start, end), in the order given, in three queries
    whatever their number (an engine may be asked about over several periods)."""
    windows = [_Window(*period) for period in periods]
    measures = _equity(windows)
    _activity(windows, measures)
    _round_trips(windows, measures)
    return measures


def baselines_of(engine_ids: Sequence[int]) -> Mapping[int, BaselineFigures]:
    """The engines' backtest baselines, as the reports hand them over (none before they do)."""
    return _baselines(engine_ids) if _baselines is not None else {}


def weekdays_between(start: datetime, end: datetime) -> int:
    """Dates Monday to Friday (UTC) that [start, end) touches, partly or whole."""
    if end <= start:
        return 0
    first = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    days = (last - first).days + 1
    whole, rest = divmod(days, 7)
    count = whole * 5
    for offset in range(rest):
        if (first + timedelta(days=whole * 7 + offset)).weekday() < 5:
            count += 1
    return count


def _windows_sql(windows: Sequence[_Window]) -> dict[str, list]:
    return {
        "ids": [w.engine_id for w in windows],
        "starts": [w.start for w in windows],
        "ends": [w.end for w in windows],
    }


_WINDOWS = (
    "unnest(%(ids)s::bigint[], %(starts)s::timestamptz[], %(ends)s::timestamptz[]) "
    "WITH ORDINALITY AS w(engine_id, start, stop, n)"
)


def _rows(sql: str, params: Mapping[str, object]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _first_data(ids: list[int]) -> dict[int, datetime]:
    """Each engine's first fill or account snapshot (two index probes per engine, one query)."""
    sql = f"""
        SELECT e.id, LEAST(
            (SELECT min(ts) FROM {Fill._meta.db_table} WHERE engine_id = e.id),
            (SELECT min(ts) FROM {AccountSnapshot._meta.db_table} WHERE engine_id = e.id))
        FROM unnest(%(ids)s::bigint[]) AS e(id)
    """
    return {engine_id: first for engine_id, first in _rows(sql, {"ids": ids}) if first}


def _equity(windows: Sequence[_Window]) -> list[_Measures]:
    """Per window: the opening equity (the last snapshot before it, else its first) and the
    close of each UTC day in it (the day's last snapshot by ts, then seq)."""
    measures = [_Measures() for _ in windows]
    if not windows:
        return measures
    snapshots = AccountSnapshot._meta.db_table
    # Each day's close is one probe, backwards, of snapshot_engine_ts_idx, which holds (ts, seq)
    # and the equity: a day's other snapshots (48 a day at one every 30 minutes) are not read.
    sql = f"""
        SELECT w.n, NULL::date, COALESCE(
            (SELECT equity FROM {snapshots} a WHERE a.engine_id = w.engine_id AND a.ts < w.start
              ORDER BY a.ts DESC, a.seq DESC LIMIT 1),
            (SELECT equity FROM {snapshots} a WHERE a.engine_id = w.engine_id AND a.ts >= w.start
                AND a.ts < w.stop ORDER BY a.ts, a.seq LIMIT 1))
        FROM {_WINDOWS}
        UNION ALL
        SELECT w.n, d.day, c.equity
        FROM {_WINDOWS}
        CROSS JOIN LATERAL (
            SELECT (w.start AT TIME ZONE 'UTC')::date + i AS day
            FROM generate_series(0, ((w.stop - interval '1 microsecond') AT TIME ZONE 'UTC')::date
                - (w.start AT TIME ZONE 'UTC')::date) AS i
        ) AS d
        CROSS JOIN LATERAL (
            SELECT a.equity FROM {snapshots} a
            WHERE a.engine_id = w.engine_id
                AND a.ts >= GREATEST(w.start, d.day::timestamp AT TIME ZONE 'UTC')
                AND a.ts < LEAST(w.stop, (d.day + 1)::timestamp AT TIME ZONE 'UTC')
            ORDER BY a.ts DESC, a.seq DESC LIMIT 1
        ) AS c
        ORDER BY 1, 2 NULLS FIRST
    """
    for n, day, equity in _rows(sql, _windows_sql(windows)):
        item = measures[n - 1]
        if day is None:
            item.opening_equity = equity
        elif equity is not None:
            item.closes.append((day, equity))
    return measures


def _round_trips(windows: Sequence[_Window], measures: list[_Measures]) -> None:
    """Round trips closing in each window (trading_math.round_trips, docs/analytics.md), counted
    in the database, exactly (numeric: a trip at exactly 0 is no win).

    Per instrument in (ts, seq) order, running sums of the position, of the fills' notional
    (a sell's quantity x price in, a buy's out) and of their fees. A fill closes a trip where the
    position is flat or across zero after it (a buy: 0 <= after < quantity); the part beyond
    zero, |after| / quantity of the fill, opens the next trip. At each close, the sums up to its
    closing part are its marks; a trip's P&L is the multiplier x the difference of the notional
    marks less the difference of the fee marks, from the previous close (or the first fill).

    A trip closing in the window may have opened before it, but no earlier than the last close
    before the window: the sums run from that fill (its origin), the position starting from
    what it was before it. The position at the window's start is the sum of the earlier fills'
    quantities (an aggregate of fill_trip_idx); from it the fills before the start are walked
    back, newest first, only as far as that close.
    """
    if not windows:
        return
    # The fills come from fill_trip_idx alone, already in the window's order (it holds every
    # column read here); the multiplier, the same for a whole instrument, is applied per trip.
    notional = "CASE WHEN f.side = 'sell' THEN f.quantity * f.price ELSE -f.quantity * f.price END"
    signed = "CASE WHEN f.side = 'buy' THEN f.quantity ELSE -f.quantity END"
    fills = Fill._meta.db_table
    sql = f"""
        SELECT w.n, t.trips, t.wins
        FROM {_WINDOWS}
        CROSS JOIN LATERAL (
            SELECT count(*) AS trips,
                count(*) FILTER (WHERE i.multiplier * trips.notional - trips.fees > 0) AS wins
            FROM (
                SELECT instrument_id, ts,
                    notional - lag(notional, 1, 0) OVER closes AS notional,
                    fees - lag(fees, 1, 0) OVER closes AS fees
                FROM (
                    SELECT o.instrument_id, c.ts, c.seq,
                        CASE WHEN c.position = 0 THEN c.notional
                            ELSE c.notional - c.flow * abs(c.position) / c.quantity END
                            AS notional,
                        CASE WHEN c.position = 0 THEN c.fees
                            ELSE c.fees - c.fee * abs(c.position) / c.quantity END AS fees
                    FROM (
                        SELECT a.instrument_id, m.ts, m.seq,
                            COALESCE(m.after - m.signed, 0) AS before
                        FROM (
                            SELECT f.instrument_id,
                                sum({signed}) FILTER (WHERE f.ts < w.start) AS position
                            FROM {fills} f
                            WHERE f.engine_id = w.engine_id AND f.ts < w.stop
                            GROUP BY f.instrument_id
                        ) AS a
                        LEFT JOIN LATERAL (
                            SELECT r.ts, r.seq, r.after, r.signed FROM (
                                SELECT f.ts, f.seq, f.side, f.quantity, {signed} AS signed,
                                    a.position - sum({signed}) OVER later + {signed} AS after
                                FROM {fills} f
                                WHERE f.engine_id = w.engine_id
                                    AND f.instrument_id = a.instrument_id AND f.ts < w.start
                                WINDOW later AS (ORDER BY f.ts DESC, f.seq DESC
                                    ROWS UNBOUNDED PRECEDING)
                            ) AS r
                            WHERE CASE WHEN r.side = 'buy' THEN r.after >= 0
                                    AND r.after < r.quantity
                                ELSE r.after <= 0 AND r.after > -r.quantity END
                            LIMIT 1
                        ) AS m ON a.position IS NOT NULL
                    ) AS o
                    CROSS JOIN LATERAL (
                        SELECT * FROM (
                            SELECT f.ts, f.seq, f.side, f.quantity, f.fee, {notional} AS flow,
                                o.before + sum({signed}) OVER fills AS position,
                                sum({notional}) OVER fills AS notional,
                                sum(f.fee) OVER fills AS fees
                            FROM {fills} f
                            WHERE f.engine_id = w.engine_id AND f.instrument_id = o.instrument_id
                                AND f.ts < w.stop AND (f.ts, f.seq)
                                    >= (COALESCE(o.ts, '-infinity'), COALESCE(o.seq, 0))
                            WINDOW fills AS (ORDER BY f.ts, f.seq ROWS UNBOUNDED PRECEDING)
                        ) AS x
                        WHERE CASE WHEN x.side = 'buy' THEN x.position >= 0
                                AND x.position < x.quantity
                            ELSE x.position <= 0 AND x.position > -x.quantity END
                    ) AS c
                ) AS marks
                WINDOW closes AS (PARTITION BY instrument_id ORDER BY ts, seq)
            ) AS trips
            JOIN {Instrument._meta.db_table} i ON i.id = trips.instrument_id
            WHERE trips.ts >= w.start
        ) AS t
    """
    for n, trips, wins in _rows(sql, _windows_sql(windows)):
        item = measures[n - 1]
        item.round_trips, item.winning_trips = trips, wins


def _activity(windows: Sequence[_Window], measures: list[_Measures]) -> None:
    """Fills, slippage, orders, error logs and critical alerts of each window: one query."""
    if not windows:
        return
    sql = f"""
        SELECT w.n,
            s.n, s.slip, s.slipped, s.excess, s.marked, s.market_slip, s.model_slip,
            o.n, o.rejected, o.filled,
            l.n, l.last_at,
            al.n, al.unexplained, al.last_at
        FROM {_WINDOWS}
        CROSS JOIN LATERAL (
            SELECT count(*) AS n,
                avg(CASE WHEN f.side = 'buy' THEN f.price - f.expected_price
                         ELSE f.expected_price - f.price END / f.expected_price * 10000)
                    FILTER (WHERE f.expected_price > 0) AS slip,
                count(*) FILTER (WHERE f.expected_price > 0) AS slipped,
                avg(CASE WHEN f.side = 'buy' THEN f.market_price - f.price
                         ELSE f.price - f.market_price END / f.price * 10000)
                    FILTER (WHERE f.market_price > 0) AS excess,
                count(*) FILTER (WHERE f.market_price > 0) AS marked,
                avg(CASE WHEN f.side = 'buy' THEN f.market_price - f.expected_price
                         ELSE f.expected_price - f.market_price END / f.expected_price * 10000)
                    FILTER (WHERE f.market_price > 0 AND f.expected_price > 0) AS market_slip,
                avg(CASE WHEN f.side = 'buy' THEN f.price - f.expected_price
                         ELSE f.expected_price - f.price END / f.expected_price * 10000)
                    FILTER (WHERE f.market_price > 0 AND f.expected_price > 0) AS model_slip
            FROM {Fill._meta.db_table} f
            WHERE f.engine_id = w.engine_id AND f.ts >= w.start AND f.ts < w.stop) AS s
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, count(*) FILTER (WHERE o.status = 'rejected') AS rejected,
                count(*) FILTER (WHERE o.filled_quantity > 0) AS filled
            FROM {Order._meta.db_table} o
            WHERE o.engine_id = w.engine_id AND o.created_at >= w.start
              AND o.created_at < w.stop) AS o
        CROSS JOIN LATERAL (
            SELECT count(*) AS n, max(l.ts) AS last_at FROM {EngineLog._meta.db_table} l
            WHERE l.engine_id = w.engine_id AND l.level IN ('error', 'critical')
              AND l.ts >= w.start AND l.ts < w.stop) AS l
        CROSS JOIN LATERAL (
            SELECT count(*) AS n,
                count(*) FILTER (WHERE al.explanation = '') AS unexplained,
                max(al.fired_at) FILTER (WHERE al.explanation = '') AS last_at
            FROM {Alert._meta.db_table} al
            WHERE al.engine_id = w.engine_id AND al.severity = %(critical)s
              AND al.fired_at >= w.start AND al.fired_at < w.stop) AS al
    """
    params = {**_windows_sql(windows), "critical": Severity.CRITICAL.value}
    for row in _rows(sql, params):
        n, fills, slip, slipped, excess, marked, market_slip, model_slip = row[:8]
        orders, rejected, filled, logs, last_log, crit, unexplained, last = row[8:]
        item = measures[n - 1]
        item.fills, item.slipped_fills = fills, slipped
        item.slippage_bps = float(slip) if slip is not None else None
        item.marked_fills = marked
        item.excess_bps = float(excess) if excess is not None else None
        item.market_bps = float(market_slip) if market_slip is not None else None
        item.modelled_bps = float(model_slip) if model_slip is not None else None
        item.orders, item.rejected, item.filled_orders = orders, rejected, filled
        item.error_logs, item.last_error_at = logs, last_log
        item.critical_alerts = crit
        item.unexplained_alerts, item.last_unexplained_at = unexplained, last


def _event_log(windows: Sequence[_Window], measures: list[_Measures]) -> None:
    """Frames received in each window: how many, gaps in seq between them, refused events, and
    recoveries (a frame that arrives after a silence, its first event older than RECOVERY_LAG)."""
    if not windows:
        return
    # Per engine, its frames in seq order from the index eventframe_engine_received_idx, which
    # holds every column read here: the lag of each frame's arrival. A frame stored before
    # frames kept their first event's time (migration 0022) has its JSON read instead.
    sql = f"""
        SELECT w.n, x.frames, x.missing, x.refused, x.recoveries, x.first_recovery
        FROM {_WINDOWS}
        CROSS JOIN LATERAL (
            SELECT count(*) AS frames,
                max(last_seq) - min(first_seq) + 1 - sum(last_seq - first_seq + 1) AS missing,
                count(*) FILTER (WHERE refused IS NOT NULL) AS refused,
                count(*) FILTER (WHERE recovered) AS recoveries,
                min(received_at) FILTER (WHERE recovered) AS first_recovery
            FROM (
                SELECT first_seq, last_seq, received_at, refused,
                    CASE WHEN refused IS NULL AND received_at - lag(received_at)
                        OVER (ORDER BY first_seq, received_at) > %(lag)s
                    THEN received_at - COALESCE(first_ts, (
                        SELECT (g.events -> 0 ->> 'ts')::timestamptz FROM {partitions.PARENT} g
                        WHERE g.engine_id = f.engine_id AND g.first_seq = f.first_seq
                            AND g.received_at = f.received_at)) > %(lag)s
                    ELSE false END AS recovered
                FROM {partitions.PARENT} f
                WHERE f.engine_id = w.engine_id
                    AND f.received_at >= w.start AND f.received_at < w.stop
                ORDER BY first_seq, received_at
            ) AS frames
        ) AS x
        WHERE x.frames > 0
    """
    params = {**_windows_sql(windows), "lag": RECOVERY_LAG}
    for n, frames, gaps, refused, recoveries, first_recovery in _rows(sql, params):
        item = measures[n - 1]
        item.frames, item.seq_gaps, item.refused = frames, int(gaps), refused
        item.recoveries, item.first_recovery_at = recoveries, first_recovery


def _last_statements(ids: list[int]) -> dict[int, BrokerStatement]:
    """Each engine's latest broker statement (the latest day, then the latest import)."""
    rows = (
        BrokerStatement.objects.filter(engine_id__in=ids)
        .order_by("engine_id", "-statement_date", "-imported_at", "-pk")
        .distinct("engine_id")
    )
    return {row.engine_id: row for row in rows}


def _covered_kinds(engines: Sequence[EngineModel]) -> dict[int, set[str]]:
    limits = list(
        RiskLimit.objects.filter(enabled=True, kind__in=list(POST_TRADE)).values_list(
            "kind", "scope", "scope_value"
        )
    )
    covered: dict[int, set[str]] = {}
    for engine in engines:
        tags = set(engine.strategy_tags or [])
        covered[engine.pk] = {
            kind
            for kind, scope, value in limits
            if scope == Scope.GLOBAL
            or (scope == Scope.ENGINE and value == engine.name)
            or (scope == Scope.TAG and value in tags)
        }
    return covered


# --- The criteria --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:,.{digits}f}{unit}"


@dataclass
class _Context:
    engine: EngineModel
    now: datetime
    start: datetime
    started_known: bool
    baseline: BaselineFigures | None
    measures: _Measures | None = None
    paper: _Measures | None = None
    paper_known: bool = False
    last_drill: KillDrill | None = None
    statement: BrokerStatement | None = None
    covered: set[str] = field(default_factory=set)

    links: dict[tuple[str, str], str] = field(default_factory=dict)

    def path(self, name: str, arg: str | None = None) -> str:
        """reverse(), once per name and argument in a reports() call (a fleet asks it often)."""
        key = (name, arg or "")
        if key not in self.links:
            self.links[key] = reverse(name, args=[arg] if arg is not None else None)
        return self.links[key]

    def url(self, anchor: str = "") -> str:
        return self.path("dashboard:engine", self.engine.name) + anchor

    def admin(self, model: str, **filters: object) -> str:
        query = "&".join(
            f"{k}={v}" for k, v in {"engine__id__exact": self.engine.pk, **filters}.items()
        )
        return f"{self.path(f'admin:controlplane_{model}_changelist')}?{query}"


Measure = tuple[float | None, str, bool | None, datetime | None, str | None, str]


def _judge(
    row: PromotionCriterion, spec: policy.Spec, ctx: _Context, measure: Callable[..., Measure]
) -> Criterion:
    value, text, known, since, evidence, source = measure(ctx, row, spec)
    passed: bool | None
    if known is False:
        passed = False
    elif value is None or not math.isfinite(value):
        passed = None
    else:
        passed = spec.passes(value, row.threshold, row.threshold_high)
    return Criterion(
        key=spec.key,
        label=spec.label,
        threshold_text=row.threshold_text,
        value=value,
        value_text=text,
        passed=passed,
        since=since if passed else None,
        evidence=evidence,
        source=source,
    )


def _baseline_figure(name: str, digits: int, unit: str, missing: str) -> Callable[..., Measure]:
    def measure(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
        evidence = ctx.url("#baseline")
        if ctx.baseline is None:
            return None, "no backtest baseline uploaded", None, None, evidence, "baseline"
        value = getattr(ctx.baseline, name)
        if value is None:
            return None, missing, None, None, evidence, "baseline"
        return float(value), _fmt(float(value), digits, unit), None, None, evidence, "baseline"

    return measure


def _days(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    days = (ctx.now - ctx.start) / timedelta(days=1)
    since = ctx.start + timedelta(days=float(row.threshold))
    origin = "stage history" if ctx.started_known else "first stored data"
    text = f"{math.floor(days)} days (since {ctx.start:%Y-%m-%d}, {origin})"
    return float(math.floor(days)), text, None, since, ctx.url(), origin


def _round_trip_count(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.admin("fill", ts__gte=ctx.start.date().isoformat())
    return float(m.round_trips), f"{m.round_trips} round trips", None, None, evidence, "fills"


def _return_vs_baseline(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.url("#baseline")
    source = "account snapshots, baseline"
    if ctx.baseline is None or ctx.baseline.annual_return_pct is None:
        return None, "no baseline return to compare with", None, None, evidence, source
    live = m.return_pct
    if live is None:
        return None, "no account snapshot in the period", None, None, evidence, source
    weekdays = weekdays_between(ctx.start, ctx.now)
    expected = ctx.baseline.annual_return_pct * weekdays / TRADING_DAYS_PER_YEAR
    if expected == 0:
        return None, "the baseline expects no return over the period", None, None, evidence, source
    diff = abs(live - expected) / abs(expected) * 100
    text = f"{diff:.1f} % (live {live:+.2f} %, baseline {expected:+.2f} % over {weekdays} weekdays)"
    return diff, text, None, None, evidence, source


def _win_rate_vs_baseline(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.url("#baseline")
    source = "fills (round trips), baseline"
    if ctx.baseline is None or ctx.baseline.win_rate_pct is None:
        return None, "the baseline has no win rate", None, None, evidence, source
    live = m.win_rate
    if live is None:
        return None, "no round trip closed in the period", None, None, evidence, source
    diff = abs(live - ctx.baseline.win_rate_pct)
    text = f"{diff:.1f} pp (live {live:.1f} %, baseline {ctx.baseline.win_rate_pct:.1f} %)"
    return diff, text, None, None, evidence, source


def _trade_ratio(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.admin("fill", ts__gte=ctx.start.date().isoformat())
    source = "fills, baseline"
    if ctx.baseline is None or not ctx.baseline.trades_per_day:
        return None, "the baseline has no trades per day", None, None, evidence, source
    expected = ctx.baseline.trades_per_day * weekdays_between(ctx.start, ctx.now)
    if not expected:
        return None, "no weekday in the period yet", None, None, evidence, source
    ratio = m.fills / expected
    return (
        ratio,
        f"{ratio:.2f} ({m.fills} fills, {expected:.0f} expected)",
        None,
        None,
        evidence,
        source,
    )


def _rejection_rate(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.admin("order", status__exact="rejected")
    if not m.orders:
        return None, "no order in the period", None, None, evidence, "orders"
    rate = 100.0 * m.rejected / m.orders
    text = f"{rate:.2f} % ({m.rejected} of {m.orders} orders)"
    return rate, text, None, None, evidence, "orders"


def _error_logs(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.admin("enginelog", level__exact="error")
    since = m.last_error_at or ctx.start
    text = f"{m.error_logs} error or critical logs"
    if m.last_error_at is not None:
        text += f" (last {m.last_error_at:%Y-%m-%d %H:%M})"
    return float(m.error_logs), text, None, since, evidence, "engine logs"


def _recoveries(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.url("#logs-table")
    source = "event log"
    if not m.frames:
        return None, "no event frame received in the period", None, None, evidence, source
    text = f"{m.recoveries} recovered"
    lost = []
    if m.seq_gaps:
        lost.append(f"{m.seq_gaps} missing from the seq")
    if m.refused:
        lost.append(f"{m.refused} refused")
    if lost:
        return (
            float(m.recoveries),
            f"{text}; events lost: {', '.join(lost)}",
            False,
            None,
            (evidence),
            source,
        )
    if not m.recoveries:
        text = "no disconnect recovered in the period (none seen in the event log)"
    return float(m.recoveries), text, None, m.first_recovery_at, evidence, source


def _slippage(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.admin("fill", ts__gte=ctx.start.date().isoformat())
    if m.excess_bps is None:
        text = (
            "no fill of the period says what a real order would have got (fill.market_price, "
            "docs/protocol.md): the engine does not report it"
        )
        return None, text, None, None, evidence, "fills"
    text = f"{m.excess_bps:.2f} bps beyond the simulated prices over {m.marked_fills} fills"
    if m.market_bps is not None and m.modelled_bps is not None:
        text += f" (the market {m.market_bps:.2f} bps, modelled {m.modelled_bps:.2f})"
    return m.excess_bps, text, None, None, evidence, "fills (market_price)"


def _critical_alerts(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = f"{ctx.path('alerts:list')}?engine={ctx.engine.name}"
    if not m.unexplained_alerts:
        if not m.critical_alerts:
            return 0.0, "no critical alert in the period", None, ctx.start, evidence, "alerts"
        text = f"{m.critical_alerts} critical alerts in the period, each explained"
        return 0.0, text, None, None, evidence, "alerts"
    text = (
        f"{m.unexplained_alerts} of {m.critical_alerts} critical alerts unexplained "
        f"(last {m.last_unexplained_at:%Y-%m-%d %H:%M})"
    )
    return float(m.unexplained_alerts), text, None, None, evidence, "alerts"


def _sharpe_vs_paper(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    m = ctx.measures
    assert m is not None
    evidence = ctx.url("#equity-chart")
    source = "account snapshots, stage history"
    if not ctx.paper_known or ctx.paper is None:
        return (
            None,
            "the paper period is not recorded (no stage history)",
            None,
            None,
            evidence,
            (source),
        )
    paper, live = ctx.paper.sharpe, m.sharpe
    if paper is None or live is None:
        missing = "paper" if paper is None else "this stage"
        return (
            None,
            f"no Sharpe ratio for {missing} (fewer than 2 days)",
            None,
            None,
            evidence,
            (source),
        )
    if paper == 0:
        return None, "the paper Sharpe ratio is 0", None, None, evidence, source
    diff = abs(live - paper) / abs(paper) * 100
    return diff, f"{diff:.1f} % (now {live:.2f}, paper {paper:.2f})", None, None, evidence, source


def _kill_drill(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    evidence = ctx.path("dashboard:engine_golive", ctx.engine.name) + "#drills"
    drill = ctx.last_drill
    if drill is None or drill.done_at is None:
        return None, "no kill drill passed yet", None, None, evidence, "kill drills"
    days = (ctx.now - drill.done_at) / timedelta(days=1)
    text = (
        f"{math.floor(days)} days ago (a kill drill passed {drill.done_at:%Y-%m-%d}, "
        f"done in {drill.done_ms or 0:,} ms)"
    )
    return float(math.floor(days)), text, None, drill.done_at, evidence, "kill drills"


def _statement(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    evidence = ctx.admin("brokerstatement", engine__id__exact=str(ctx.engine.pk))
    statement = ctx.statement
    source = "broker statements"
    if statement is None:
        text = "no broker statement imported (docs/broker-statements.md)"
        return None, text, None, None, evidence, source
    day = statement.statement_date
    if not statement.matched:
        count = statement.differences_count
        text = (
            f"the last statement, of {day}, differs from the ledger in {count} "
            f"{'place' if count == 1 else 'places'}"
        )
        # Not verified, whatever the threshold: a difference is never within tolerance.
        return None, text, False, None, evidence, source
    days = (ctx.now.date() - day).days
    text = f"{days} days ago (the statement of {day} matched the ledger)"
    since = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return float(days), text, None, since, evidence, source


def _limit_kinds(ctx: _Context, row: PromotionCriterion, spec: policy.Spec) -> Measure:
    missing = sorted(POST_TRADE - ctx.covered)
    text = "every post-trade kind configured" if not missing else "missing: " + ", ".join(missing)
    return float(len(missing)), text, None, None, ctx.path("risk:limits"), "risk limits"


MEASURES: dict[tuple[str, str], Callable[..., Measure]] = {
    (policy.BACKTEST, "baseline_sharpe"): _baseline_figure(
        "sharpe", 2, "", "the baseline has no Sharpe ratio"
    ),
    (policy.BACKTEST, "baseline_max_drawdown_pct"): _baseline_figure(
        "max_drawdown_pct", 1, " %", "the baseline has no equity curve to measure a drawdown on"
    ),
    (policy.BACKTEST, "baseline_profit_factor"): _baseline_figure(
        "profit_factor", 2, "", "the baseline gives no gross profit and gross loss"
    ),
    (policy.BACKTEST, "baseline_history_days"): _baseline_figure(
        "history_days", 0, " days", "the baseline has no equity curve to date its history"
    ),
    (policy.PAPER, "min_days"): _days,
    (policy.PAPER, "min_round_trips"): _round_trip_count,
    (policy.PAPER, "return_vs_baseline_pct"): _return_vs_baseline,
    (policy.PAPER, "win_rate_vs_baseline_pp"): _win_rate_vs_baseline,
    (policy.PAPER, "trade_count_ratio"): _trade_ratio,
    (policy.PAPER, "rejection_rate_pct"): _rejection_rate,
    (policy.PAPER, "error_logs"): _error_logs,
    (policy.PAPER, "disconnects_recovered"): _recoveries,
    (policy.SHADOW, "min_days"): _days,
    (policy.SHADOW, "slippage_bps"): _slippage,
    (policy.SHADOW, "unexplained_critical_alerts"): _critical_alerts,
    (policy.SMALL_CAPITAL, "min_days"): _days,
    (policy.SMALL_CAPITAL, "sharpe_vs_paper_pct"): _sharpe_vs_paper,
    (policy.SMALL_CAPITAL, "kill_drill_days"): _kill_drill,
    (policy.SMALL_CAPITAL, "statement_verified_days"): _statement,
    (policy.SMALL_CAPITAL, "post_trade_limit_kinds_missing"): _limit_kinds,
}


# --- The reports ---------------------------------------------------------------------------------


def _periods(
    engines: Sequence[EngineModel], now: datetime
) -> tuple[dict[int, tuple[datetime, bool]], dict[int, tuple[datetime, datetime]]]:
    """Each engine's current stage start (and whether the stage history said so), and its last
    paper period, where the history records one."""
    ids = [e.pk for e in engines]
    history = _stage_history(ids)
    starts: dict[int, tuple[datetime, bool]] = {}
    papers: dict[int, tuple[datetime, datetime]] = {}
    missing = []
    for engine in engines:
        entries = list(history.get(engine.pk, ()))
        # A start after ``now`` (a moment asked about before the history began) says nothing.
        if entries and entries[-1][0] == engine.stage and entries[-1][1] <= now:
            starts[engine.pk] = (entries[-1][1], True)
        else:
            missing.append(engine)
        for (stage, began), (_, ended) in itertools.pairwise(entries):
            if stage == policy.PAPER:
                papers[engine.pk] = (began, ended)
    if missing:
        firsts = _first_data([e.pk for e in missing])
        for engine in missing:
            first = firsts.get(engine.pk) or engine.created_at or now
            starts[engine.pk] = (min(first, now), False)
    return starts, papers


def reports(engines: Sequence[EngineModel], now: datetime) -> list[GateReport]:
    """The gate of each engine's next step, in the order given; a fixed number of queries."""
    engines = list(engines)
    if not engines:
        return []
    rows: dict[str, list[PromotionCriterion]] = defaultdict(list)
    for row in PromotionCriterion.objects.filter(enabled=True):
        if (row.from_stage, row.key) in MEASURES:
            rows[row.from_stage].append(row)
    order = {spec_key: i for i, spec_key in enumerate(policy.CATALOG)}
    for items in rows.values():
        items.sort(key=lambda r: order[(r.from_stage, r.key)])

    stepping = [e for e in engines if e.stage in policy.NEXT_STAGE and rows.get(e.stage)]
    starts, papers = _periods(engines, now)
    baselines: Mapping[int, BaselineFigures] = {}
    if _baselines is not None and any(e.stage in (policy.BACKTEST, policy.PAPER) for e in stepping):
        baselines = _baselines(
            [e.pk for e in stepping if e.stage in (policy.BACKTEST, policy.PAPER)]
        )

    live = [e for e in stepping if e.stage != policy.BACKTEST]
    windows = [_Window(e.pk, starts[e.pk][0], now) for e in live]
    measures = _equity(windows)
    _activity(windows, measures)
    by_engine = dict(zip([e.pk for e in live], measures, strict=True))
    paper_engines = [i for i, e in enumerate(live) if e.stage == policy.PAPER]
    _round_trips([windows[i] for i in paper_engines], [measures[i] for i in paper_engines])
    _event_log([windows[i] for i in paper_engines], [measures[i] for i in paper_engines])

    small = [e for e in live if e.stage == policy.SMALL_CAPITAL]
    paper_windows = [_Window(e.pk, *papers[e.pk]) for e in small if e.pk in papers]
    paper_measures = dict(
        zip([w.engine_id for w in paper_windows], _equity(paper_windows), strict=True)
    )
    kills = drills.last_passed([e.pk for e in small]) if small else {}
    statements = _last_statements([e.pk for e in small]) if small else {}
    covered = _covered_kinds(small) if small else {}

    stepping_ids = {e.pk for e in stepping}
    links: dict[tuple[str, str], str] = {}
    result = []
    for engine in engines:
        to_stage = policy.NEXT_STAGE.get(engine.stage)
        criteria: list[Criterion] = []
        if engine.pk in stepping_ids:
            start, known = starts[engine.pk]
            ctx = _Context(
                engine=engine,
                now=now,
                start=start,
                started_known=known,
                baseline=baselines.get(engine.pk),
                measures=by_engine.get(engine.pk),
                paper=paper_measures.get(engine.pk),
                paper_known=engine.pk in papers,
                last_drill=kills.get(engine.pk),
                statement=statements.get(engine.pk),
                covered=covered.get(engine.pk, set()),
                links=links,
            )
            for row in rows[engine.stage]:
                spec = policy.CATALOG[(row.from_stage, row.key)]
                criteria.append(_judge(row, spec, ctx, MEASURES[(row.from_stage, row.key)]))
        period = starts[engine.pk][0] if engine.pk in starts else None
        result.append(GateReport(engine, engine.stage, to_stage, criteria, period))
    return result


def report(engine: EngineModel, now: datetime) -> GateReport:
    """The gate of one engine's next step."""
    return reports([engine], now)[0]
