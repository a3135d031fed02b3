"""Celery tasks of the alerts app. Each takes ids and calls a service; schedules live in
controlplane.config.schedules."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from alerts import notify

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
