"""Migration 0029 turns metric samples, engine logs and account snapshots into tables partitioned
by day of ts, keeping every row (its id too), and back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = ("controlplane", "0028_command_engine_connected")
AFTER = ("controlplane", "0029_partition_samples_logs_snapshots")
TABLES = ("controlplane_metricsample", "controlplane_enginelog", "controlplane_accountsnapshot")
DAY1 = datetime(2020, 3, 1, 23, 59, 59, tzinfo=UTC)
DAY2 = datetime(2020, 3, 2, 0, 0, 0, tzinfo=UTC)


def _migrate(target: tuple[str, str] | None) -> None:
    """Migrate controlplane to ``target``; None: every app to its latest migration."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def _rows(table: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} ORDER BY id")
        return cursor.fetchall()


def _placement(table: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, tableoid::regclass::text FROM {table} ORDER BY id")
        return cursor.fetchall()


def _is_partitioned(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s", [table])
        return cursor.fetchone()[0] == "p"


def _restore() -> None:
    """Every app at its latest migration, and none of the days the rows made left behind: the
    table's rows are emptied after the test, its partitions are not (retention would see them)."""
    _migrate(None)
    with connection.cursor() as cursor:
        for table in TABLES:
            for day in (DAY1, DAY2):
                cursor.execute(f"DROP TABLE IF EXISTS {table}_{day:%Y%m%d}")


def _fill_old_tables() -> int:
    """An engine and two rows a table (one each side of midnight UTC), written through the
    models as they were at ``BEFORE``; returns the engine's id."""
    executor = MigrationExecutor(connection)
    models = executor.loader.project_state(BEFORE).apps
    engine = models.get_model("controlplane", "Engine").objects.create(name="migrated")
    for seq, ts in ((1, DAY1), (2, DAY2)):
        models.get_model("controlplane", "MetricSample").objects.create(
            engine_id=engine.id, ts=ts, name="latency_ms", value=1.5 * seq, seq=seq
        )
        models.get_model("controlplane", "EngineLog").objects.create(
            engine_id=engine.id,
            ts=ts,
            level="error",
            message=f"m{seq}",
            context={"n": seq},
            seq=seq,
        )
        models.get_model("controlplane", "AccountSnapshot").objects.create(
            engine_id=engine.id, ts=ts, equity=1000 + seq, cash=900, seq=seq
        )
    return engine.id


def test_the_rows_move_into_day_partitions_and_back_with_their_ids():
    _migrate(BEFORE)
    try:
        engine_id = _fill_old_tables()
        before = {table: _rows(table) for table in TABLES}

        _migrate(AFTER)

        for table in TABLES:
            assert _is_partitioned(table)
            assert _rows(table) == before[table]
            ids = [row[0] for row in before[table]]
            assert _placement(table) == [
                (ids[0], f"{table}_20200301"),
                (ids[1], f"{table}_20200302"),
            ]
        # The sequences go on after the copied ids, and a new row of a day without a partition
        # goes to the DEFAULT one.
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO controlplane_metricsample (engine_id, ts, name, value, seq)"
                " VALUES (%s, '2020-06-01T00:00:00Z', 'x', 1, 3)"
                " RETURNING id, tableoid::regclass::text",
                [engine_id],
            )
            new_id, placed = cursor.fetchone()
        assert new_id > max(row[0] for row in before["controlplane_metricsample"])
        assert placed == "controlplane_metricsample_default"

        _migrate(BEFORE)

        for table in TABLES:
            assert not _is_partitioned(table)
        assert _rows("controlplane_enginelog") == before["controlplane_enginelog"]
        assert len(_rows("controlplane_metricsample")) == 3
    finally:
        _restore()


def test_a_replayed_seq_of_the_same_ts_is_still_refused():
    _migrate(BEFORE)
    try:
        engine_id = _fill_old_tables()
        _migrate(AFTER)
        with (
            pytest.raises(IntegrityError, match=r"\(engine_id, seq, ts\)"),
            connection.cursor() as cursor,
        ):
            cursor.execute(
                "INSERT INTO controlplane_metricsample (engine_id, ts, name, value, seq)"
                " VALUES (%s, %s, 'latency_ms', 9, 1)",
                [engine_id, DAY1],
            )
    finally:
        _restore()
