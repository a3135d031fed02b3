"""Celery tasks of going live. Their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from golive import redlines
from golive.capital import ramp_engine_ids, ramp_run
from golive.divergence import record_yesterday


@shared_task
def capital_ramp() -> int:
    """Queue the capital ramp of each small-capital engine (golive.capital), one task per engine;
    returns how many were queued."""
    engine_ids = ramp_engine_ids()
    for engine_id in engine_ids:
        capital_ramp_engine.apply_async((engine_id,), expires=CAPITAL_RAMP_ENGINE_EXPIRES_S)
    return len(engine_ids)


@shared_task
def capital_ramp_engine(engine_id: int) -> int:
    """Step one small-capital engine up if its next ramp step is due and its gates still pass;
    returns 1 if it stepped. Run twice, it steps once (the step is due no more)."""
    return len(ramp_run(timezone.now(), engine_ids=[engine_id]))


@shared_task
def divergence_log() -> int:
    """Record yesterday (UTC) in the divergence log of every engine from paper on; returns how
    many rows; then the red line of systematic divergence is judged on the new days."""
    now = timezone.now()
    rows = record_yesterday(now)
    redlines.evaluate(now, kinds=(redlines.DIVERGENCE,))
    return rows


# A per-engine task that waited longer than its sweep's period in the queue is dropped: the next
# sweep queues a fresh one.
RED_LINES_ENGINE_EXPIRES_S = 60
CAPITAL_RAMP_ENGINE_EXPIRES_S = 3600


@shared_task
def red_lines() -> int:
    """Queue the red lines' judgement of each engine at a watched stage (golive.redlines), one
    task per engine, so that one engine's failure or slowness holds no other up; returns how
    many were queued."""
    engine_ids = redlines.watched_engine_ids()
    for engine_id in engine_ids:
        red_lines_engine.apply_async((engine_id,), expires=RED_LINES_ENGINE_EXPIRES_S)
    return len(engine_ids)


@shared_task
def red_lines_engine(engine_id: int) -> int:
    """Judge every enabled red line for one engine, acting on a new crossing; returns how many
    crossed. Run twice, it acts once (the red line's state records the crossing); an engine no
    longer watched is skipped."""
    return len(redlines.evaluate(timezone.now(), engine_ids=[engine_id]))
