"""manage.py backup: a pg_dump that restores into an empty database with every row, the newest
N kept, and a failure that leaves the backups there were as they were."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from controlplane import backups
from controlplane.models import AuditEvent, Engine

TABLES = ["auth_user", "controlplane_engine", "controlplane_auditevent", "django_migrations"]


def _counts(conninfo: dict[str, str]) -> dict[str, int]:
    with psycopg.connect(**conninfo) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _conninfo(dbname: str) -> dict[str, str]:
    params = connection.get_connection_params()
    keep = ("host", "port", "user", "password")
    return {k: str(v) for k, v in params.items() if k in keep and v} | {"dbname": dbname}


@pytest.fixture
def scratch_db():
    name = f"restore_{uuid.uuid4().hex[:12]}"
    admin = _conninfo("postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_backup_restores_into_an_empty_database_with_every_row(
    transactional_db, make_engine, operator, tmp_path, scratch_db
):
    make_engine("momo-1")
    make_engine("momo-2")
    AuditEvent.objects.create(actor="test", action="test.backup", target_type="engine")
    call_command("backup", dir=str(tmp_path), keep=3)
    [dump] = backups.backups(tmp_path)
    assert dump.stat().st_size > 0 and not list(tmp_path.glob(".*partial"))

    tool = backups.client_tool("pg_restore", backups.server_major())
    env = backups.libpq_env() | {"PGDATABASE": scratch_db}
    done = subprocess.run(
        [tool.path, "--no-owner", "--exit-on-error", f"--dbname={scratch_db}", str(dump)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    original = _counts(_conninfo(connection.settings_dict["NAME"]))
    assert original["controlplane_engine"] == Engine.objects.count() == 2
    assert _counts(_conninfo(scratch_db)) == original


def test_the_newest_backups_are_kept_and_the_oldest_deleted(transactional_db, tmp_path):
    start = datetime(2026, 12, 1, tzinfo=UTC)
    made = [backups.backup(tmp_path, keep=2, now=start + timedelta(days=d)) for d in range(3)]
    assert backups.backups(tmp_path) == made[1:]


def test_a_failed_dump_leaves_the_backups_there_were(transactional_db, tmp_path, monkeypatch):
    kept = backups.backup(tmp_path, keep=5, now=datetime(2026, 12, 1, tzinfo=UTC))
    broken = tmp_path / "pg_dump"
    broken.write_text(
        '#!/bin/sh\nif [ "$1" = --version ]; then echo "pg_dump (PostgreSQL) 99.1"; exit 0; fi\n'
        "echo 'connection refused' >&2\nexit 3\n"
    )
    broken.chmod(0o755)
    monkeypatch.setattr(backups, "_candidates", lambda name: [str(broken)])
    with pytest.raises(backups.BackupError, match="pg_dump failed \\(3\\): connection refused"):
        backups.backup(tmp_path, keep=1)
    assert backups.backups(tmp_path) == [kept]
    assert not list(tmp_path.glob(".*partial"))


def test_a_client_older_than_the_server_is_refused_naming_what_to_install(
    db, tmp_path, monkeypatch
):
    old = tmp_path / "pg_dump"
    old.write_text('#!/bin/sh\necho "pg_dump (PostgreSQL) 9.6.24"\n')
    old.chmod(0o755)
    monkeypatch.setattr(backups, "_candidates", lambda name: [str(old)])
    server = backups.server_major()
    with pytest.raises(backups.BackupError, match=f"pg_dump {server} or newer is needed") as err:
        backups.client_tool("pg_dump", server)
    assert "(9)" in str(err.value) and "PG_DUMP" in str(err.value)


def test_keep_below_one_is_refused(db, tmp_path):
    with pytest.raises(backups.BackupError, match="keep must be at least 1"):
        backups.backup(Path(tmp_path), keep=0)
