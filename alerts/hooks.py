"""Where the alerts side hears of the rest of the control plane: stored batches, risk events."""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q

from alerts import evaluation
from alerts.models import Alert, AlertRule, Notification, Severity
from alerts.rule_metrics import (
    CAPABILITY_METRIC,
    RISK_LIMIT_METRIC,
    STAGE_VIOLATION_METRIC,
    STATEMENT_METRIC,
)
from alerts.selectors import risk_limit_channel_count
from alerts.tasks import evaluate_engines_task
from controlplane.models import BrokerStatement, Engine
from risk.models import RiskEvent

log = logging.getLogger(__name__)

DEBOUNCE_S = 0.2
# A tick's engines are spread over at most this many tasks: as many as a worker runs at once
# (``--concurrency 8``), so a fleet is still evaluated in parallel, for a few broker messages where
# there were a hundred (each costs the web process about a millisecond of Python in kombu) ...
MAX_TASKS_PER_BURST = 8
# ... and a task carries at least this many engines when there are that many.
MIN_ENGINES_PER_TASK = 4


class _Debouncer:
    """Schedules one evaluation per engine at most every DEBOUNCE_S.

    Evaluations are queued on ticks at least DEBOUNCE_S apart, each for every engine with new
    data since the last: after a quiet spell the first batch is evaluated at once, and a busy
    fleet's engines share a few tasks per tick instead of each sending its own at its own moment
    (a broker message costs the web process about as much as storing a small batch). A thread of
    its own talks to the broker, so the ingest path (which acks engines) never waits on Redis,
    even when Redis is slow or away; the beat sweep catches up on anything lost.
    """

    def __init__(self) -> None:
        self._dirty: set[int] = set()
        self._last_tick = -DEBOUNCE_S
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, engine_id: int) -> None:
        with self._lock:
            self._dirty.add(engine_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="alerts-debounce", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def _due(self, now: float) -> tuple[list[int], float | None]:
        """The engines to evaluate now, and how long until the next tick (None: nothing waits)."""
        with self._lock:
            if not self._dirty:
                return [], None
            wait = self._last_tick + DEBOUNCE_S - now
            if wait > 0:
                return [], wait
            ready, self._dirty = sorted(self._dirty), set()
            self._last_tick = now
        return ready, None

    def _run(self) -> None:
        while True:
            ready, wait = self._due(time.monotonic())
            parts = min(MAX_TASKS_PER_BURST, math.ceil(len(ready) / MIN_ENGINES_PER_TASK))
            for chunk in spread(ready, parts):
                try:
                    evaluate_engines_task.apply_async(args=[chunk], expires=30, retry=False)
                except Exception:
                    log.warning("engines %s: alert evaluation not scheduled", chunk, exc_info=True)
            # Wake for new data, or when a gathered engine's window ends.
            self._wake.wait(timeout=wait)
            self._wake.clear()


def spread(items: list[int], parts: int) -> list[list[int]]:
    """``items`` in at most ``parts`` lists of nearly equal length, none empty."""
    count = min(parts, len(items))
    return [items[i::count] for i in range(count)]


_debouncer = _Debouncer()


def on_batch_stored(
    sender: Any, *, engine_id: int, result: Any, refused: int, **kwargs: Any
) -> None:
    """controlplane.events.batch_stored: a refused event raises an alert (the refused_events
    metric), and one refused for a reused id leaves the engine log line its rule counts: both are
    evaluated now, not only at the next sweep."""
    if result.stored or refused or any(e.code == "duplicate_id" for e in result.errors):
        engine_data(engine_id)


def on_limit_event_raised(sender: Any, *, event_id: int, **kwargs: Any) -> None:
    """risk.events.limit_event_raised."""
    risk_event(event_id)


def engine_data(engine_id: int) -> None:
    """An engine's batch was stored: evaluate its rules soon, once per DEBOUNCE_S at most."""
    if settings.ALERTS_ENABLED:
        _debouncer.add(engine_id)


def risk_event(event_id: int) -> None:
    """A risk limit's warning or breach is an alert (through the risk-limit rule's channels);
    its clearing resolves it."""
    event = RiskEvent.objects.select_related("engine", "limit").filter(pk=event_id).first()
    if event is None:
        return
    rule = AlertRule.objects.filter(metric=RISK_LIMIT_METRIC, enabled=True).first()
    source = f"limit#{event.limit_id}"
    if event.portfolio_state_id is not None:
        # A portfolio limit has one open alert per subject (the fleet, a tag, a pair).
        source = f"{source}/p{event.portfolio_state_id}"
    now = datetime.now(UTC)
    open_alert = Alert.objects.filter(
        source=source, engine=event.engine, rule=rule, state__in=Alert.OPEN
    ).first()
    if event.kind == RiskEvent.Kind.CLEARED:
        if open_alert is None:
            return
        if event.level:
            # Back under the limit but still over a warning level: the alert stays open, as the
            # warning it now is; it resolves when the value leaves the last warning level.
            Alert.objects.filter(pk=open_alert.pk, state__in=Alert.OPEN).update(
                severity=Severity.WARNING, summary=event.message[:300], value=event.utilisation
            )
            evaluation._publish(open_alert)
            return
        Alert.objects.filter(pk=open_alert.pk).update(summary=event.message[:300])
        evaluation.close(open_alert, now=now, value=event.utilisation)
        return
    severity = Severity.CRITICAL if event.kind == RiskEvent.Kind.BREACH else Severity.WARNING
    if open_alert is not None:
        # Escalating from a warning to a breach is news: tell again under the new severity.
        Alert.objects.filter(pk=open_alert.pk).update(
            severity=severity, summary=event.message[:300], value=event.utilisation
        )
        open_alert.refresh_from_db()
        if evaluation._notify(open_alert, Notification.Event.FIRING, sequence=event.pk, now=now):
            Alert.objects.filter(pk=open_alert.pk).update(last_notified_at=now)
        evaluation._publish(open_alert)
        return
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                source=source,
                engine=event.engine,
                state=Alert.State.PENDING,
                severity=severity,
                summary=event.message[:300],
                value=event.utilisation,
            )
    except IntegrityError:
        return
    evaluation.fire(alert, now=now)


def on_stage_violated(sender: Any, *, engine_id: int, stage: str, mode: str, **kwargs: Any) -> None:
    """controlplane.events.stage_violated."""
    stage_violation(engine_id, stage=stage, mode=mode)


def stage_violation(engine_id: int, *, stage: str, mode: str) -> Alert | None:
    """An engine said hello in a mode its stage forbids: a critical alert through the
    stage-violation rule's channels. One open alert per engine: a second refusal while it is
    open adds nothing (the engine is HALTED already)."""
    rule = AlertRule.objects.filter(metric=STAGE_VIOLATION_METRIC, enabled=True).first()
    engine = Engine.objects.filter(pk=engine_id).first()
    if engine is None:
        return None
    source = "stage"
    if Alert.objects.filter(source=source, engine=engine, rule=rule, state__in=Alert.OPEN).exists():
        return None
    summary = (
        f"{engine.name} said hello in {mode} mode at stage {stage}: refused and HALTED "
        "(docs/going-live.md)"
    )
    return _fire(rule, source=source, engine=engine, summary=summary, now=None)


def on_capability_missing(sender: Any, *, engine_id: int, what: str, **kwargs: Any) -> None:
    """controlplane.events.capability_missing."""
    capability_missing(engine_id, what=what)


def capability_missing(engine_id: int, *, what: str) -> Alert | None:
    """An engine was asked what it said it cannot enforce (``what``): an alert through the
    capability rule's channels, at its severity; none while the same one is open for the engine
    (an engine that says hello again with the same capabilities adds nothing)."""
    rule = AlertRule.objects.filter(metric=CAPABILITY_METRIC, enabled=True).first()
    if rule is None:
        return None
    engine = Engine.objects.filter(pk=engine_id).first()
    if engine is None:
        return None
    summary = f"{engine.name} was asked {what}: it said in its hello it cannot enforce it"
    source = f"capability:{what}"[:64]
    if Alert.objects.filter(source=source, engine=engine, rule=rule, state__in=Alert.OPEN).exists():
        return None
    return _fire(
        rule, source=source, engine=engine, summary=summary, now=None, severity=rule.severity
    )


def _fire(
    rule: AlertRule | None,
    *,
    source: str,
    engine: Engine,
    summary: str,
    now: datetime | None,
    value: float | None = None,
    severity: str = Severity.CRITICAL,
) -> Alert | None:
    """Raise an alert of what happened (not measured by a rule's sweep), critical unless said
    otherwise, and tell it through ``rule``'s channels; None if another process raised the same
    one meanwhile."""
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                source=source,
                engine=engine,
                state=Alert.State.PENDING,
                severity=severity,
                summary=summary[:300],
                value=value,
            )
    except IntegrityError:
        return None
    return evaluation.fire(alert, now=now or datetime.now(UTC))


def on_statement_reconciled(sender: Any, *, statement_id: int, **kwargs: Any) -> None:
    """controlplane.events.statement_reconciled."""
    statement_reconciled(statement_id)


def statement_reconciled(statement_id: int) -> Alert | None:
    """A broker statement was reconciled. Differences raise a critical alert, one per engine and
    statement day; a later statement of that day with none resolves it."""
    statement = BrokerStatement.objects.select_related("engine").filter(pk=statement_id).first()
    if statement is None:
        return None
    engine = statement.engine
    source = f"statement:{statement.statement_date.isoformat()}"
    now = datetime.now(UTC)
    open_alerts = Alert.objects.filter(source=source, engine=engine, state__in=Alert.OPEN)
    if statement.matched:
        for alert in open_alerts.select_related("rule", "engine"):
            Alert.objects.filter(pk=alert.pk).update(
                summary=(
                    f"{engine.name}: the statement of {statement.statement_date} now matches "
                    "the ledger"
                )[:300]
            )
            alert.refresh_from_db()
            evaluation.close(alert, now=now)
        return None
    rule = AlertRule.objects.filter(metric=STATEMENT_METRIC, enabled=True).first()
    summary = (
        f"{engine.name}: the broker statement of {statement.statement_date} differs from the "
        f"ledger in {statement.differences_count} "
        f"{'place' if statement.differences_count == 1 else 'places'} (docs/broker-statements.md)"
    )
    current = open_alerts.first()
    if current is not None:
        Alert.objects.filter(pk=current.pk).update(
            summary=summary[:300], value=statement.differences_count
        )
        return None
    return _fire(
        rule,
        source=source,
        engine=engine,
        summary=summary,
        now=now,
        value=statement.differences_count,
    )


def on_limit_disabled(sender: Any, *, limit_id: int, actor_label: str, **kwargs: Any) -> int:
    return limit_disabled(limit_id, why=f"limit #{limit_id} disabled by {actor_label}")


def on_limit_channels(sender: Any, **kwargs: Any) -> int:
    return risk_limit_channel_count()


def limit_disabled(limit_id: int, *, why: str) -> int:
    """A risk limit was switched off: its open alerts are over. Returns how many were closed."""
    sources = Q(source=f"limit#{limit_id}") | Q(source__startswith=f"limit#{limit_id}/")
    return _close_all(Alert.objects.filter(sources, state__in=Alert.OPEN), why)


def rule_disabled(rule_id: int, *, why: str) -> int:
    """An alert rule was switched off: its open alerts are over (the risk-limit rule's too)."""
    return _close_all(Alert.objects.filter(rule_id=rule_id, state__in=Alert.OPEN), why)


def _close_all(alerts: Any, why: str) -> int:
    now = datetime.now(UTC)
    closed = 0
    for alert in alerts.select_related("rule", "engine"):
        # Said in the alert itself, and so in its resolved notice: nothing got better by itself.
        summary = f"{alert.summary[: 296 - len(why)]} ({why})"
        Alert.objects.filter(pk=alert.pk).update(summary=summary)
        alert.summary = summary
        closed += evaluation.close(alert, now=now) is not None
    return closed


def event_alert(
    *, metric: str, source: str, engine: Engine, summary: str, value: float
) -> Alert | None:
    """Raise an alert of what happened, through the enabled rule of ``metric`` (its severity and
    channels), one open per engine and ``source``: while one is open it is brought up to date
    instead. Returns the alert raised, None if one was open already."""
    rule = AlertRule.objects.filter(metric=metric, enabled=True).first()
    if rule is None:
        return None
    open_alert = Alert.objects.filter(source=source, engine=engine, state__in=Alert.OPEN).first()
    if open_alert is not None:
        Alert.objects.filter(pk=open_alert.pk).update(summary=summary[:300], value=value)
        return None
    return _fire(
        rule,
        source=source,
        engine=engine,
        summary=summary,
        now=None,
        value=value,
        severity=rule.severity,
    )


def event_alert_over(*, source: str, engine: Engine, why: str) -> int:
    """What ``source`` raised for ``engine`` is over: its open alerts resolve, saying why."""
    return _close_all(Alert.objects.filter(source=source, engine=engine, state__in=Alert.OPEN), why)
