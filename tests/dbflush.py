"""Emptying the test database after a test that committed (``transactional_db``), faster.

Django's ``flush`` truncates every table in one statement. PostgreSQL gives each truncated table
and index new files, so that costs the same whatever the test wrote: over two seconds on a busy
machine (some eighty tables, three hundred indexes), after every test that runs a server. A test
writes a few rows in a few tables, and deleting those is quick: here ``flush`` deletes the rows of
the tables that hold any, its foreign keys checked at commit (all are deferrable, as Django makes
them), and truncates only a table whose triggers refuse a DELETE (the append-only audit trail).
The result is the same as Django's: every table empty, then the post_migrate handlers write what
they always write. Sequences are not reset, as Django's flush does not reset them for tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import sql as management_sql
from django.core.management.commands import flush as flush_command

# Tables of the app with row triggers of their own (not a foreign key's): a DELETE would fire them.
_TABLES_WITH_TRIGGERS = """
SELECT DISTINCT coalesce(parent.relname, child.relname)
FROM pg_trigger
JOIN pg_class child ON child.oid = pg_trigger.tgrelid
LEFT JOIN pg_inherits ON pg_inherits.inhrelid = child.oid
LEFT JOIN pg_class parent ON parent.oid = pg_inherits.inhparent
WHERE NOT pg_trigger.tgisinternal
"""


def sql_flush_by_delete(
    style: Any, connection: Any, reset_sequences: bool = True, allow_cascade: bool = False
) -> list[str]:
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    if connection.vendor != "postgresql" or reset_sequences or not tables:
        return management_sql.sql_flush(
            style, connection, reset_sequences=reset_sequences, allow_cascade=allow_cascade
        )
    quote = connection.ops.quote_name
    probe = " UNION ALL ".join(
        f"SELECT {index} WHERE EXISTS (SELECT 1 FROM {quote(table)})"
        for index, table in enumerate(tables)
    )
    with connection.cursor() as cursor:
        cursor.execute(probe)
        with_rows = [tables[index] for (index,) in cursor.fetchall()]
        cursor.execute(_TABLES_WITH_TRIGGERS)
        with_triggers = {name for (name,) in cursor.fetchall()}
    truncated = [table for table in with_rows if table in with_triggers]
    deleted = [table for table in with_rows if table not in with_triggers]
    # Truncations first: PostgreSQL refuses to truncate a table with checks pending on it.
    return [
        "SET CONSTRAINTS ALL DEFERRED",
        *connection.ops.sql_flush(style, truncated, allow_cascade=True),
        *(f"DELETE FROM {quote(table)}" for table in deleted),
    ]


@pytest.hookimpl
def pytest_configure(config: pytest.Config) -> None:
    flush_command.sql_flush = sql_flush_by_delete
