"""Celery tasks of the engines domain. Their schedules live in controlplane.config.schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.conf import settings

from controlplane import partitions, retention
from controlplane.commands import desired_state, lifecycle


@shared_task
def ensure_event_partitions() -> list[str]:
    """Create today's and the next days' partitions of the event log and of the engines' metric
    samples, logs and account snapshots, before the first row needs them (its name is the one
    beat's rows have always called)."""
    return partitions.ensure_partitions()


@shared_task
def drop_old_event_partitions() -> list[str]:
    """Drop the event log's days older than EVENT_LOG_RETENTION_DAYS; returns the tables dropped."""
    cutoff = datetime.now(UTC).date() - timedelta(days=settings.EVENT_LOG_RETENTION_DAYS)
    return partitions.drop_partitions_before(cutoff)


@shared_task
def archive_old_days() -> list[str]:
    """Archive, then drop, the days of metric samples, engine logs and account snapshots older
    than their retention settings; returns the files written."""
    written = []
    for table in partitions.ENGINE_TABLES:
        written += [str(path) for path in retention.apply_retention(table)]
    return written


@shared_task
def expire_commands() -> int:
    """Mark commands whose expiry passed before any engine acknowledged them (an engine that is
    offline does not do it at its next connection until then); returns how many."""
    return lifecycle.commands_expire()


@shared_task
def end_timed_pauses() -> int:
    """Write ACTIVE back for engines whose timed pause is over; returns how many."""
    return len(desired_state.timed_pauses_end())


@shared_task
def heartbeat() -> None:
    """Does nothing: scheduled every few seconds, its recorded runs (controlplane.heartbeats) say
    that beat is scheduling, the broker carrying and a worker running tasks, all three at once."""
