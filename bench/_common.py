"""What every bench script needs: scratch databases, free ports, its own Redis, process control,
percentiles and CPU accounting. Imported as ``_common`` (the scripts run as ``bench/NAME.py``, so
this folder is first on the path)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from controlplane.config import embedded  # noqa: E402
from controlplane.config.serving import UVICORN_OPTIONS  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_uvicorn(
    port: int,
    env: dict[str, str],
    *,
    app: list[str] | None = None,
    workers: int = 1,
    quiet: bool = True,
) -> subprocess.Popen[bytes]:
    """uvicorn with the product's options (or ``app``: another application, ``--factory ..``)
    on 127.0.0.1:``port``; returns once it listens."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        *(app or ["controlplane.config.asgi:application"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *UVICORN_OPTIONS,
        *(["--log-level", "warning"] if quiet else []),
        "--workers",
        str(workers),
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while not embedded.port_in_use(port):
        if time.monotonic() > deadline or server.poll() is not None:
            stop_process(server)
            raise SystemExit("uvicorn did not start")
        time.sleep(0.05)
    return server


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def recreate_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(with_database(admin_url, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def drop_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(with_database(admin_url, "postgres"), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def stop_process(
    proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, wait_s: float = 15
) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextlib.contextmanager
def own_redis() -> Iterator[dict[str, str]]:
    """A Redis of this run's own (embedded, on a free port) unless REDIS_URL is set: on a shared
    Redis another run would take this run's Celery tasks from the default queue."""
    if os.environ.get("REDIS_URL"):
        yield {}
        return
    port = free_port()
    while port in (5432, 6379):
        port = free_port()
    root = Path(tempfile.mkdtemp(prefix="cp-bench-redis-"))
    redis = embedded.EmbeddedRedis(root, port)
    try:
        redis.start()
        yield {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    finally:
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _tree_stats(root: int | None) -> dict[int, list[str]]:
    """The /proc/<pid>/stat fields after the command name of a process and its descendants."""
    if root is None or not Path("/proc", str(root)).exists():
        return {}
    parent: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        stats[pid] = fields
    tree = {root}
    grew = True
    while grew:
        found = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        grew = bool(found)
        tree |= found
    return {pid: stats[pid] for pid in tree if pid in stats}


def tree_cpu(root: int | None) -> dict[int, float]:
    """CPU seconds (user + system) of a process and its descendants, by pid; Linux only."""
    tick = os.sysconf("SC_CLK_TCK")
    return {
        pid: (int(fields[11]) + int(fields[12])) / tick for pid, fields in _tree_stats(root).items()
    }


def tree_rss(root: int | None) -> dict[int, int]:
    """Resident memory (VmRSS, bytes) of a process and its descendants, by pid; Linux only."""
    rss = {}
    for pid in _tree_stats(root):
        try:
            status = Path("/proc", str(pid), "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1]) * 1024
    return rss


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def postmaster_pid() -> int | None:
    """The PostgreSQL postmaster, when it runs on this machine (else no figure): the embedded
    one's, or for a DATABASE_URL the parent of a backend of ours, when /proc shows it."""
    if url := os.environ.get("DATABASE_URL"):
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=5) as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                stat = Path("/proc", str(backend), "stat").read_text()
            return int(stat.rsplit(")", 1)[1].split()[1])
        except (psycopg.Error, OSError, ValueError, IndexError):
            return None
    try:
        return int((embedded.data_dir() / "postgres" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def viewers_and_engines(n_engines: int, n_browsers: int, prefix: str) -> dict[str, Any]:
    """Set up Django on the scratch database (run in a child process with its settings) and
    create a viewer with ``n_browsers`` logged-in sessions and ``n_engines`` paper engines.

    Returns the engines' tokens by name, the session keys and the session cookie's name.
    """
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
    django.setup()
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import Group, User

    from controlplane import roles, services

    viewer = User.objects.create_user("bench-viewer", email="viewer@example.invalid")
    viewer.groups.add(Group.objects.get(name=roles.VIEWER))
    store = import_module(settings.SESSION_ENGINE).SessionStore
    sessions = []
    for _ in range(n_browsers):
        session = store()
        session[SESSION_KEY] = str(viewer.pk)
        # What a password login records: the backend that authenticated (the first one, axes',
        # only refuses locked-out pairs and cannot load a user).
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = viewer.get_session_auth_hash()
        session.create()
        sessions.append(session.session_key)
    tokens = {}
    for i in range(n_engines):
        name = f"{prefix}-{i:02d}"
        tokens[name] = services.engine_create(
            name=name, mode="paper", broker="bench", account="bench", strategy_tags=["bench"]
        )[1]
    return {"tokens": tokens, "sessions": sessions, "cookie": settings.SESSION_COOKIE_NAME}


def filled_order(ts: Any, n: int, symbol: str, side: str) -> list[Any]:
    """Order ``o-<n>``'s life as an engine reports it: accepted, two fills of 10, then filled."""
    from decimal import Decimal

    from engine_sdk import protocol as p

    common = {"client_order_id": f"o-{n}", "symbol": symbol, "side": side}
    price = Decimal("100.25") + Decimal(n % 7) / 100
    limits = {"limit_price": Decimal("100.5"), "expected_price": Decimal("100.25")}
    order = {"order_type": "limit", "quantity": Decimal(20), **limits, **common}
    fill = {"quantity": Decimal(10), "price": price, "fee": Decimal("0.01"), **common}
    return [
        p.OrderEvent(ts=ts, status="accepted", **order),
        p.FillEvent(ts=ts, fill_id=f"f-{n}-0", **fill),
        p.FillEvent(ts=ts, fill_id=f"f-{n}-1", **fill),
        p.OrderEvent(
            ts=ts, status="filled", filled_quantity=Decimal(20), avg_fill_price=price, **order
        ),
    ]


def migrated_django(env: dict[str, str], db_url: str) -> dict[str, str]:
    """Migrate the bench's scratch database and set Django up on it in this process (demo
    settings, quiet logs); returns the settings' environment, for the processes a bench starts."""
    settings_env = {
        "DATABASE_URL": db_url,
        "REDIS_URL": env["REDIS_URL"],
        "CONTROLPLANE_ENV": "demo",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"],
        cwd=ROOT,
        env={**env, **settings_env},
        check=True,
    )
    os.environ.update(settings_env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
    import django

    django.setup()
    return settings_env
