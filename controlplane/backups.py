"""Backups of the database: pg_dump's custom format, one file per run, the newest kept.

    python manage.py backup [--dir DIR] [--keep N]      # from cron, a systemd timer, or Compose

A backup is written under a temporary name and renamed once pg_dump has finished, so a file with
the final name is always whole; the oldest beyond ``keep`` are deleted after a backup succeeded,
never before. The password travels in the environment (PGPASSWORD), never on a command line that
``ps`` shows. pg_dump must be at least as new as the server: the first of $PG_DUMP, the embedded
server's own (pgserver), and the one on PATH that is, is used.

Restore (docs/operations.md, "Backups"): ``pg_restore --no-owner --dbname=postgres://... FILE``
into an empty database; the suite does exactly that and compares the rows.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import connection

__all__ = ["BackupError", "backup", "client_tool", "libpq_env"]

PREFIX = "controlplane-"
SUFFIX = ".dump"
_STAMP = "%Y%m%dT%H%M%SZ"


class BackupError(Exception):
    """A backup that could not be made: the message says why and what to do."""


@dataclass(frozen=True)
class Tool:
    path: str
    major: int


def _major(path: str) -> int | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    found = re.search(r"(\d+)(?:\.\d+)?", done.stdout)
    return int(found.group(1)) if done.returncode == 0 and found else None


def _candidates(name: str) -> list[str]:
    paths = []
    if configured := os.environ.get(f"PG_{name.upper().removeprefix('PG_')}"):
        paths.append(configured)
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        embedded = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name
        paths.append(str(embedded))
    if on_path := shutil.which(name):
        paths.append(on_path)
    return paths


def server_major() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version_num")
        return int(cursor.fetchone()[0]) // 10000


def client_tool(name: str, server: int) -> Tool:
    """pg_dump or pg_restore at least as new as the server (an older one refuses the dump)."""
    seen = []
    for path in _candidates(name):
        major = _major(path)
        if major is None:
            continue
        if major >= server:
            return Tool(path, major)
        seen.append(f"{path} ({major})")
    found = f"; found {', '.join(seen)}" if seen else ""
    raise BackupError(
        f"{name} {server} or newer is needed for PostgreSQL {server}{found}: install the "
        f"PostgreSQL {server} client tools, or set PG_{name.upper().removeprefix('PG_')} to one"
    )


def libpq_env() -> dict[str, str]:
    """The connection of the default database as libpq's variables (the password among them)."""
    db = settings.DATABASES["default"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for key, variable in (
        ("HOST", "PGHOST"),
        ("PORT", "PGPORT"),
        ("USER", "PGUSER"),
        ("PASSWORD", "PGPASSWORD"),
        ("NAME", "PGDATABASE"),
    ):
        if db.get(key):
            env[variable] = str(db[key])
    return env


def backups(directory: Path) -> list[Path]:
    """The backups in ``directory``, oldest first (their names sort by time)."""
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"))


def backup(directory: Path, *, keep: int, now: datetime | None = None) -> Path:
    """Dump the database into ``directory``; then delete the oldest beyond ``keep``."""
    if keep < 1:
        raise BackupError("keep must be at least 1: the backup just made is always kept")
    directory.mkdir(parents=True, exist_ok=True)
    tool = client_tool("pg_dump", server_major())
    stamp = (now or datetime.now(UTC)).strftime(_STAMP)
    final = directory / f"{PREFIX}{stamp}{SUFFIX}"
    partial = directory / f".{final.name}.partial"
    done = subprocess.run(
        [tool.path, "--format=custom", "--no-password", f"--file={partial}"],
        env=libpq_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    with partial.open("rb") as written:
        os.fsync(written.fileno())
    partial.replace(final)
    for old in backups(directory)[:-keep]:
        old.unlink()
    return final
