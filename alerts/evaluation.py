"""Alert rules evaluated per engine: pending -> firing -> resolved, once, without storms.

Called by Celery: when an engine's data arrives (debounced per engine, alerts.hooks) and by a
beat sweep every few seconds for time-based rules, repeats and escalations. Every transition is a
conditional update on the alert row, and an alert that would duplicate an open one is refused by
the database, so any number of runs, concurrent or repeated, notify once per event.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q

from alerts import events as alert_events
from alerts.models import Alert, AlertRule, Comparator, Notification, RuleAction, Silence
from alerts.notify import notification_enqueue
from alerts.rule_metrics import (
    ENGINE_DOWN_METRIC,
    EVENT_METRICS,
    METRICS,
    ORPHANED_METRIC,
    STAGE_VIOLATION_METRIC,
)
from controlplane.commands import issuing
from controlplane.events import announce
from controlplane.models import CommandKind, Engine, TradingState

log = logging.getLogger(__name__)

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    Comparator.GT: operator.gt,
    Comparator.GTE: operator.ge,
    Comparator.LT: operator.lt,
    Comparator.LTE: operator.le,
}


def breaching(rule: AlertRule, value: float) -> bool:
    return _COMPARE[rule.comparator](value, rule.threshold)


def cleared(rule: AlertRule, value: float) -> bool:
    """Back on the safe side by at least the hysteresis: a value near the threshold won't flap."""
    if rule.comparator in (Comparator.GT, Comparator.GTE):
        return value < rule.threshold - rule.hysteresis or (
            rule.hysteresis == 0 and not breaching(rule, value)
        )
    return value > rule.threshold + rule.hysteresis or (
        rule.hysteresis == 0 and not breaching(rule, value)
    )


def applies_to(rule: AlertRule, engine: Engine) -> bool:
    if rule.scope == "engine":
        return rule.scope_value == engine.name
    if rule.scope == "tag":
        return rule.scope_value in (engine.strategy_tags or [])
    return True


def silenced(alert: Alert, engine: Engine | None, now: datetime) -> bool:
    silences = Silence.objects.filter(ends_at__gt=now, starts_at__lte=now)
    silences = silences.filter(Q(rule__isnull=True) | Q(rule_id=alert.rule_id))
    if engine is None:
        return silences.filter(engine__isnull=True, tag="").exists()
    silences = silences.filter(Q(engine__isnull=True) | Q(engine=engine))
    tags = list(engine.strategy_tags or [])
    return silences.filter(Q(tag="") | Q(tag__in=tags)).exists()


def engine_down(engine: Engine | None, rule: AlertRule | None) -> bool:
    """An engine-down alert firing for this engine suppresses its other alerts' notifications."""
    # Engine down itself, and the orphaned positions that come with an engine down, are told; so
    # is a refused live hello, which leaves the engine down by design.
    if engine is None or (
        rule is not None
        and rule.metric in (ENGINE_DOWN_METRIC, ORPHANED_METRIC, STAGE_VIOLATION_METRIC)
    ):
        return False
    return Alert.objects.filter(
        engine=engine, state=Alert.State.FIRING, rule__metric=ENGINE_DOWN_METRIC
    ).exists()


def _notify(
    alert: Alert, event: str, *, sequence: int = 0, channels: Iterable | None = None, now: datetime
) -> bool:
    """Enqueue the notifications of an event, unless silenced or suppressed; say whether sent."""
    if silenced(alert, alert.engine, now) or engine_down(alert.engine, alert.rule):
        return False
    notification_enqueue(alert=alert, event=event, channels=channels, sequence=sequence)
    return True


def _rules() -> list[AlertRule]:
    rules = AlertRule.objects.filter(enabled=True).exclude(metric__in=EVENT_METRICS)
    # Engine down first: when it fires, the engine's other alerts of this round stay quiet.
    return sorted(rules, key=lambda r: (r.metric != ENGINE_DOWN_METRIC, r.name))


def evaluate_engine(engine_id: int, *, now: datetime | None = None) -> list[Alert]:
    """Evaluate every enabled rule for one engine; returns the alerts that changed state."""
    now = now or datetime.now(UTC)
    engine = Engine.objects.filter(pk=engine_id, is_active=True).first()
    if engine is None:
        return []
    changed = []
    for rule in _rules():
        if not applies_to(rule, engine) or rule.metric not in METRICS:
            continue
        value = METRICS[rule.metric].measure(engine, now)
        if value is None:
            continue
        alert = step(rule, engine, value, now=now)
        if alert is not None:
            changed.append(alert)
    return changed


def step(rule: AlertRule, engine: Engine, value: float, *, now: datetime) -> Alert | None:
    """Move the rule's alert for this engine one step for ``value``; returns it if it moved."""
    alert = Alert.objects.filter(rule=rule, engine=engine, state__in=Alert.OPEN).first()
    if alert is None:
        if not breaching(rule, value):
            return None
        try:
            with transaction.atomic():
                alert = Alert.objects.create(
                    rule=rule,
                    engine=engine,
                    state=Alert.State.PENDING,
                    severity=rule.severity,
                    summary=summary(rule, engine, value, now=now),
                    value=value,
                    started_at=now,
                )
        except IntegrityError:
            return None  # another worker opened it first
        if rule.pending_s == 0:
            return fire(alert, now=now)
        return alert
    if alert.state == Alert.State.PENDING:
        if not breaching(rule, value):
            _close(alert, now)  # never fired: nobody was told, nobody needs telling
            return alert
        if (now - alert.started_at).total_seconds() >= rule.pending_s:
            return fire(alert, now=now)
        Alert.objects.filter(pk=alert.pk).update(value=value)
        return None
    # Firing.
    if cleared(rule, value):
        return resolve(alert, now=now, value=value)
    Alert.objects.filter(pk=alert.pk).update(
        value=value, summary=summary(rule, engine, value, now=now)
    )
    return None


def summary(
    rule: AlertRule, engine: Engine | None, value: float, *, now: datetime | None = None
) -> str:
    metric = METRICS.get(rule.metric)
    unit = f" {metric.unit}" if metric and metric.unit not in ("count", "") else ""
    where = engine.name if engine else "fleet"
    text = (
        f"{where}: {rule.name}: {rule.metric} {value:.4g}{unit} "
        f"{rule.get_comparator_display()} {rule.threshold:g}{unit}"
    )
    # The figures behind the value (which id was reused, which positions are orphaned) say what
    # the comparison alone cannot.
    detail = (
        metric.detail(engine, now or datetime.now(UTC))
        if metric and metric.detail and engine
        else None
    )
    return (f"{text}: {detail}" if detail else text)[:300]


def fire(alert: Alert, *, now: datetime) -> Alert | None:
    claimed = Alert.objects.filter(pk=alert.pk, state=Alert.State.PENDING).update(
        state=Alert.State.FIRING, fired_at=now
    )
    if claimed != 1:
        return None
    alert.refresh_from_db()
    if _notify(alert, Notification.Event.FIRING, now=now):
        Alert.objects.filter(pk=alert.pk).update(last_notified_at=now, notifications_sent=1)
    _act(alert)
    _publish(alert)
    return alert


def resolve(alert: Alert, *, now: datetime, value: float | None = None) -> Alert | None:
    claimed = Alert.objects.filter(pk=alert.pk, state=Alert.State.FIRING).update(
        state=Alert.State.RESOLVED,
        resolved_at=now,
        value=value if value is not None else alert.value,
    )
    if claimed != 1:
        return None
    alert.refresh_from_db()
    # A resolved notice only follows a firing one that was sent.
    if alert.notifications_sent:
        _notify(alert, Notification.Event.RESOLVED, now=now)
    _publish(alert)
    return alert


def close(alert: Alert, *, now: datetime, value: float | None = None) -> Alert | None:
    """End an open alert whatever its state: resolve a firing one (with its resolved notice),
    close a pending one (nobody was told). Returns it if this call ended it."""
    if alert.state == Alert.State.PENDING:
        closed = Alert.objects.filter(pk=alert.pk, state=Alert.State.PENDING).update(
            state=Alert.State.RESOLVED, resolved_at=now
        )
        if closed:
            alert.refresh_from_db()
            _publish(alert)
            return alert
        alert.refresh_from_db()  # it fired meanwhile: resolve it below
    return resolve(alert, now=now, value=value)


def _close(alert: Alert, now: datetime) -> None:
    Alert.objects.filter(pk=alert.pk, state=Alert.State.PENDING).update(
        state=Alert.State.RESOLVED, resolved_at=now
    )


def _act(alert: Alert) -> None:
    rule, engine = alert.rule, alert.engine
    if rule is None or engine is None or rule.action == RuleAction.NOTIFY:
        return
    if engine.desired_state == TradingState.HALTED:
        return
    kind = CommandKind.KILL if rule.action == RuleAction.KILL else CommandKind.PAUSE
    params = {"flatten": True} if kind == CommandKind.KILL else {"cancel_open": True}
    issuing.command_issue(
        kind=kind,
        selector=f"engine:{engine.name}",
        reason=alert.summary,
        params=params,
        actor=None,
        actor_label=f"alert rule {rule.name}",
    )


def repeat_and_escalate(*, now: datetime | None = None) -> int:
    """For firing, unacknowledged alerts: repeat at the rule's interval, escalate once."""
    now = now or datetime.now(UTC)
    moved = 0
    firing = Alert.objects.filter(
        state=Alert.State.FIRING, acknowledged_at__isnull=True, rule__isnull=False
    ).select_related("rule", "engine")
    for alert in firing:
        rule = alert.rule
        assert rule is not None
        due = alert.last_notified_at or alert.fired_at or alert.started_at
        if rule.repeat_interval_s and now - due >= timedelta(seconds=rule.repeat_interval_s):
            sent = alert.notifications_sent
            claimed = Alert.objects.filter(
                pk=alert.pk, last_notified_at=alert.last_notified_at, notifications_sent=sent
            ).update(last_notified_at=now, notifications_sent=sent + 1)
            if claimed == 1:
                _notify(
                    alert, Notification.Event.REPEAT, sequence=alert.notifications_sent, now=now
                )
                moved += 1
        fired = alert.fired_at or alert.started_at
        if (
            rule.escalate_after_s is not None
            and alert.escalated_at is None
            and now - fired >= timedelta(seconds=rule.escalate_after_s)
        ):
            claimed = Alert.objects.filter(pk=alert.pk, escalated_at__isnull=True).update(
                escalated_at=now
            )
            if claimed == 1:
                _notify(
                    alert,
                    Notification.Event.ESCALATION,
                    channels=list(rule.escalation_channels.all()),
                    now=now,
                )
                moved += 1
    return moved


def _publish(alert: Alert) -> None:
    """Tell whoever shows alerts (the browsers' toast and badge), after the commit."""
    alert_id = alert.pk
    transaction.on_commit(lambda: announce(alert_events.alert_changed, alert_id=alert_id))
