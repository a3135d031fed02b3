"""Daily partitions of the append-only tables, each by the UTC day of one timestamp column.

The raw event log (controlplane_eventframe, by received_at) and the engines' metric samples,
logs and account snapshots (by ts) are partitioned by RANGE on that column, with a DEFAULT
partition for the rows of a day that has none: a row is never refused for want of its day.
Retention drops whole days (controlplane.retention archives them first), never row by row.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, transaction

log = logging.getLogger(__name__)

# The parents, by table name (the models' db_table, checked in controlplane.ingest.sql).
EVENT_LOG = "controlplane_eventframe"
METRIC_SAMPLES = "controlplane_metricsample"
ENGINE_LOGS = "controlplane_enginelog"
ACCOUNT_SNAPSHOTS = "controlplane_accountsnapshot"
PARENTS = (EVENT_LOG, METRIC_SAMPLES, ENGINE_LOGS, ACCOUNT_SNAPSHOTS)
# The event log's name, as the readers of the log know it.
PARENT = EVENT_LOG
# The engines' tables, written by the ingest with the engine's timestamps (ts).
ENGINE_TABLES = (METRIC_SAMPLES, ENGINE_LOGS, ACCOUNT_SNAPSHOTS)

# (parent, day) pairs whose partition this process has seen: the check costs nothing after the
# first batch of a day.
_known: set[tuple[str, date]] = set()


def _parent(parent: str) -> str:
    # Table names are put into SQL text: only the known ones are.
    if parent not in PARENTS:
        raise ValueError(f"{parent!r} is not a partitioned table (one of {', '.join(PARENTS)})")
    return parent


def partition_name(day: date, parent: str = PARENT) -> str:
    return f"{_parent(parent)}_{day:%Y%m%d}"


def default_name(parent: str = PARENT) -> str:
    return f"{_parent(parent)}_default"


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def ensure_partition(day: date, parent: str = PARENT) -> None:
    key = (parent, day)
    if key in _known:
        return
    name = partition_name(day, parent)
    with connection.cursor() as cursor:
        # A catalogue lookup takes no lock. CREATE TABLE .. PARTITION OF locks the parent table
        # exclusively until commit, which would queue every engine's batch behind each other
        # (and can deadlock them): it runs only when the day's partition is really missing.
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            # Once committed: the table may have been created earlier in this same transaction.
            transaction.on_commit(lambda: _known.add(key))
            return
    start, end = day_bounds(day)
    try:
        # A savepoint: if the DEFAULT partition already holds rows of that day, creating the
        # day's partition fails; the rows keep going to DEFAULT and the batch must not fail.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {parent} "
                f"FOR VALUES FROM (%s) TO (%s)",
                [start, end],
            )
    except DatabaseError:
        log.warning("%s: partition for %s not created; rows go to the default one", parent, day)
        # Not retried on every batch: the periodic task creates the coming days' ahead of time.
        _known.add(key)
        return
    # Remember it only once committed: a rolled-back creation must be retried.
    transaction.on_commit(lambda: _known.add(key))


def ensure_partitions(
    *, days_ahead: int = 2, today: date | None = None, parents: tuple[str, ...] = PARENTS
) -> list[str]:
    """Create today's partition and the next ``days_ahead`` days' of each of ``parents`` (run
    by beat); returns their names."""
    first = today or datetime.now(UTC).date()
    days = [first + timedelta(days=n) for n in range(days_ahead + 1)]
    names = []
    for parent in parents:
        for day in days:
            ensure_partition(day, parent)
            names.append(partition_name(day, parent))
    return names


def existing_partitions(parent: str = PARENT) -> list[tuple[str, date]]:
    """The day partitions of ``parent`` (not its DEFAULT one), in day order."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname FROM pg_inherits
            JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
            JOIN pg_class child ON child.oid = pg_inherits.inhrelid
            WHERE parent.relname = %s ORDER BY child.relname
            """,
            [_parent(parent)],
        )
        names = [row[0] for row in cursor.fetchall()]
    found = []
    for name in names:
        suffix = name.removeprefix(f"{parent}_")
        if suffix.isdigit() and len(suffix) == 8:
            found.append((name, datetime.strptime(suffix, "%Y%m%d").date()))
    return found


def forget(parent: str, day: date) -> None:
    """Forget that the day's partition exists (it was dropped)."""
    _known.discard((parent, day))


def drop_partitions_before(cutoff: date, parent: str = PARENT) -> list[str]:
    """Drop whole days older than ``cutoff``: retention without row-by-row deletes."""
    dropped = []
    with connection.cursor() as cursor:
        for name, day in existing_partitions(parent):
            if day < cutoff:
                cursor.execute(f"DROP TABLE {name}")
                forget(parent, day)
                dropped.append(name)
    return dropped


def ensure_partitions_after_migrate(
    sender: Any, using: str = DEFAULT_DB_ALIAS, **kwargs: Any
) -> None:
    """Today's and the coming days' partitions exist as soon as the schema does (post_migrate,
    also after the test database is emptied): else the first batches of a day create them inside
    their own transactions, where two engines' batches can deadlock on the parent's lock (a
    batch refused, and sent again by its engine). Beat creates them daily after that."""
    if using != DEFAULT_DB_ALIAS:
        return
    with connection.cursor() as cursor:
        # Only the parents that are partitioned now (a migration run backwards leaves them plain).
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'p' AND relname = ANY(%s)",
            [list(PARENTS)],
        )
        partitioned = {name for (name,) in cursor.fetchall()}
    ensure_partitions(parents=tuple(p for p in PARENTS if p in partitioned))
