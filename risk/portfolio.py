"""Portfolio limits: risk across engines, measured by a periodic task (not per batch).

Each enabled portfolio limit (risk.models.PORTFOLIO) has subjects: the fleet or a tag (drawdown,
daily loss, value at risk), one engine (value at risk), or each pair of engines (correlation).
Each subject has a PortfolioLimitState that moves like an engine's LimitState: the same warning
levels, hysteresis and breach (risk.evaluation.transition), each move claimed with a conditional
update so two workers never act twice. A breach's action is issued to every engine of the
subject (both engines of a pair). docs/risk.md defines every figure.

The figures from daily returns (correlation, value at risk) change once a day: they are computed
once per UTC day and limit version in each process; the drawdown and the daily loss each run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import combinations
from typing import Any

from django.db import connection, transaction

from controlplane import trading_math
from controlplane.events import announce
from controlplane.models import AccountSnapshot, Engine
from risk import events as risk_events
from risk.evaluation import _act, transition
from risk.models import (
    DEFAULT_WINDOW_DAYS,
    PORTFOLIO,
    Action,
    LimitKind,
    PortfolioLimitState,
    RiskEvent,
    RiskLimit,
    Scope,
)

log = logging.getLogger(__name__)

# Fewer daily returns than this and a correlation or a value at risk is not measured: it would
# say more about the few days than about the engines.
MIN_RETURNS = 10
VAR_CONFIDENCE = {LimitKind.VAR_95_PCT: 95, LimitKind.VAR_99_PCT: 99}
_QUANTUM = Decimal("0.00000001")
_SNAPSHOTS = AccountSnapshot._meta.db_table


@dataclass(frozen=True)
class Subject:
    """What one state of a portfolio limit measures."""

    name: str  # "fleet", "tag momentum", "alpha" (value at risk of one engine), "alpha & beta"
    engines: tuple[Engine, ...]

    @property
    def engine_ids(self) -> list[int]:
        return sorted(engine.pk for engine in self.engines)


@dataclass(frozen=True)
class Measure:
    subject: Subject
    value: Decimal
    about: str


# (limit id, limit version, UTC day) -> the day's measures of a daily-returns limit
_daily: dict[tuple[int, int, date], list[Measure]] = {}


def forget_cached_measures() -> None:
    _daily.clear()


def members(limit: RiskLimit) -> list[Engine]:
    """The active engines a limit spans: all, a tag's, or (value at risk of one engine) one;
    a correlation limit of one engine pairs it with every other active engine."""
    engines = Engine.objects.filter(is_active=True).order_by("name")
    if limit.scope == Scope.TAG:
        engines = engines.filter(strategy_tags__contains=[limit.scope_value])
    elif limit.scope == Scope.ENGINE and limit.kind != LimitKind.CORRELATION:
        engines = engines.filter(name=limit.scope_value)
    return list(engines)


def subjects(limit: RiskLimit, engines: Sequence[Engine]) -> list[Subject]:
    if limit.kind == LimitKind.CORRELATION:
        pairs = combinations(engines, 2)
        if limit.scope == Scope.ENGINE:
            pairs = (p for p in pairs if limit.scope_value in (p[0].name, p[1].name))
        return [Subject(f"{a.name} & {b.name}", (a, b)) for a, b in pairs]
    if not engines:
        return []
    if limit.scope == Scope.TAG:
        return [Subject(f"tag {limit.scope_value}", tuple(engines))]
    if limit.scope == Scope.ENGINE:
        return [Subject(limit.scope_value, tuple(engines))]
    return [Subject("fleet", tuple(engines))]


# --- the figures -------------------------------------------------------------------------------


def daily_closes(
    engine_ids: Sequence[int], first_day: date, today: date
) -> dict[int, list[tuple[date, Decimal]]]:
    """Each engine's end-of-day equity (its last snapshot of the UTC day) on the days in
    [first_day, today), and its last equity before first_day, dated the day before it (only its
    value matters: the return of first_day is measured from it)."""
    closes: dict[int, list[tuple[date, Decimal]]] = {engine_id: [] for engine_id in engine_ids}
    if not engine_ids:
        return closes
    start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC)
    stop = datetime(today.year, today.month, today.day, tzinfo=UTC)
    sql = f"""
        SELECT e.id, NULL::date, (
            SELECT a.equity FROM {_SNAPSHOTS} a WHERE a.engine_id = e.id AND a.ts < %(start)s
             ORDER BY a.ts DESC, a.seq DESC LIMIT 1)
          FROM unnest(%(ids)s::bigint[]) AS e(id)
        UNION ALL
        SELECT * FROM (
            SELECT DISTINCT ON (a.engine_id, day) a.engine_id,
                   (a.ts AT TIME ZONE 'UTC')::date AS day, a.equity
              FROM {_SNAPSHOTS} a
             WHERE a.engine_id = ANY(%(ids)s::bigint[]) AND a.ts >= %(start)s AND a.ts < %(stop)s
             ORDER BY a.engine_id, day, a.ts DESC, a.seq DESC
        ) AS closes"""
    with connection.cursor() as cursor:
        cursor.execute(sql, {"ids": list(engine_ids), "start": start, "stop": stop})
        rows = cursor.fetchall()
    before = first_day - timedelta(days=1)
    for engine_id, day, equity in rows:
        if equity is not None:
            closes[engine_id].append((day or before, equity))
    return closes


def window_returns(
    closes: dict[int, list[tuple[date, Decimal]]], engine_ids: Iterable[int], first_day: date
) -> dict[date, float]:
    """The combined daily returns of these engines on the days from first_day on."""
    series = {engine_id: closes[engine_id] for engine_id in engine_ids}
    returns = trading_math.combined_daily_returns(series)
    return {day: r for day, r in returns.items() if day >= first_day}


def _daily_measures(limit: RiskLimit, found: list[Subject], today: date) -> list[Measure]:
    window = limit.window_days or DEFAULT_WINDOW_DAYS[limit.kind]  # type: ignore[index]
    first_day = today - timedelta(days=window)
    ids = sorted({engine.pk for subject in found for engine in subject.engines})
    closes = daily_closes(ids, first_day, today)
    measures = []
    for subject in found:
        if limit.kind == LimitKind.CORRELATION:
            a, b = (window_returns(closes, [e.pk], first_day) for e in subject.engines)
            days = sorted(a.keys() & b.keys())
            if len(days) < MIN_RETURNS:
                continue
            rho = trading_math.correlation([a[d] for d in days], [b[d] for d in days])
            if rho is None:
                continue
            value, about = Decimal(repr(rho)), f"correlation over {len(days)} days"
        else:
            returns = list(window_returns(closes, subject.engine_ids, first_day).values())
            if len(returns) < MIN_RETURNS:
                continue
            confidence = VAR_CONFIDENCE[limit.kind]  # type: ignore[index]
            var = trading_math.historical_var_pct(returns, confidence)
            if var is None:
                continue
            value, about = Decimal(repr(var)), f"{confidence} % VaR over {len(returns)} days"
        measures.append(Measure(subject, value, about))
    return measures


def daily_loss(subject: Subject) -> Measure | None:
    """max(0, -Σ day P&L) / Σ session start equity x 100 over the subject's engines that have a
    session start equity (the engine rows, as the gateway keeps them)."""
    counted = [e for e in subject.engines if e.session_start_equity and e.session_start_equity > 0]
    if not counted:
        return None
    base = sum((e.session_start_equity for e in counted), Decimal(0))  # type: ignore[misc]
    pnl = sum((e.day_pnl for e in counted), Decimal(0))
    loss = max(-pnl, Decimal(0))
    return Measure(subject, loss / base * 100, f"day loss {loss:,.2f} of {base:,.2f}")


def drawdown(limit: RiskLimit, subject: Subject, state: PortfolioLimitState) -> Measure | None:
    """(peak - combined equity) / peak x 100, the peak being the highest combined equity of the
    subject's engines over their snapshots. The peak is folded into the state row: each run
    reads only the snapshots after the last one folded, and all of them again when the
    subject's engines change."""
    ids = subject.engine_ids
    resume = state.peak_at is not None and sorted(state.engine_ids) == ids
    since = state.peak_at if resume else None
    with connection.cursor() as cursor:
        start: dict[int, Decimal] = {}
        if since is not None:
            cursor.execute(
                f"""SELECT e.id, (SELECT a.equity FROM {_SNAPSHOTS} a
                                    WHERE a.engine_id = e.id AND a.ts <= %s
                                    ORDER BY a.ts DESC, a.seq DESC LIMIT 1)
                      FROM unnest(%s::bigint[]) AS e(id)""",
                [since, ids],
            )
            start = {
                engine_id: equity for engine_id, equity in cursor.fetchall() if equity is not None
            }
        cursor.execute(
            f"""SELECT ts, engine_id, equity FROM {_SNAPSHOTS}
                 WHERE engine_id = ANY(%s::bigint[]) AND (%s::timestamptz IS NULL OR ts > %s)
                 ORDER BY ts, seq""",
            [ids, since, since],
        )
        points = cursor.fetchall()
    total, peak = trading_math.combined_peak(start, points, state.peak if resume else None)
    last_at = points[-1][0] if points else since
    if peak is not None and last_at is not None and (points or not resume):
        # Not claimed: two runs fold the same snapshots into the same peak.
        PortfolioLimitState.objects.filter(pk=state.pk).update(
            peak=peak.quantize(_QUANTUM), peak_at=last_at, engine_ids=ids
        )
    if total is None or peak is None or peak <= 0:
        return None
    value = (peak - total) / peak * 100
    return Measure(subject, value, f"combined equity {total:,.2f}, peak {peak:,.2f}")


# --- evaluation --------------------------------------------------------------------------------


def evaluate_all(now: datetime | None = None) -> list[RiskEvent]:
    """Measure every enabled portfolio limit and move its states; returns the events raised."""
    now = now or datetime.now(UTC)
    events: list[RiskEvent] = []
    for limit in RiskLimit.objects.filter(enabled=True, kind__in=PORTFOLIO).order_by("pk"):
        try:
            events.extend(evaluate_limit(limit, now))
        except Exception:  # one limit's trouble must not leave the others unmeasured
            log.exception("portfolio limit #%s failed", limit.pk)
    return events


def evaluate_limit(limit: RiskLimit, now: datetime) -> list[RiskEvent]:
    found = subjects(limit, members(limit))
    states = {
        state.subject: state
        for state in PortfolioLimitState.objects.filter(
            limit=limit, subject__in=[s.name for s in found]
        )
    }
    events: list[RiskEvent] = []
    if limit.kind in (LimitKind.CORRELATION, LimitKind.VAR_95_PCT, LimitKind.VAR_99_PCT):
        key = (limit.pk, limit.version, now.astimezone(UTC).date())
        if key not in _daily:
            for old in [k for k in _daily if k[0] == limit.pk]:
                del _daily[old]  # yesterday's, or an older version's
            _daily[key] = _daily_measures(limit, found, key[2])
        measures: Iterable[Measure | None] = _daily[key]
    elif limit.kind == LimitKind.PORTFOLIO_DAILY_LOSS_PCT:
        measures = [daily_loss(subject) for subject in found]
    else:
        measures = [drawdown(limit, s, _state(limit, s, states)) for s in found]
    for measure in measures:
        if measure is not None:
            state = _state(limit, measure.subject, states)
            # The claimed move, its events and its commands stand or fall together: a command
            # that cannot be issued leaves the state where it was, to be tried again next run.
            with transaction.atomic():
                events.extend(_move(limit, state, measure))
    return events


def _state(
    limit: RiskLimit, subject: Subject, states: dict[str, PortfolioLimitState]
) -> PortfolioLimitState:
    state = states.get(subject.name)
    if state is None:
        state, _ = PortfolioLimitState.objects.get_or_create(
            limit=limit, subject=subject.name, defaults={"engine_ids": subject.engine_ids}
        )
        states[subject.name] = state
    return state


def _move(limit: RiskLimit, state: PortfolioLimitState, measure: Measure) -> list[RiskEvent]:
    utilisation = float(measure.value / limit.threshold * 100)
    level, warned, breached_at, moves = transition(
        limit.warning_levels, state.level, state.warned_at_level, state.breached_at, utilisation
    )
    changed = (level, warned) != (state.level, state.warned_at_level)
    if not changed and abs(utilisation - state.utilisation) < 0.5:
        return []
    # Claimed with a conditional update: only the run that moves the state acts on it.
    claimed = PortfolioLimitState.objects.filter(
        pk=state.pk, level=state.level, warned_at_level=state.warned_at_level
    ).update(
        value=measure.value.quantize(_QUANTUM),
        utilisation=utilisation,
        level=level,
        warned_at_level=warned,
        breached_at=breached_at,
    )
    state.level, state.warned_at_level, state.utilisation = level, warned, utilisation
    if claimed != 1 or not changed:
        return []
    return [_raise(limit, state, measure, kind, at, utilisation) for kind, at in moves]


def _raise(
    limit: RiskLimit,
    state: PortfolioLimitState,
    measure: Measure,
    kind: str,
    level: int,
    utilisation: float,
) -> RiskEvent:
    what, subject, value = limit.get_kind_display(), measure.subject, measure.value
    if kind == RiskEvent.Kind.BREACH:
        message = (
            f"{subject.name}: {what} breached ({measure.about}: {value:.2f} against "
            f"{limit.threshold:.2f}); action: {limit.get_action_display()}"
        )
    elif kind == RiskEvent.Kind.WARNING:
        message = (
            f"{subject.name}: {what} at {utilisation:.0f}% of its limit ({measure.about}: "
            f"{value:.2f} of {limit.threshold:.2f})"
        )
    elif level:
        message = (
            f"{subject.name}: {what} back under its limit, still over its {level}% "
            f"warning level ({utilisation:.0f}%)"
        )
    else:
        message = f"{subject.name}: {what} back under its warning levels ({utilisation:.0f}%)"
    commands: list[Any] = []
    if kind == RiskEvent.Kind.BREACH and limit.action != Action.ALERT:
        # Every engine of the subject; _act skips one already HALTED.
        commands = [c for e in subject.engines if (c := _act(limit, e, message)) is not None]
        if commands:
            message += " (issued to " + ", ".join(c.engine.name for c in commands) + ")"
    one_engine = (
        subject.engines[0] if limit.scope == Scope.ENGINE and len(subject.engines) == 1 else None
    )
    event = RiskEvent.objects.create(
        limit=limit,
        engine=one_engine,
        subject=subject.name[:200],
        portfolio_state=state,
        kind=kind,
        level=level,
        threshold=limit.threshold,
        value=value.quantize(_QUANTUM),
        utilisation=utilisation,
        message=message,
        command=commands[0] if len(commands) == 1 else None,
    )
    log.warning("risk: %s", message)
    transaction.on_commit(lambda: announce(risk_events.limit_event_raised, event_id=event.pk))
    return event
