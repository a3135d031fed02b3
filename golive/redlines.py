"""Red lines that stop a strategy (docs/going-live.md, "Red lines"): measured for every active
engine at a watched stage (shadow, small capital, full production) each minute, and after the
nightly divergence log.

Each figure is read from the engine's own recorded data over its current stage's period (a stage
begins a new record: a demoted and re-promoted engine is not judged on what it did before). On a
crossing the rule's action is taken once: the engine is paused (working orders cancelled) and
demoted through the same audited stage change as a promotion, or only paused, or killed; the
event is kept with the figures that crossed, and an alert fires through the rule "Red lines".

Once per crossing: the move of the engine's RedLineState to crossed is a conditional update, so
of two evaluations at once (two workers, the minute task and the nightly one) only one acts; the
state goes back to not crossed when the figure is within again, or when a new stage period
begins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from alerts import hooks
from alerts.models import Alert
from alerts.rule_metrics import RED_LINE_METRIC
from controlplane.commands import issuing
from controlplane.models import (
    AccountSnapshot,
    CommandKind,
    Engine,
    EngineLog,
    Stage,
    StageChange,
    TradingState,
)
from controlplane.stages import stage_set
from golive import gates, redline_specs
from golive.models import DivergenceDay, RedLine, RedLineEvent, RedLineState
from golive.redline_specs import CRITICAL_ERRORS, DIVERGENCE, MAX_DRAWDOWN, SHARPE

log = logging.getLogger(__name__)

# The source of a red line's alert (alerts.Alert.source): one per rule and engine.
SOURCE = "red_line"


@dataclass(frozen=True)
class Figure:
    """A red line's figure for one engine: None when it cannot be known yet (no equity, too few
    days); ``window`` says over what it was measured, ``data`` what it was computed from."""

    value: float | None
    window: str
    data: dict[str, Any] = field(default_factory=dict)


def trading_days_back(today: date, count: int) -> date:
    """The first of the ``count`` weekdays (Monday to Friday) ending with ``today`` (or with the
    last weekday before it, on a weekend)."""
    day = today
    while day.weekday() >= 5:
        day -= timedelta(days=1)
    seen = 1
    while seen < count:
        day -= timedelta(days=1)
        if day.weekday() < 5:
            seen += 1
    return day


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _words(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


_DRAWDOWN_SQL = f"""
    SELECT ts, equity, peak, (peak - equity) / peak * 100 AS drawdown
    FROM (
        SELECT ts, seq, equity, max(equity) OVER (ORDER BY ts, seq) AS peak
        FROM {AccountSnapshot._meta.db_table}
        WHERE engine_id = %s AND ts >= %s AND ts <= %s
    ) AS curve
    WHERE peak > 0
    ORDER BY drawdown DESC, ts
    LIMIT 1
"""


def max_drawdown(engine: Engine, rule: RedLine, start: datetime, now: datetime) -> Figure:
    """The largest fall of the equity the engine reported (every account snapshot) from its
    running peak since the stage began, in % of that peak."""
    window = f"since the stage began ({_words(start)})"
    with connection.cursor() as cursor:
        cursor.execute(_DRAWDOWN_SQL, [engine.pk, start, now])
        row = cursor.fetchone()
    if row is None:
        return Figure(None, window)
    ts, equity, peak, drawdown = row
    data = {"peak": str(peak), "trough": str(equity), "trough_at": _stamp(ts)}
    return Figure(float(drawdown), window, data)


def sharpe(engine: Engine, rule: RedLine, start: datetime, now: datetime) -> Figure:
    """The Sharpe ratio of the engine's daily returns over the last ``window`` trading days
    (the last weekdays, today's so far included): each day's last equity against the day
    before's (the first against the last equity before the window), mean over sample standard
    deviation times sqrt(252). Known once the whole window lies in the current stage."""
    days = rule.window or 20
    first = trading_days_back(now.astimezone(UTC).date(), days)
    begins = datetime.combine(first, time(0), tzinfo=UTC)
    window = f"{days} trading days from {first.isoformat()}"
    if begins < start:
        return Figure(None, window, {"stage_began": _stamp(start)})
    measured = gates.measure(engine.pk, begins, now)
    data = {
        "opening_equity": str(measured.opening_equity)
        if measured.opening_equity is not None
        else None,
        "closes": [[day.isoformat(), str(close)] for day, close in measured.closes],
    }
    return Figure(measured.sharpe, window, data)


def divergence(engine: Engine, rule: RedLine, start: datetime, now: datetime) -> Figure:
    """Trading days in a row, ending with the engine's latest day of its divergence log in the
    current stage, whose return is more than DIVERGENCE_LOG_ALERT_PCT apart from the baseline's.
    Days follow each other when no weekday lies between them."""
    threshold = settings.DIVERGENCE_LOG_ALERT_PCT
    needed = int(rule.threshold)
    rows = list(
        DivergenceDay.objects.filter(engine=engine, stage=engine.stage, day__gte=start.date())
        .order_by("-day")
        .values_list("day", "divergence_pct")[: needed + 1]
    )
    window = f"the divergence log in the stage, beyond {threshold:g} %"
    if not rows:
        return Figure(None, window)
    run: list[list[Any]] = []
    previous: date | None = None
    for day, pct in rows:
        if previous is not None and trading_days_back(previous - timedelta(days=1), 1) != day:
            break
        if pct is None or pct <= threshold:
            break
        run.append([day.isoformat(), pct])
        previous = day
    return Figure(float(len(run)), window, {"days": run, "threshold_pct": threshold})


def critical_errors(engine: Engine, rule: RedLine, start: datetime, now: datetime) -> Figure:
    """Logs the engine sent at level critical in the last ``window`` hours (no earlier than the
    stage's start)."""
    hours = rule.window or 24
    begins = max(now - timedelta(hours=hours), start)
    logs = list(
        EngineLog.objects.filter(engine=engine, level="critical", ts__gte=begins, ts__lte=now)
        .order_by("-ts")
        .values_list("ts", "message")[:20]
    )
    count = EngineLog.objects.filter(
        engine=engine, level="critical", ts__gte=begins, ts__lte=now
    ).count()
    window = f"{hours} h from {_words(begins)}"
    data = {"latest": [[_stamp(ts), message[:200]] for ts, message in logs]}
    return Figure(float(count), window, data)


MEASURES = {
    MAX_DRAWDOWN: max_drawdown,
    SHARPE: sharpe,
    DIVERGENCE: divergence,
    CRITICAL_ERRORS: critical_errors,
}


def stage_starts(engines: list[Engine]) -> dict[int, datetime]:
    """When each engine entered its current stage (its recorded history; else its creation)."""
    history = gates.recorded_stage_history([e.pk for e in engines])
    starts = {}
    for engine in engines:
        entries = [at for stage, at in history.get(engine.pk, []) if stage == engine.stage]
        starts[engine.pk] = entries[-1] if entries else engine.created_at
    return starts


def watched_engine_ids() -> list[int]:
    """The active engines at a stage the red lines watch."""
    watched = Engine.objects.filter(is_active=True, stage__in=redline_specs.WATCHED_STAGES)
    return list(watched.order_by("pk").values_list("pk", flat=True))


def evaluate(
    now: datetime | None = None,
    *,
    kinds: tuple[str, ...] | None = None,
    engine_ids: list[int] | None = None,
) -> list[RedLineEvent]:
    """Measure every enabled red line (or those of ``kinds``) for every active engine at a
    watched stage (or those of ``engine_ids``); act on each new crossing. Returns the events."""
    now = now or timezone.now()
    rules = list(RedLine.objects.filter(enabled=True))
    if kinds is not None:
        rules = [r for r in rules if r.kind in kinds]
    engines = Engine.objects.filter(is_active=True, stage__in=redline_specs.WATCHED_STAGES)
    if engine_ids is not None:
        engines = engines.filter(pk__in=engine_ids)
    engines_list = list(engines.order_by("pk"))
    if not rules or not engines_list:
        return []
    starts = stage_starts(engines_list)
    events = []
    for engine in engines_list:
        for rule in rules:
            event = _judge(rule, engine, starts[engine.pk], now)
            if event is not None:
                events.append(event)
                break  # the engine has been acted on: its other red lines wait for its new stage
    return events


def _judge(rule: RedLine, engine: Engine, start: datetime, now: datetime) -> RedLineEvent | None:
    spec = rule.spec
    if spec is None:
        return None
    figure = MEASURES[rule.kind](engine, rule, start, now)
    crossed = figure.value is not None and spec.crossed(figure.value, rule.threshold)
    state, _ = RedLineState.objects.get_or_create(red_line=rule, engine=engine)
    already = state.crossed and state.period_start == start
    if not crossed:
        if state.crossed:
            RedLineState.objects.filter(pk=state.pk).update(
                crossed=False, value=figure.value, evaluated_at=now
            )
        return None
    if already:
        return None
    with transaction.atomic():
        # Claimed with a conditional update: only the evaluation that moves the state acts.
        claimed = RedLineState.objects.filter(
            pk=state.pk, crossed=state.crossed, period_start=state.period_start
        ).update(crossed=True, period_start=start, value=figure.value, evaluated_at=now)
        if claimed != 1:
            return None
        return _act(rule, engine, figure, start)


def _act(rule: RedLine, engine: Engine, figure: Figure, start: datetime) -> RedLineEvent:
    assert figure.value is not None
    from_stage = engine.stage
    action = rule.action
    target = rule.demote_to
    if action == redline_specs.DEMOTE and (
        redline_specs.ORDER.index(target) >= redline_specs.ORDER.index(from_stage)
    ):
        action = redline_specs.PAUSE  # nowhere below to go: the pause holds it
    threshold_text = rule.threshold_text
    stage_label = Stage(from_stage).label.lower()
    did = {
        redline_specs.DEMOTE: f"paused and demoted to {Stage(target).label.lower()}",
        redline_specs.PAUSE: "paused",
        redline_specs.KILL: "killed",
    }[action]
    message = (
        f"{engine.name} crossed the red line “{rule.label}”: {figure.value:.4g} "
        f"({threshold_text}; {figure.window}) at stage {stage_label}: {did}"
    )
    actor_label = f"red line #{rule.pk} {rule.kind}"
    command_id = _command(engine, action, message, actor_label)
    change: StageChange | None = None
    if action == redline_specs.DEMOTE:
        change = stage_set(
            engine=engine, to_stage=target, reason=message, actor=None, actor_label=actor_label
        )
    source = f"{SOURCE}:{rule.pk}"
    alert = hooks.event_alert(
        metric=RED_LINE_METRIC, source=source, engine=engine, summary=message, value=figure.value
    )
    if alert is None:
        # One open per red line and engine: an earlier crossing's, still open, was brought up to
        # date with this one.
        alert = Alert.objects.filter(source=source, engine=engine, state__in=Alert.OPEN).first()
    event = RedLineEvent.objects.create(
        red_line=rule,
        kind=rule.kind,
        label=rule.label,
        engine=engine,
        stage=from_stage,
        action=action,
        to_stage=target if action == redline_specs.DEMOTE else "",
        value=figure.value,
        threshold=rule.threshold,
        threshold_text=threshold_text,
        window=rule.window,
        period_start=start,
        figures={"window": figure.window, "data": figure.data},
        message=message,
        command_id=command_id,
        stage_change=change,
        alert_id=alert.pk if alert is not None else None,
    )
    log.warning("red line: %s", message)
    return event


def _command(engine: Engine, action: str, message: str, actor_label: str) -> Any:
    # Read now: a kill is latched, and nothing a red line does may loosen or repeat it.
    engine.refresh_from_db(fields=["desired_state"])
    if engine.desired_state == TradingState.HALTED:
        return None
    kind, params = (
        (CommandKind.KILL, {"flatten": True})
        if action == redline_specs.KILL
        else (CommandKind.PAUSE, {"cancel_open": True})
    )
    batch = issuing.command_issue(
        kind=kind,
        selector=f"engine:{engine.name}",
        reason=message,
        params=params,
        actor=None,
        actor_label=actor_label,
    )
    return batch.commands.get().pk


def events_of(engine: Engine, limit: int = 50) -> list[RedLineEvent]:
    rows = RedLineEvent.objects.filter(engine=engine).select_related("engine")
    return list(rows.order_by("-at", "-pk")[:limit])
