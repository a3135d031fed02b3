"""Celery tasks of going live. Their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from golive.capital import ramp_run


@shared_task
def capital_ramp() -> int:
    """Step up the small-capital engines whose next ramp step is due and whose gates still pass
    (golive.capital); returns how many stepped."""
    return len(ramp_run(timezone.now()))
