"""Retention of the engines' day-partitioned tables: a day past its table's retention is first
archived to a gzip'd CSV file, then detached and dropped.

An archive is written under a temporary name, flushed to disk and renamed, so a file under its
final name is always whole. The day's partition stays locked against writes (SHARE) from the
moment it is read until it is dropped, in one transaction: no row comes in between. If anything
fails, the transaction rolls back and nothing is dropped; a run later writes the file again.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

from controlplane import partitions
from controlplane.models import WORKING_ORDER, Fill, Order

log = logging.getLogger(__name__)

# Each engine table's retention setting (days kept).
RETENTION_SETTINGS = {
    partitions.METRIC_SAMPLES: "METRIC_RETENTION_DAYS",
    partitions.ENGINE_LOGS: "ENGINE_LOG_RETENTION_DAYS",
    partitions.ACCOUNT_SNAPSHOTS: "ACCOUNT_SNAPSHOT_RETENTION_DAYS",
}
# The detach waits for the parent table's lock behind the ingest's transactions: past this it
# gives up (the day is tried again at the next run) rather than hold up every batch behind it.
DETACH_LOCK_TIMEOUT = "5s"


class ArchiveError(Exception):
    """A day could not be archived: nothing of it was dropped."""


def archive_root() -> Path:
    return Path(settings.ARCHIVE_DIR)


def archive_path(table: str, day: date, *, suffix: str = "", root: Path | None = None) -> Path:
    return (root or archive_root()) / table / f"{day:%Y-%m-%d}{suffix}.csv.gz"


def _remove(path: Path) -> None:
    # Whatever kept the file from being written may keep it from being removed (no directory).
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def write_archive(cursor: object, copy_sql: str, path: Path) -> None:
    """Stream ``copy_sql`` (a COPY .. TO STDOUT) into ``path``, gzip'd, under a temporary name,
    fsynced, then renamed; raises ArchiveError naming the file when it cannot be written."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(partial, "wb") as raw,
            gzip.GzipFile(filename=path.name.removesuffix(".gz"), mode="wb", fileobj=raw) as out,
            cursor.copy(copy_sql) as copy,  # type: ignore[attr-defined]
        ):
            for chunk in copy:
                out.write(chunk)
            out.close()
            raw.flush()
            os.fsync(raw.fileno())
        partial.replace(path)
        # The rename is durable once the directory is.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        _remove(partial)
        raise ArchiveError(f"cannot write the archive {path}: {exc}") from exc
    except BaseException:
        # A COPY that failed half way: no partial file is left behind.
        _remove(partial)
        raise


def archive_and_drop_day(table: str, day: date, *, root: Path | None = None) -> Path:
    """Archive the day's partition of ``table`` to its file, then detach and drop it."""
    name = partitions.partition_name(day, table)
    path = archive_path(table, day, root=root)
    with transaction.atomic(), connection.cursor() as cursor:
        # No row may come into the day between its archive and its drop.
        cursor.execute(f"LOCK TABLE {name} IN SHARE MODE")
        write_archive(cursor.cursor, f"COPY {name} TO STDOUT WITH (FORMAT csv, HEADER)", path)
        cursor.execute(f"SET LOCAL lock_timeout = '{DETACH_LOCK_TIMEOUT}'")
        cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")
    partitions.forget(table, day)
    return path


def archive_and_delete_default(table: str, cutoff: date, *, root: Path | None = None) -> list[Path]:
    """Archive, a file a day, the rows of the DEFAULT partition older than ``cutoff`` (days that
    had no partition of their own), then delete them."""
    default = partitions.default_name(table)
    end, _ = partitions.day_bounds(cutoff)
    written = []
    with transaction.atomic(), connection.cursor() as cursor:
        # Blocks writes into DEFAULT only (rows of days without a partition: rare), not reads.
        cursor.execute(f"LOCK TABLE {default} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute(
            f"SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM {default} WHERE ts < %s"
            " ORDER BY 1",
            [end],
        )
        for (day,) in cursor.fetchall():
            start, stop = partitions.day_bounds(day)
            path = archive_path(table, day, suffix=".default", root=root)
            query = (
                f"COPY (SELECT * FROM {default} WHERE ts >= '{start.isoformat()}'"
                f" AND ts < '{stop.isoformat()}' ORDER BY ts, id)"
                " TO STDOUT WITH (FORMAT csv, HEADER)"
            )
            write_archive(cursor.cursor, query, path)
            written.append(path)
        if written:
            cursor.execute(f"DELETE FROM {default} WHERE ts < %s", [end])
    return written


def apply_retention(
    table: str, *, today: date | None = None, root: Path | None = None
) -> list[Path]:
    """Archive and drop ``table``'s days older than its retention setting; returns the files
    written. A day that cannot be archived is logged and kept, with the days after it."""
    days = getattr(settings, RETENTION_SETTINGS[table])
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=days)
    written = []
    try:
        for _, day in partitions.existing_partitions(table):
            if day < cutoff:
                written.append(archive_and_drop_day(table, day, root=root))
        written += archive_and_delete_default(table, cutoff, root=root)
    except Exception:
        log.exception("%s: days before %s not archived; nothing of them was dropped", table, cutoff)
    return written


# --- Orders and fills: kept, archived on request -------------------------------------------------


def archive_trades(
    older_than_days: int,
    *,
    delete: bool = False,
    today: date | None = None,
    root: Path | None = None,
) -> dict[str, list[Path]]:
    """Archive the orders (by day of their latest report, updated_at) and fills (by day of ts)
    older than ``older_than_days``, a file a day and table; with ``delete``, delete what was
    archived: the fills, and the orders no longer working with no fill left. Returns the files
    written by table.

    One REPEATABLE READ transaction: the deletes see exactly the rows the files hold (a row
    written meanwhile is neither), and a failure writes no row off."""
    if older_than_days < 1:
        raise ValueError(f"older_than_days must be 1 or more, not {older_than_days}")
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=older_than_days)
    end, _ = partitions.day_bounds(cutoff)
    tables = ((Fill._meta.db_table, "ts"), (Order._meta.db_table, "updated_at"))
    written: dict[str, list[Path]] = {table: [] for table, _ in tables}
    # Inside a caller's transaction, its isolation stands (it has run queries already).
    outermost = not connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor:
        if outermost:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for table, column in tables:
            cursor.execute(
                f"SELECT DISTINCT ({column} AT TIME ZONE 'UTC')::date FROM {table}"
                f" WHERE {column} < %s ORDER BY 1",
                [end],
            )
            for (day,) in cursor.fetchall():
                start, stop = partitions.day_bounds(day)
                path = archive_path(table, day, root=root)
                query = (
                    f"COPY (SELECT * FROM {table} WHERE {column} >= '{start.isoformat()}'"
                    f" AND {column} < '{stop.isoformat()}' ORDER BY id)"
                    " TO STDOUT WITH (FORMAT csv, HEADER)"
                )
                write_archive(cursor.cursor, query, path)
                written[table].append(path)
        if delete:
            fill, order = Fill._meta.db_table, Order._meta.db_table
            cursor.execute(f"DELETE FROM {fill} WHERE ts < %s", [end])
            cursor.execute(
                f"DELETE FROM {order} o WHERE o.updated_at < %s AND NOT o.status = ANY(%s)"
                f" AND NOT EXISTS (SELECT 1 FROM {fill} f WHERE f.order_id = o.id)",
                [end, [str(status) for status in WORKING_ORDER]],
            )
    return written
