"""The periodic tasks' last runs: recorded by the worker as each scheduled task returns."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from django_celery_beat.models import PeriodicTask

from alerts import tasks as alert_tasks
from controlplane import heartbeats, hub, tasks
from controlplane.config import schedules

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_runs_yet() -> Iterator[None]:
    hub.sync_client().delete(heartbeats.last_runs_key())
    yield
    hub.sync_client().delete(heartbeats.last_runs_key())


def test_a_scheduled_task_records_its_run_when_it_returns() -> None:
    assert heartbeats.last_runs() == {}
    before = time.time()

    tasks.heartbeat.apply()
    tasks.expire_commands.apply()

    after = time.time()
    runs = heartbeats.last_runs()
    assert set(runs) == {"controlplane.tasks.heartbeat", "controlplane.tasks.expire_commands"}
    assert all(before <= at <= after for at in runs.values())


def test_a_task_outside_the_schedule_records_nothing() -> None:
    alert_tasks.evaluate_engines_task.apply(args=[[]])
    assert heartbeats.last_runs() == {}


def test_a_run_that_raises_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise RuntimeError("database away")

    monkeypatch.setattr("controlplane.commands.lifecycle.commands_expire", broken)
    tasks.expire_commands.apply()
    assert heartbeats.last_runs() == {}


def test_beat_runs_the_heartbeat_every_15_seconds() -> None:
    schedules.sync_periodic_tasks()
    row = PeriodicTask.objects.get(task="controlplane.tasks.heartbeat")
    assert (row.interval.every, row.interval.period, row.expire_seconds) == (15, "seconds", 15)
    assert row.enabled
