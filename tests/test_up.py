"""`manage.py up` and the embedded servers, as real processes."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from django.conf import settings

from tests.servers import REPO_ROOT, current_database_url, free_port, http_get, server_env

UP_READY_TIMEOUT_S = 90.0
UP_EXIT_TIMEOUT_S = 30.0
WORKER_READY = re.compile(r"celery@\S+ ready\.")


def _wait_for(
    condition: Callable[[], bool],
    *,
    process: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    log: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"`up` exited with code {process.returncode} while waiting until {what}:\n"
                f"{log.read_text(errors='replace')}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not {what} within {timeout:.0f}s; output so far:\n"
                f"{log.read_text(errors='replace')}"
            )
        time.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        status, _ = http_get(url, timeout=1.0)
    except OSError:
        return False
    return status == 200


def _still_alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            # is_running() also compares the start time, so a reused pid does not count.
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def _describe(processes: list[psutil.Process]) -> str:
    lines = []
    for process in processes:
        try:
            lines.append(f"{process.pid}: {' '.join(process.cmdline())}")
        except psutil.Error:
            lines.append(f"{process.pid}: (gone)")
    return "\n".join(lines)


def _kill_tree(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait(10)


def test_up_serves_the_app_and_a_sigint_stops_every_process_it_started(
    transactional_db: None, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "up.log"
    # INFO: the worker's and beat's start lines are what this test waits for.
    env = server_env(
        DATABASE_URL=current_database_url(), REDIS_URL=settings.REDIS_URL, CELERY_LOG_LEVEL="INFO"
    )
    with log.open("ab") as out:
        up = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(port), "--engines", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(
            lambda: _ready(f"http://127.0.0.1:{port}/readyz"),
            process=up,
            timeout=UP_READY_TIMEOUT_S,
            what="GET /readyz answers 200",
            log=log,
        )
        # Wait for the worker's pool processes and beat, so that they are among those counted.
        _wait_for(
            lambda: (
                bool(WORKER_READY.search(log.read_text()))
                and "beat: Starting..." in log.read_text()
            ),
            process=up,
            timeout=UP_READY_TIMEOUT_S,
            what="the Celery worker and beat run",
            log=log,
        )
        started = psutil.Process(up.pid).children(recursive=True)
        commands = _describe(started)
        assert "uvicorn controlplane.config.asgi:application" in commands
        assert "celery -A controlplane.config.celery --quiet worker" in commands
        assert "celery -A controlplane.config.celery --quiet beat" in commands

        up.send_signal(signal.SIGINT)
        returncode = up.wait(UP_EXIT_TIMEOUT_S)
    finally:
        _kill_tree(up)

    output = log.read_text(errors="replace")
    assert returncode == 0, output
    assert "All processes stopped." in output
    # Checked at once: honcho reads each process's output to its end, so `up` returns only after
    # every process that holds that output open (the celery pool included) has exited.
    left = _still_alive(started)
    assert left == [], f"left running after `up` exited:\n{_describe(left)}\n\n{output}"


@pytest.mark.parametrize(
    "run",
    [
        pytest.param(["up"], id="up"),
        # Run directly with no CONTROLPLANE_ENV, the demo takes the demo's settings (production's
        # would stop at once for want of SECRET_KEY): it gets as far as the port check.
        pytest.param(["up", "--demo"], id="up --demo without CONTROLPLANE_ENV"),
    ],
)
def test_up_refuses_a_port_that_is_already_in_use(run: list[str]) -> None:
    # Nothing listens at these: if the port check ever went missing, `up` would fail on the
    # database instead of starting anything, and the message check below would say so.
    unreachable = free_port()
    env = server_env(
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{unreachable}/nothing",
        REDIS_URL=f"redis://127.0.0.1:{unreachable}/0",
    )
    if "--demo" in run:
        del env["CONTROLPLANE_ENV"]
        env.pop("SECRET_KEY", None)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "manage.py", *run, "--port", str(port), "--engines", "0"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode != 0
    assert f"Port {port} is already in use" in done.stderr, done.stdout + done.stderr


# --- Embedded PostgreSQL and Redis --------------------------------------------------------------


@dataclass(frozen=True)
class Embedded:
    """Where a test's own embedded servers keep their data and listen."""

    data_dir: Path
    pg_port: int
    redis_port: int

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in server_env().items()
            if k not in ("DATABASE_URL", "REDIS_URL", "CONTROLPLANE_DATA_DIR")
        }
        env.update(
            CONTROLPLANE_DATA_DIR=str(self.data_dir),
            EMBEDDED_PG_PORT=str(self.pg_port),
            EMBEDDED_REDIS_PORT=str(self.redis_port),
        )
        return env

    def run(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """``python -m controlplane.config.embedded ARGUMENTS``."""
        return subprocess.run(
            [sys.executable, "-m", "controlplane.config.embedded", *arguments],
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def processes(self) -> list[psutil.Process]:
        """The PostgreSQL and Redis processes of this data directory and these ports."""
        found = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(process.info["cmdline"] or [])
            # The postmaster names its data directory; Redis retitles itself "redis-server
            # host:port".
            if (
                str(self.data_dir) in cmdline
                or f"redis-server 127.0.0.1:{self.redis_port}" in cmdline
            ):
                found.append(process)
        return found


@pytest.fixture
def embedded() -> Iterator[Embedded]:
    # Under root the embedded PostgreSQL runs as the unprivileged `pgserver` user, which must be
    # able to reach its data directory; pytest's tmp_path is private to root (mode 0700).
    root = Path(tempfile.mkdtemp(prefix="cp-embedded-", dir="/tmp"))
    root.chmod(0o755)
    pg_port = free_port()
    redis_port = free_port()
    while redis_port == pg_port:
        redis_port = free_port()
    servers = Embedded(root / "data", pg_port, redis_port)
    try:
        yield servers
    finally:
        # Nothing should be left by now; this only cleans up after a failed test.
        servers.run("stop")
        for process in servers.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        shutil.rmtree(root, ignore_errors=True)


# Writes one more row and increments a counter, then prints how many of each there are. Nothing
# forces Redis to save: the counter survives only if stopping the embedded Redis persists it.
_WRITE_AND_COUNT = textwrap.dedent(
    """
    import os, psycopg, redis
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS visits (id serial PRIMARY KEY)")
        conn.execute("INSERT INTO visits DEFAULT VALUES")
        rows = conn.execute("SELECT count(*) FROM visits").fetchone()[0]
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    runs = client.incr("runs")
    print(f"rows={rows} runs={runs}")
    """
)


def _counts(stdout: str) -> dict[str, str]:
    last = stdout.splitlines()[-1] if stdout.strip() else ""
    return dict(item.split("=", 1) for item in last.split() if "=" in item)


def test_embedded_servers_start_keep_their_data_between_runs_and_stop_after(
    embedded: Embedded,
) -> None:
    for run in (1, 2):
        done = embedded.run("run", "--", sys.executable, "-c", _WRITE_AND_COUNT)

        assert done.returncode == 0, done.stdout + done.stderr
        assert f"postgresql://postgres@127.0.0.1:{embedded.pg_port}/controlplane" in done.stdout
        assert f"redis://127.0.0.1:{embedded.redis_port}/0" in done.stdout
        counts = _counts(done.stdout)
        assert counts.get("rows") == str(run), f"PostgreSQL lost its data:\n{done.stdout}"
        assert counts.get("runs") == str(run), f"Redis lost its data:\n{done.stdout}"
        left = embedded.processes()
        assert left == [], f"still running after the run:\n{_describe(left)}"
        assert embedded.run("status").stdout.splitlines() == [
            f"postgres: stopped ({embedded.pg_port})",
            f"redis: stopped ({embedded.redis_port})",
        ]


def test_a_run_beside_started_embedded_servers_uses_them_and_leaves_them_running(
    embedded: Embedded,
) -> None:
    started = embedded.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert started.stdout.splitlines() == [
        f"DATABASE_URL=postgresql://postgres@127.0.0.1:{embedded.pg_port}/controlplane",
        f"REDIS_URL=redis://127.0.0.1:{embedded.redis_port}/0",
    ]

    done = embedded.run("run", "--", sys.executable, "-c", _WRITE_AND_COUNT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert _counts(done.stdout) == {"rows": "1", "runs": "1"}
    assert embedded.run("status").stdout.splitlines() == [
        f"postgres: running ({embedded.pg_port})",
        f"redis: running ({embedded.redis_port})",
    ]
    assert embedded.run("stop").returncode == 0
    left = embedded.processes()
    assert left == [], f"still running after `stop`:\n{_describe(left)}"


def test_embedded_redis_on_an_occupied_port_fails_clearly_and_leaves_nothing_running(
    embedded: Embedded,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", embedded.redis_port))
        taken.listen()
        done = embedded.run("run", "--", sys.executable, "-c", "print('child-ran')")

        assert done.returncode == 2
        assert "child-ran" not in done.stdout
        assert (
            f"Port {embedded.redis_port} is already in use by another program, so the embedded "
            "Redis cannot start" in done.stderr
        ), done.stderr
        assert "set EMBEDDED_REDIS_PORT to a free port" in done.stderr
        # PostgreSQL started first; the failed run stops it again.
        left = embedded.processes()
        assert left == [], f"still running after the failed run:\n{_describe(left)}"
    assert (embedded.data_dir / "postgres" / "PG_VERSION").exists()
