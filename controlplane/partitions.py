"""Daily partitions of the raw event log (controlplane_eventframe, by received_at)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from django.db import DatabaseError, connection, transaction

log = logging.getLogger(__name__)

PARENT = "controlplane_eventframe"
# Days whose partition this process has seen: the check costs nothing after the first batch.
_known: set[date] = set()


def partition_name(day: date) -> str:
    return f"{PARENT}_{day:%Y%m%d}"


def ensure_partition(day: date) -> None:
    if day in _known:
        return
    name = partition_name(day)
    with connection.cursor() as cursor:
        # A catalogue lookup takes no lock. CREATE TABLE .. PARTITION OF locks the parent table
        # exclusively until commit, which would queue every engine's batch behind each other
        # (and can deadlock them): it runs only when the day's partition is really missing.
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            # Once committed: the table may have been created earlier in this same transaction.
            transaction.on_commit(lambda: _known.add(day))
            return
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    try:
        # A savepoint: if the DEFAULT partition already holds rows of that day, creating the
        # day's partition fails; the rows keep going to DEFAULT and the batch must not fail.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {PARENT} "
                f"FOR VALUES FROM (%s) TO (%s)",
                [start, end],
            )
    except DatabaseError:
        log.warning("event log partition for %s not created; rows go to the default one", day)
        # Not retried on every batch: the periodic task creates the coming days' ahead of time.
        _known.add(day)
        return
    # Remember it only once committed: a rolled-back creation must be retried.
    transaction.on_commit(lambda: _known.add(day))


def ensure_partitions(*, days_ahead: int = 2, today: date | None = None) -> list[str]:
    """Create today's partition and the next ``days_ahead`` days' (run daily by beat)."""
    first = today or datetime.now(UTC).date()
    days = [first + timedelta(days=n) for n in range(days_ahead + 1)]
    for day in days:
        ensure_partition(day)
    return [partition_name(day) for day in days]


def existing_partitions() -> list[tuple[str, date]]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = %s ORDER BY child.relname
            """,
            [PARENT],
        )
        names = [row[0] for row in cursor.fetchall()]
    found = []
    for name in names:
        suffix = name.removeprefix(f"{PARENT}_")
        if suffix.isdigit() and len(suffix) == 8:
            found.append((name, datetime.strptime(suffix, "%Y%m%d").date()))
    return found


def drop_partitions_before(cutoff: date) -> list[str]:
    """Drop whole days older than ``cutoff``: retention without row-by-row deletes."""
    dropped = []
    with connection.cursor() as cursor:
        for name, day in existing_partitions():
            if day < cutoff:
                cursor.execute(f"DROP TABLE {name}")
                _known.discard(day)
                dropped.append(name)
    return dropped
