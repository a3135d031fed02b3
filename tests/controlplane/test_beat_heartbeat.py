"""Beat's heartbeat end to end: a real `celery beat` schedules controlplane.tasks.heartbeat, a real
worker runs it, and /metrics shows when."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from prometheus_client.parser import text_string_to_metric_families

from controlplane import heartbeats, hub
from controlplane.config import schedules
from controlplane.config.celery import app as celery_app
from tests.servers import REPO_ROOT, current_database_url, server_env

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = "controlplane.tasks.heartbeat"
WAIT_S = 60.0
WORKER = (
    *("worker", "--pool", "threads", "--concurrency", "1"),
    *("--without-gossip", "--without-mingle", "--loglevel", "INFO"),
)


def celery(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = server_env(DATABASE_URL=current_database_url(), REDIS_URL=settings.REDIS_URL)
    with (tmp_path / "celery.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "controlplane.config.celery", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], Any], what: str, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            said = log.read_text(errors="replace")[-6000:]
            raise AssertionError(f"not {what} within {WAIT_S:.0f}s; celery said:\n{said}")
        time.sleep(0.1)  # other processes' work: there is no event to await here
    return value


def test_beat_and_a_worker_alive_show_as_a_fresh_heartbeat_in_metrics(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], client: Client
) -> None:
    schedules.sync_periodic_tasks()
    # Only the heartbeat, due at once: the sweeps' runs are not what this test is about.
    PeriodicTask.objects.exclude(task=HEARTBEAT).update(enabled=False)
    PeriodicTask.objects.filter(task=HEARTBEAT).update(
        last_run_at=timezone.now() - timedelta(minutes=5)
    )
    celery_app.control.purge()  # what earlier tests queued and nobody ran is not this test's
    hub.sync_client().delete(heartbeats.last_runs_key())
    started = time.time()
    beat_files = ("--pidfile", str(tmp_path / "beat.pid"), "--schedule", str(tmp_path / "beat"))
    processes.append(celery(tmp_path, *WORKER))
    processes.append(celery(tmp_path, "beat", "--loglevel", "INFO", *beat_files))

    ran_at = wait_for(
        lambda: heartbeats.last_runs().get(HEARTBEAT),
        "a heartbeat run recorded",
        tmp_path / "celery.log",
    )

    assert started <= ran_at <= time.time()
    text = client.get("/metrics").content.decode()
    [family] = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "cp_task_last_run_timestamp_seconds"
    ]
    assert [(s.labels, s.value) for s in family.samples] == [({"task": HEARTBEAT}, ran_at)]
