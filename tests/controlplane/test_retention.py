"""Metric samples, engine logs and account snapshots: partitioned by day of ts, and their days
past the retention archived to gzip'd CSV files before they are dropped."""

from __future__ import annotations

import csv
import gzip
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from controlplane import partitions, retention, tasks
from controlplane.ingest.store import ingest_events
from controlplane.models import AccountSnapshot, EngineLog, MetricSample
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db

TODAY = datetime.now(UTC).date()
LONG_AGO = date(2001, 1, 1)


@pytest.fixture
def engine(engine_and_token):
    return engine_and_token[0]


@pytest.fixture
def archive(settings, tmp_path):
    settings.ARCHIVE_DIR = str(tmp_path / "archive")
    settings.METRIC_RETENTION_DAYS = 30
    settings.ENGINE_LOG_RETENTION_DAYS = 30
    settings.ACCOUNT_SNAPSHOT_RETENTION_DAYS = 30
    return tmp_path / "archive"


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def _placed(table: str, engine_id: int) -> list[tuple[str, str]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (ts AT TIME ZONE 'UTC')::date::text, tableoid::regclass::text FROM {table}"
            " WHERE engine_id = %s ORDER BY ts",
            [engine_id],
        )
        return cursor.fetchall()


def _exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        return cursor.fetchone()[0]


def _as_committed() -> None:
    """Check the rows' deferred foreign keys now, as their commit would have: a table with
    checks still pending cannot be dropped, and in use the rows were written days before."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _csv(path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as text:
        return list(csv.DictReader(text))


def _metric(engine, day: date, seq: int, name: str = "latency_ms", value: float = 1.5):
    return MetricSample.objects.create(
        engine=engine, ts=_noon(day), name=name, value=value, seq=seq
    )


def test_ingested_rows_go_to_their_days_partition_and_a_day_without_one_to_default(engine):
    now = datetime.now(UTC).replace(microsecond=0)
    old = _noon(LONG_AGO)
    ingest_events(
        engine_id=engine.pk,
        events=[
            p.MetricEvent(seq=1, ts=now, name="latency_ms", value=1.0),
            p.LogEvent(seq=2, ts=now, level="info", message="up", context={}),
            p.AccountEvent(seq=3, ts=now, equity=Decimal(100), cash=Decimal(100)),
            p.MetricEvent(seq=4, ts=old, name="latency_ms", value=2.0),
            p.LogEvent(seq=5, ts=old, level="info", message="replayed", context={}),
            p.AccountEvent(seq=6, ts=old, equity=Decimal(90), cash=Decimal(90)),
        ],
    )

    for table in partitions.ENGINE_TABLES:
        assert _placed(table, engine.pk) == [
            (str(LONG_AGO), f"{table}_default"),
            (str(now.date()), partitions.partition_name(now.date(), table)),
        ]


def test_the_partition_task_creates_the_coming_days_of_every_table():
    names = tasks.ensure_event_partitions.apply().get()

    for table in partitions.PARENTS:
        days = [TODAY + timedelta(days=n) for n in range(3)]
        assert [partitions.partition_name(day, table) for day in days] == [
            name for name in names if name.startswith(f"{table}_")
        ]
        assert all(_exists(partitions.partition_name(day, table)) for day in days)


def test_retention_archives_a_days_rows_to_a_gzip_csv_then_drops_its_partition(engine, archive):
    expired, kept = TODAY - timedelta(days=31), TODAY - timedelta(days=30)
    for day in (expired, kept):
        partitions.ensure_partition(day, partitions.METRIC_SAMPLES)
    rows = [
        _metric(engine, expired, 1, name='odd, "quoted"', value=0.1),
        _metric(engine, expired, 2),
    ]
    survivor = _metric(engine, kept, 3)
    _as_committed()

    written = tasks.archive_old_days.apply().get()

    path = archive / partitions.METRIC_SAMPLES / f"{expired:%Y-%m-%d}.csv.gz"
    assert written == [str(path)]
    assert [(r["id"], r["name"], float(r["value"]), r["seq"]) for r in _csv(path)] == [
        (str(row.id), row.name, row.value, str(row.seq)) for row in rows
    ]
    assert not _exists(partitions.partition_name(expired, partitions.METRIC_SAMPLES))
    assert list(MetricSample.objects.filter(engine=engine)) == [survivor]
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind

    # Read back as docs/operations.md says (zcat | psql \copy): the rows come back whole.
    with (
        gzip.open(path, "rb") as data,
        connection.cursor() as cursor,
        cursor.cursor.copy(
            f"COPY {partitions.METRIC_SAMPLES} FROM STDIN WITH (FORMAT csv, HEADER)"
        ) as copy,
    ):
        copy.write(data.read())
    assert list(MetricSample.objects.filter(engine=engine).order_by("id")) == [*rows, survivor]


def test_a_logs_multiline_message_and_context_come_back_from_the_archive(engine, archive):
    day = TODAY - timedelta(days=40)
    partitions.ensure_partition(day, partitions.ENGINE_LOGS)
    log = EngineLog.objects.create(
        engine=engine, ts=_noon(day), level="error", message='a\nb,"c"', context={"k": [1]}
    )
    _as_committed()

    [written] = retention.apply_retention(partitions.ENGINE_LOGS)

    [row] = _csv(written)
    assert (row["message"], row["context"]) == (log.message, '{"k": [1]}')
    assert not EngineLog.objects.filter(engine=engine).exists()


def test_old_rows_in_the_default_partition_are_archived_a_file_a_day_then_deleted(engine, archive):
    old = AccountSnapshot.objects.create(
        engine=engine, ts=_noon(LONG_AGO), equity=Decimal("1.5"), cash=0, seq=1
    )
    recent_day = TODAY - timedelta(days=3)  # no partition: in DEFAULT too, but kept
    recent = AccountSnapshot.objects.create(
        engine=engine, ts=_noon(recent_day), equity=Decimal(2), cash=0, seq=2
    )
    _as_committed()
    assert _placed(partitions.ACCOUNT_SNAPSHOTS, engine.pk)[0][1].endswith("_default")

    [written] = retention.apply_retention(partitions.ACCOUNT_SNAPSHOTS)

    assert written.name == f"{LONG_AGO:%Y-%m-%d}.default.csv.gz"
    assert [(r["id"], r["equity"]) for r in _csv(written)] == [(str(old.id), "1.50000000")]
    assert list(AccountSnapshot.objects.filter(engine=engine)) == [recent]
    # Again: nothing more to do, nothing changes.
    assert retention.apply_retention(partitions.ACCOUNT_SNAPSHOTS) == []
    assert list(AccountSnapshot.objects.filter(engine=engine)) == [recent]


def test_an_archive_that_cannot_be_written_drops_nothing_and_logs_an_error(
    engine, archive, settings, tmp_path, caplog
):
    # A file where the archive directory should be: no directory can be made under it.
    (tmp_path / "not-a-directory").write_text("")
    settings.ARCHIVE_DIR = str(tmp_path / "not-a-directory")
    expired = TODAY - timedelta(days=31)
    partitions.ensure_partition(expired, partitions.METRIC_SAMPLES)
    row = _metric(engine, expired, 1)
    in_default = _metric(engine, LONG_AGO, 2)
    _as_committed()

    with caplog.at_level(logging.ERROR, logger="controlplane.retention"):
        assert tasks.archive_old_days.apply().get() == []

    assert _exists(partitions.partition_name(expired, partitions.METRIC_SAMPLES))
    assert set(MetricSample.objects.filter(engine=engine)) == {row, in_default}
    assert "not archived; nothing of them was dropped" in caplog.text
    assert "cannot write the archive" in caplog.text
    assert "not-a-directory" in caplog.text


def test_the_retention_of_a_table_that_is_not_partitioned_is_refused():
    with pytest.raises(ValueError, match="not a partitioned table"):
        partitions.partition_name(TODAY, "controlplane_order; DROP TABLE x")
