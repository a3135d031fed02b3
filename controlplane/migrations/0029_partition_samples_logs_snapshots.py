"""Metric samples, engine logs and account snapshots become tables partitioned by UTC day of ts.

At 1 Hz an engine writes some 86,000 rows a day into each: partitioned by day, as the event log
is, their retention drops (after archiving, controlplane.retention) whole days instead of
deleting rows one by one, and their indexes stay the size of the days kept.

Each table is renamed, a partitioned table of the same columns takes its name (with a DEFAULT
partition for days without one of their own), one partition is made for each UTC day the old
rows cover, the rows are copied over with their ids, the id sequence goes on from where it was,
and the indexes and constraints Django knows are built on the new table under their names; the
old table is dropped. This rewrites the three tables under an exclusive lock, a one-off that
takes as long as copying them (docs/operations.md).

A partitioned table's unique keys must include its partition key: the primary key becomes
(id, ts), and the (engine, seq) keys become (engine, seq, ts) (a replayed event carries its ts
again, so the key still refuses it). Django keeps ``id`` as each model's primary key: ids stay
unique, drawn from the one sequence.
"""

from django.db import migrations, models

ENGINE = "controlplane_engine"


def _drop_keys_and_indexes(table: str) -> str:
    """SQL dropping every constraint (but NOT NULL) and index of ``table``: their names are
    Django's, which the new table takes."""
    return f"""
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT conname FROM pg_constraint WHERE conrelid = '{table}'::regclass
             AND contype IN ('p', 'u', 'f', 'c') LOOP
        EXECUTE format('ALTER TABLE {table} DROP CONSTRAINT %I', r.conname);
    END LOOP;
    FOR r IN SELECT indexrelid::regclass AS name FROM pg_index
             WHERE indrelid = '{table}'::regclass LOOP
        EXECUTE format('DROP INDEX %s', r.name);
    END LOOP;
END $$;
"""


def _day_partitions(table: str, source: str) -> str:
    """SQL giving ``table`` a partition for each UTC day that ``source``'s rows cover."""
    return f"""
DO $$
DECLARE day date;
BEGIN
    FOR day IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM {source} LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF {table} FOR VALUES FROM (%L) TO (%L)',
                       '{table}_' || to_char(day, 'YYYYMMDD'),
                       day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
END $$;
"""


def _move(table: str, columns: str, old: str) -> str:
    """SQL copying ``old``'s rows (their ids too) into ``table`` and going on with its ids."""
    return f"""
INSERT INTO {table} ({columns}) SELECT {columns} FROM {old};
SELECT setval(pg_get_serial_sequence('{table}', 'id'), last_value, is_called)
FROM {old}_id_seq;
DROP TABLE {old};
"""


def _rename(table: str, to: str) -> str:
    return f"""
LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;
ALTER TABLE {table} RENAME TO {to};
ALTER SEQUENCE {table}_id_seq RENAME TO {to}_id_seq;
"""


# table: (columns with their types, the columns' names, Django's foreign key and its index,
# the indexes and unique keys as the partitioned table has them, as the plain one had them)
TABLES = {
    "controlplane_metricsample": (
        "ts timestamptz NOT NULL, name varchar(64) NOT NULL, value double precision NOT NULL,"
        " seq bigint NOT NULL, engine_id bigint NOT NULL",
        "id, ts, name, value, seq, engine_id",
        (
            "controlplane_metrics_engine_id_656dfd7a_fk_controlpl",
            "controlplane_metricsample_engine_id_656dfd7a",
        ),
        """
CREATE INDEX metric_engine_name_ts_idx ON controlplane_metricsample (engine_id, name, ts)
    INCLUDE (value);
ALTER TABLE controlplane_metricsample ADD CONSTRAINT metric_unique_seq UNIQUE (engine_id, seq, ts);
""",
        """
CREATE INDEX metric_engine_name_ts_idx ON controlplane_metricsample (engine_id, name, ts)
    INCLUDE (value);
ALTER TABLE controlplane_metricsample ADD CONSTRAINT metric_unique_seq UNIQUE (engine_id, seq);
""",
    ),
    "controlplane_enginelog": (
        "ts timestamptz NOT NULL, level varchar(10) NOT NULL, message text NOT NULL,"
        " context jsonb NOT NULL, seq bigint, engine_id bigint NOT NULL",
        "id, ts, level, message, context, seq, engine_id",
        (
            "controlplane_enginel_engine_id_501acbc9_fk_controlpl",
            "controlplane_enginelog_engine_id_501acbc9",
        ),
        """
CREATE INDEX log_engine_recent_idx ON controlplane_enginelog (engine_id, ts DESC);
CREATE INDEX log_engine_errors_idx ON controlplane_enginelog (engine_id, ts DESC)
    WHERE level IN ('error', 'critical');
CREATE UNIQUE INDEX log_unique_seq ON controlplane_enginelog (engine_id, seq, ts)
    WHERE seq IS NOT NULL;
""",
        """
CREATE INDEX log_engine_recent_idx ON controlplane_enginelog (engine_id, ts DESC);
CREATE INDEX log_engine_errors_idx ON controlplane_enginelog (engine_id, ts DESC)
    WHERE level IN ('error', 'critical');
CREATE UNIQUE INDEX log_unique_seq ON controlplane_enginelog (engine_id, seq)
    WHERE seq IS NOT NULL;
""",
    ),
    "controlplane_accountsnapshot": (
        "ts timestamptz NOT NULL, equity numeric(24,8) NOT NULL, cash numeric(24,8) NOT NULL,"
        " margin_used numeric(24,8) NOT NULL, currency varchar(16) NOT NULL,"
        " seq bigint NOT NULL, engine_id bigint NOT NULL",
        "id, ts, equity, cash, margin_used, currency, seq, engine_id",
        (
            "controlplane_account_engine_id_f09ce9f0_fk_controlpl",
            "controlplane_accountsnapshot_engine_id_f09ce9f0",
        ),
        """
CREATE INDEX snapshot_engine_ts_idx ON controlplane_accountsnapshot (engine_id, ts, seq)
    INCLUDE (equity);
ALTER TABLE controlplane_accountsnapshot
    ADD CONSTRAINT snapshot_unique_seq UNIQUE (engine_id, seq, ts);
""",
        """
CREATE INDEX snapshot_engine_ts_idx ON controlplane_accountsnapshot (engine_id, ts, seq)
    INCLUDE (equity);
ALTER TABLE controlplane_accountsnapshot ADD CONSTRAINT snapshot_unique_seq UNIQUE (engine_id, seq);
""",
    ),
}


def _foreign_key(table: str, foreign_key: tuple[str, str]) -> str:
    constraint, index = foreign_key
    return f"""
ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY (engine_id) REFERENCES {ENGINE} (id)
    DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX {index} ON {table} (engine_id);
"""


def forward(table: str) -> str:
    columns, names, foreign_key, indexes, _ = TABLES[table]
    old = f"{table}_unpartitioned"
    return (
        _rename(table, old)
        + _drop_keys_and_indexes(old)
        + f"""
CREATE TABLE {table} (
    id bigint GENERATED BY DEFAULT AS IDENTITY, {columns}, PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE {table}_default PARTITION OF {table} DEFAULT;
"""
        + _day_partitions(table, old)
        # The rows first, the indexes after: building an index at once beats growing it.
        + _move(table, names, old)
        + _foreign_key(table, foreign_key)
        + indexes
    )


def backward(table: str) -> str:
    columns, names, foreign_key, _, indexes = TABLES[table]
    old = f"{table}_partitioned"
    return (
        _rename(table, old)
        + _drop_keys_and_indexes(old)
        + f"""
CREATE TABLE {table} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, {columns});
"""
        + _move(table, names, old)
        + _foreign_key(table, foreign_key)
        + indexes
    )


def _unique(model: str, name: str, fields: tuple[str, ...], **options: object) -> list:
    return [
        migrations.RemoveConstraint(model_name=model, name=name),
        migrations.AddConstraint(
            model_name=model,
            constraint=models.UniqueConstraint(fields=fields, name=name, **options),
        ),
    ]


STATE = [
    *_unique("metricsample", "metric_unique_seq", ("engine", "seq", "ts")),
    *_unique(
        "enginelog",
        "log_unique_seq",
        ("engine", "seq", "ts"),
        condition=models.Q(("seq__isnull", False)),
    ),
    *_unique("accountsnapshot", "snapshot_unique_seq", ("engine", "seq", "ts")),
]


class Migration(migrations.Migration):
    dependencies = [
        ("controlplane", "0028_command_engine_connected"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(forward(table), backward(table)) for table in TABLES
            ],
            state_operations=STATE,
        )
    ]
