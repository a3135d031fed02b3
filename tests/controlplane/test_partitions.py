"""Retention of the raw event log: whole days dropped by a daily task, scheduled by migrate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import PeriodicTask

from controlplane import partitions, tasks
from controlplane.config import schedules

pytestmark = pytest.mark.django_db


def _days_ago(days: int):
    return datetime.now(UTC).date() - timedelta(days=days)


def _partition_days() -> set:
    return {day for _, day in partitions.existing_partitions()}


def test_the_retention_task_drops_only_the_days_older_than_the_setting(settings):
    settings.EVENT_LOG_RETENTION_DAYS = 30
    for days in (31, 30, 2):
        partitions.ensure_partition(_days_ago(days))

    dropped = tasks.drop_old_event_partitions.apply().get()

    assert dropped == [partitions.partition_name(_days_ago(31))]
    assert _days_ago(31) not in _partition_days()
    assert {_days_ago(30), _days_ago(2)} <= _partition_days()


def test_a_shorter_retention_drops_more_days(settings):
    settings.EVENT_LOG_RETENTION_DAYS = 1
    partitions.ensure_partition(_days_ago(2))
    partitions.ensure_partition(_days_ago(1))

    tasks.drop_old_event_partitions.apply()

    assert _days_ago(2) not in _partition_days()
    assert _days_ago(1) in _partition_days()


def test_the_partition_task_creates_today_and_the_next_days():
    names = tasks.ensure_event_partitions.apply().get()
    today = datetime.now(UTC).date()
    assert names[:3] == [partitions.partition_name(today + timedelta(days=n)) for n in range(3)]
    assert {today, today + timedelta(days=2)} <= _partition_days()


def test_migrate_registered_every_periodic_task_with_its_expiry():
    # The test database was built by migrate, whose post_migrate handler wrote the rows.
    rows = {
        task.name: task for task in PeriodicTask.objects.filter(name__in=schedules.PERIODIC_TASKS)
    }
    assert set(rows) == set(schedules.PERIODIC_TASKS)
    retention = rows["event log: drop days past the retention"]
    assert retention.task == "controlplane.tasks.drop_old_event_partitions"
    assert retention.crontab is not None
    assert (retention.crontab.hour, retention.crontab.minute) == ("3", "30")
    assert retention.expire_seconds == 12 * 3600


def test_syncing_again_restores_a_changed_schedule_and_keeps_the_enabled_flag():
    task = PeriodicTask.objects.get(name="event log: drop days past the retention")
    task.expire_seconds = 5
    task.enabled = False
    task.save()

    assert schedules.sync_periodic_tasks() == ["event log: drop days past the retention"]
    assert schedules.sync_periodic_tasks() == []

    task.refresh_from_db()
    assert task.expire_seconds == 12 * 3600
    assert task.enabled is False
    assert PeriodicTask.objects.filter(name=task.name).count() == 1
