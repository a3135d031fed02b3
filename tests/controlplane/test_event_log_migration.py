"""Migration 0009 moves a row-per-event log into frames, and back, losing nothing."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = ("controlplane", "0008_ingest_fewer_indexes")
AFTER = ("controlplane", "0009_event_log_frames")

# Engine ids no other test uses: the log is not emptied between tests (Django does not manage it).
E1, E2 = 990_001, 990_002
# Two batches of one engine (each batch shares a received_at), one of another, and a day of its
# own, as the gateway stored them before 0009: each payload is the whole event, kind and ts too.
ROWS = [
    (engine, seq, kind, ts, received, f'{{"kind":"{kind}","seq":{seq},"ts":"{ts}","x":"2.50"}}')
    for engine, seq, kind, ts, received in [
        (E1, 1, "order", "2020-01-01T10:00:00Z", "2020-01-01T10:00:01Z"),
        (E1, 2, "fill", "2020-01-01T10:00:00.5Z", "2020-01-01T10:00:01Z"),
        (E1, 3, "metric", "2020-01-02T09:00:00Z", "2020-01-02T09:00:01Z"),
        (E2, 7, "log", "2020-01-02T09:00:00Z", "2020-01-02T09:00:01Z"),
    ]
]


def _migrate(target: tuple[str, str] | None) -> None:
    """Migrate controlplane to ``target``; None: every app to its latest migration, as the tests
    after this one expect the schema. Going back unapplies the other apps' migrations that depend
    on a later controlplane one (golive's), so all of them must come back, not controlplane's only.
    """
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def _events() -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT engine_id, seq, kind, ts, received_at, payload::text"
            " FROM controlplane_engineevent WHERE engine_id IN (%s, %s) ORDER BY engine_id, seq",
            [E1, E2],
        )
        return cursor.fetchall()


def test_the_event_log_moves_into_frames_and_back_with_every_event():
    _migrate(BEFORE)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE controlplane_engineevent_20200101 PARTITION OF"
                " controlplane_engineevent FOR VALUES FROM ('2020-01-01') TO ('2020-01-02')"
            )
            for row in ROWS:
                cursor.execute(
                    "INSERT INTO controlplane_engineevent"
                    " (engine_id, seq, kind, ts, received_at, payload)"
                    " VALUES (%s, %s, %s, %s, %s, %s::json)",
                    row,
                )
        before = _events()

        _migrate(AFTER)

        assert _events() == before
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT tableoid::regclass::text, engine_id, first_seq, last_seq"
                " FROM controlplane_eventframe WHERE engine_id IN (%s, %s)"
                " ORDER BY engine_id, first_seq",
                [E1, E2],
            )
            assert cursor.fetchall() == [
                ("controlplane_eventframe_20200101", E1, 1, 2),
                ("controlplane_eventframe_default", E1, 3, 3),
                ("controlplane_eventframe_default", E2, 7, 7),
            ]

        _migrate(BEFORE)

        assert _events() == before
    finally:
        _migrate(None)
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS controlplane_eventframe_20200101")
            cursor.execute(
                "DELETE FROM controlplane_eventframe WHERE engine_id IN (%s, %s)", [E1, E2]
            )
