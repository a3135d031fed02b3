"""controlplane.sqlscript: statements prepared once per connection, executed by name after that,
and a script that fails part-way leaves the next one working."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from controlplane import sqlscript
from controlplane.sqlscript import Script, readable, text_array

pytestmark = pytest.mark.django_db

CREATE = "CREATE TEMP TABLE IF NOT EXISTS script_t (k text PRIMARY KEY, n numeric, at timestamptz)"
INSERT = "INSERT INTO script_t (k, n, at) VALUES (%s, %s, %s)"
READ = "SELECT k, n, at FROM script_t WHERE k = ANY(%s::text[]) ORDER BY k"
AT = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _connection_as_new() -> None:
    # Other tests in this process may have prepared statements on the connection: start as a new
    # connection does (the first script deallocates everything).
    connection.ensure_connection()
    sqlscript._prepared.pop(connection.connection, None)


def _run(*statements: tuple[str, list[object], str | None]) -> dict[str, object]:
    with connection.cursor() as cursor:
        script = Script(cursor)
        for sql, params, fetch in statements:
            script.add(sql, params, fetch=fetch)
        return script.run()


def _prepared() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


def test_a_statement_is_prepared_once_then_executed_by_name() -> None:
    with CaptureQueriesContext(connection) as first:
        rows = _run(
            (CREATE, [], None),
            (INSERT, ["a", Decimal("1.5"), AT], None),
            (READ, [text_array(["a", "b"])], "rows"),
        )
    assert rows["rows"] == [("a", Decimal("1.5"), AT)]
    (sent,) = [q["sql"] for q in first.captured_queries]
    assert sent.count("PREPARE ") == 2  # the CREATE has no parameters: sent as it is
    names = _prepared()
    assert len(names) == 2

    with CaptureQueriesContext(connection) as second:
        rows = _run((INSERT, ["b", Decimal("-2"), AT], None), (READ, [text_array(["b"])], "rows"))
    assert rows["rows"] == [("b", Decimal("-2"), AT)]
    (sent,) = [q["sql"] for q in second.captured_queries]
    assert "PREPARE" not in sent and sent.count("EXECUTE ") == 2
    assert _prepared() == names
    assert "INSERT INTO script_t" in readable(sent)


def test_values_are_quoted_whatever_they_hold() -> None:
    odd = 'it\'s a "quoted" back\\slash; DROP TABLE script_t; --'
    _run((CREATE, [], None))
    rows = _run((INSERT, [odd, None, None], None), (READ, [text_array([odd])], "rows"))
    assert rows["rows"] == [(odd, None, None)]


def test_a_script_that_fails_part_way_leaves_the_next_one_working() -> None:
    _run((CREATE, [], None), (INSERT, ["a", Decimal(1), AT], None))
    # The second INSERT breaks the key: PostgreSQL never runs the READ, so its PREPARE never
    # happened, while the INSERT's did (PREPARE is not undone by the rollback).
    with pytest.raises(IntegrityError), transaction.atomic():
        _run(
            (INSERT, ["z", Decimal(2), AT], None),
            (INSERT, ["a", Decimal(3), AT], None),
            (READ, [text_array(["a"])], "rows"),
        )
    rows = _run(
        (INSERT, ["c", Decimal(4), AT], None), (READ, [text_array(["a", "c", "z"])], "rows")
    )
    assert rows["rows"] == [("a", Decimal(1), AT), ("c", Decimal(4), AT)]
