"""Celery tasks of the alerts app: rule evaluation and notification delivery. Each takes ids and
calls a service; their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from alerts import evaluation, notify
from alerts.rule_metrics import METRICS
from controlplane.models import Engine

# --- Rule evaluation -----------------------------------------------------------------------------


# A sweep's per-engine task that waited longer than this in the queue is dropped: the next sweep
# (every 5 s) queues a fresh one, so a worker that fell behind does not work through a backlog.
SWEEP_ENGINE_EXPIRES_S = 5


@shared_task(name="alerts.evaluate_engine", ignore_result=True)
def evaluate_engine_task(engine_id: int) -> int:
    """One engine's rules, as the sweep queues them: one task per engine, so that one engine's
    failure or slowness holds no other up. Run twice, it moves no alert twice (the rules'
    states). An engine deleted or deactivated meanwhile is skipped."""
    return len(evaluation.evaluate_engine(engine_id))


@shared_task(name="alerts.evaluate_engines", ignore_result=True)
def evaluate_engines_task(engine_ids: list[int]) -> int:
    """Several engines in one task: the web process queues a burst of engines (a fleet kill's
    hundred results) as a few tasks instead of a hundred broker messages."""
    return sum(len(evaluation.evaluate_engine(engine_id)) for engine_id in engine_ids)


@shared_task(name="alerts.sweep", ignore_result=True)
def sweep() -> int:
    """Every few seconds: rules that time alone can trip (an engine gone quiet), one task per
    active engine, then repeats and escalations of firing alerts. Returns how many engines were
    queued plus how many alerts the repeats and escalations moved."""
    time_based = any(
        METRICS[m].time_based
        for m in evaluation.AlertRule.objects.filter(enabled=True).values_list("metric", flat=True)
        if m in METRICS
    )
    queued = 0
    if time_based:
        for engine_id in Engine.objects.filter(is_active=True).values_list("pk", flat=True):
            evaluate_engine_task.apply_async((engine_id,), expires=SWEEP_ENGINE_EXPIRES_S)
            queued += 1
    return queued + evaluation.repeat_and_escalate()


# --- Notification delivery -----------------------------------------------------------------------


@shared_task(bind=True, name="alerts.send_notification", ignore_result=True, max_retries=None)
def send_notification(self: Any, notification_id: int) -> str:
    """Deliver one notification. Run twice, concurrently or not, it sends once (the row's claim);
    the number of attempts is bounded by the row (notify.MAX_ATTEMPTS), not by Celery."""
    result = notify.notification_send(notification_id)
    if result.outcome is notify.Outcome.RETRY and not self.request.called_directly:
        raise self.retry(countdown=result.retry_in_s)
    return result.outcome.value


@shared_task(name="alerts.resend_stuck_notifications", ignore_result=True)
def resend_stuck_notifications() -> int:
    """Every few seconds: enqueue again what a lost task or a killed worker left behind."""
    stuck = notify.stuck_notification_ids()
    for notification_id in stuck:
        send_notification.delay(notification_id)
    return len(stuck)
