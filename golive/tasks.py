"""Celery tasks of going live. Their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from golive import redlines
from golive.capital import ramp_run
from golive.divergence import record_yesterday


@shared_task
def capital_ramp() -> int:
    """Step up the small-capital engines whose next ramp step is due and whose gates still pass
    (golive.capital); returns how many stepped."""
    return len(ramp_run(timezone.now()))


@shared_task
def divergence_log() -> int:
    """Record yesterday (UTC) in the divergence log of every engine from paper on; returns how
    many rows; then the red line of systematic divergence is judged on the new days."""
    now = timezone.now()
    rows = record_yesterday(now)
    redlines.evaluate(now, kinds=(redlines.DIVERGENCE,))
    return rows


@shared_task
def red_lines() -> int:
    """Judge every enabled red line for every engine at a watched stage (golive.redlines), acting
    on each new crossing; returns how many crossed."""
    return len(redlines.evaluate(timezone.now()))
