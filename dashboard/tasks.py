"""Celery tasks of the reports. Each takes ids and calls a service (dashboard.reports.weekly).

``send_weekly_reports`` runs from django-celery-beat (Monday 07:00 in REPORT_TIMEZONE; the row is
created by migration dashboard 0002 and edited in the admin) and fans out one task per user.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from dashboard.reports import analytics, weekly


@shared_task(name="dashboard.tasks.send_weekly_reports", ignore_result=True)
def send_weekly_reports(week: str | None = None) -> int:
    """Enqueue the previous ISO week's report (in each user's timezone) for every subscriber."""
    if not settings.EMAIL_ENABLED:
        return 0
    now = timezone.now()
    subscribers = weekly.subscribers()
    for user_id, tz in subscribers:
        send_weekly_report.delay(
            user_id=user_id, week=week or analytics.previous_iso_week(now, ZoneInfo(tz))
        )
    return len(subscribers)


@shared_task(
    bind=True,
    name="dashboard.tasks.send_weekly_report",
    ignore_result=True,
    max_retries=weekly.MAX_ATTEMPTS,
)
def send_weekly_report(self: Any, user_id: int, week: str) -> str:
    """One user's report; a transient failure (SMTP, network) is retried with a growing delay,
    and each attempt is recorded on the user's ReportDelivery row."""
    result = weekly.weekly_report_deliver(user_id=user_id, week=week)
    if result.outcome is weekly.Outcome.RETRY and not self.request.called_directly:
        raise self.retry(countdown=result.retry_in_s)
    return result.outcome.value
