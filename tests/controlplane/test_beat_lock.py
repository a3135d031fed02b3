"""One beat at a time: two real `celery beat` processes against the same Redis and database, of
which only the lock's holder sends the schedule, and the other takes over when it is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from controlplane import redis_clients
from controlplane.beat_lock import BeatLock
from controlplane.config import schedules
from controlplane.config.beat import beat_lock
from tests.servers import REPO_ROOT, current_database_url, server_env

pytestmark = pytest.mark.django_db(transaction=True)

HEARTBEAT = "controlplane.tasks.heartbeat"
TTL_S = 3.0
CELERY_BEAT = (sys.executable, "-m", "celery", "-A", "controlplane.config.celery", "beat")
SENT = b"Sending due task"
TAKEN = b"this beat sends the schedule"
WAITS = b"held by another beat: this one waits"


def beat(tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = server_env(
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        BEAT_LOCK_TTL_S=str(TTL_S),
    )
    log = tmp_path / f"{name}.log"
    files = ("--pidfile", str(tmp_path / f"{name}.pid"), "--schedule", str(tmp_path / name))
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*CELERY_BEAT, "--loglevel", "INFO", *files],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], what: str, logs: list[Path], within: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            said = "\n".join(
                f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in logs
            )
            raise AssertionError(f"not {what} within {within:.0f}s; beat said:\n{said}")
        time.sleep(0.05)  # other processes' work: there is no event to await here
    return time.monotonic() - started


def sends(log: Path) -> int:
    return log.read_bytes().count(SENT)


def test_only_one_of_two_beats_sends_and_the_other_takes_over_when_it_is_killed(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    schedules.sync_periodic_tasks()
    # Only the heartbeat, every second: a send to count on each pass of the holder's loop.
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.exclude(task=HEARTBEAT).update(enabled=False)
    PeriodicTask.objects.filter(task=HEARTBEAT).update(
        interval=every_second, last_run_at=timezone.now() - timedelta(minutes=5)
    )
    redis_clients.client().delete(beat_lock().key)  # a lease left over is not this test's
    started = [beat(tmp_path, "a"), beat(tmp_path, "b")]
    processes.extend(process for process, _ in started)
    logs = [log for _, log in started]
    wait_for(
        lambda: all(b"beat lock" in log.read_bytes() for log in logs),
        "both beats ticking",
        logs,
        40,
    )
    [(first, first_log)] = [(p, log) for p, log in started if TAKEN in log.read_bytes()]
    [second_log] = [log for p, log in started if p is not first]
    assert WAITS in second_log.read_bytes()
    before = sends(first_log)
    wait_for(lambda: sends(first_log) >= before + 2, "two more sends", logs, 30)

    assert sends(second_log) == 0, "both beats sent the schedule"

    first.send_signal(signal.SIGKILL)
    first.wait()
    took = wait_for(lambda: sends(second_log) >= 2, "the second beat taking over", logs, 30)

    # The lease runs out TTL_S after the last renewal; the waiting beat tries every TTL_S / 3.
    assert took <= TTL_S + TTL_S / 3 + 2.0, f"took over after {took:.1f}s"
    assert TAKEN in second_log.read_bytes()


def test_a_beat_stopped_cleanly_releases_the_lock_at_once(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    schedules.sync_periodic_tasks()
    PeriodicTask.objects.all().update(enabled=False)
    lock = beat_lock()
    lock.client.delete(lock.key)
    process, log = beat(tmp_path, "only")
    processes.append(process)
    wait_for(lambda: lock.holder() is not None, "the lock taken", [log], 30)

    process.terminate()
    process.wait(timeout=20)

    assert lock.holder() is None


def test_a_lease_is_renewed_only_by_its_holder_and_lapses_without_renewal() -> None:
    key = f"{beat_lock().key}:unit"
    client = redis_clients.client()
    client.delete(key)
    holder = BeatLock(client=client, key=key, ttl_s=1.0)
    other = BeatLock(client=client, key=key, ttl_s=1.0)

    assert holder.hold() is True
    assert other.hold() is False
    assert holder.hold() is True  # renewed
    assert other.holder() == holder.token
    other.release()  # not its lease: nothing happens
    assert holder.holder() == holder.token

    client.pexpire(key, 1)  # the holder died: its lease runs out
    wait_for(lambda: client.get(key) is None, "the lease lapsed", [], 2)
    assert other.hold() is True
    assert holder.hold() is False  # the old holder learns it lost, and stops sending
    other.release()
    assert client.get(key) is None
