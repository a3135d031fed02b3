"""Celery beat touches its heartbeat file after each pass; the health check reads its age.

A real `celery beat` against the test database: the container's health check (docker-compose.yml)
is this module's command line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from controlplane.config import heartbeat
from tests.servers import REPO_ROOT, current_database_url, server_env

WAIT_S = 45.0


def check(path: Path, max_age: str = "60") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane.config.heartbeat", str(path), "--max-age", max_age],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.django_db(transaction=True)
def test_beat_touches_its_heartbeat_file_and_the_check_sees_it(tmp_path):
    beat_file = tmp_path / "beat-heartbeat"
    log = tmp_path / "beat.log"
    env = server_env(
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        BEAT_HEARTBEAT_PATH=str(beat_file),
    )
    assert check(beat_file).returncode == 1  # not started yet: unhealthy
    # Only the loop is under test: no task is sent to a queue other tests' workers read.
    PeriodicTask.objects.update(enabled=False)
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "controlplane.config.celery", "beat"),
                *("--loglevel", "INFO", "--pidfile", str(tmp_path / "beat.pid")),
            ],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        while not beat_file.exists():
            assert beat.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "no heartbeat: " + log.read_text()[-4000:]
            time.sleep(0.1)
        first = beat_file.stat().st_mtime
        done = check(beat_file)
        assert done.returncode == 0, done.stdout
        assert "healthy" in done.stdout
        # The next pass touches it again (the database scheduler wakes at least every 5 s).
        while beat_file.stat().st_mtime == first:
            assert beat.poll() is None, log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "heartbeat not renewed: " + log.read_text()[-4000:]
            time.sleep(0.1)
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(30)


def test_a_stale_or_missing_heartbeat_is_unhealthy(tmp_path):
    path = tmp_path / "beat-heartbeat"
    missing = check(path)
    assert missing.returncode == 1
    assert "does not exist" in missing.stdout
    heartbeat.touch(path)
    old = time.time() - 1000
    os.utime(path, (old, old))
    stale = check(path, max_age="60")
    assert stale.returncode == 1
    touched = re.search(r"last touched (\d+)s ago \(> 60s\)", stale.stdout)
    assert touched and 1000 <= int(touched[1]) < 1100, stale.stdout
    heartbeat.touch(path)
    assert check(path).returncode == 0
    assert heartbeat.age_s(path) is not None and heartbeat.age_s(path) < 5  # type: ignore[operator]
