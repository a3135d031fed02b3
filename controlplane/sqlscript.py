"""Several SQL statements in one round trip, for the paths that follow every engine batch.

A ``Script`` queues statements with their parameters and sends them as one query: PostgreSQL's
simple protocol runs them in order, in the current transaction. The ingest (controlplane.ingest)
and the post-trade evaluation's read (risk.selectors) use it. It relies on Django's default
client-side cursor: with server-side binding a query holds one statement.

Each statement is a prepared one: the first time a connection runs it, the script carries its
``PREPARE``; from then on only ``EXECUTE name(values)``. PostgreSQL then parses and plans it once
per connection instead of once per batch (the connection makes generic plans, see settings): for a
small batch that parsing and planning, with the file-size checks the planner makes for each table
and index, was about half of PostgreSQL's time. The values are written in as SQL literals
(``literal``): what psycopg's client-side cursor would do, which for a dozen statements a batch
cost the ingest more than the rest of it; psycopg's pipeline mode with prepared statements
saved PostgreSQL the same but cost the web process more than it saved.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import msgspec
from psycopg.pq import Escaping


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal, for ``= ANY(%s::text[])``: one value, written here for a fraction of
    what psycopg's adaptation of a list, value by value, costs."""
    quoted = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
    return '{"' + '","'.join(quoted) + '"}' if quoted else "{}"


_json = msgspec.json.Encoder()


def json_text(value: Any) -> str:
    """One statement parameter holding many values: JSON text (Decimals and datetimes become
    exact strings, in C), for ``json_to_recordset(%s::json)``. The script quotes one string
    instead of adapting each value.
    """
    return _json.encode(value).decode()


def literal(value: Any, escape: Callable[[bytes], bytes]) -> str:
    """SQL text for a parameter of the types the scripts use; strings are quoted by libpq."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return escape(value.encode()).decode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Decimal):
        return f"'{value}'::numeric"  # digits, sign, point, exponent: nothing to escape
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


# A prepared statement's parameter types, from the first values it runs with. A string is text
# (a statement that wants json or an array casts it), and None leaves the type to the context.
_TYPES = {
    str: "text",
    int: "bigint",
    Decimal: "numeric",
    datetime: "timestamptz",
    date: "date",
}


@cache
def _prepare(sql: str, types: tuple[str, ...]) -> tuple[str, str]:
    """The statement's name and its PREPARE (``%s`` placeholders become ``$n``)."""
    numbers = iter(range(1, len(types) + 1))
    body = re.sub(r"%s", lambda _: f"${next(numbers)}", sql)
    name = "cp_" + hashlib.blake2b(f"{types}{sql}".encode(), digest_size=8).hexdigest()
    declared = f" ({', '.join(types)})" if types else ""
    _statements[name] = body
    return name, f"PREPARE {name}{declared} AS {body}"


_statements: dict[str, str] = {}


def readable(sql: str) -> str:
    """A script's text with each ``EXECUTE name(...)`` followed by the statement it runs, for
    logs and tests that look at what was sent."""
    return re.sub(
        r"EXECUTE (cp_[0-9a-f]+)", lambda m: f"{m[0]} /* {_statements.get(m[1], '?')} */", sql
    )


# What each connection has prepared (None: unknown since a script failed; PREPARE is not undone
# by a rollback, and the statements after a failed one never ran).
_prepared: weakref.WeakKeyDictionary[Any, set[str] | None] = weakref.WeakKeyDictionary()


class Script:
    """Statements sent as one query, run in order in the current transaction, for one round
    trip. Keeps the rows of those that return some, and the row counts asked for."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.results: dict[str, Any] = {}
        self._escape = Escaping(cursor.connection.pgconn).escape_literal
        self._queued: list[tuple[str, str, str]] = []  # name, PREPARE, EXECUTE
        self._fetch: dict[int, str] = {}
        self._count: dict[int, str] = {}

    def add(
        self,
        sql: str,
        params: Iterable[Any],
        *,
        fetch: str | None = None,
        count: str | None = None,
        prepare: bool = True,
    ) -> None:
        """Queue a statement; ``fetch`` names its rows in ``results``, ``count`` its row count.

        ``prepare=False`` for a statement whose best plan depends on its values or on how big
        its tables are (a lookup in a table that grows all day): a generic plan made while the
        table was small would scan it whole for good. It is then planned each time, with its
        values written in.
        """
        if fetch is not None:
            self._fetch[len(self._queued)] = fetch
        if count is not None:
            self._count[len(self._queued)] = count
        values = tuple(params)
        if not prepare or not values:
            # Also run as it is: a statement PREPARE does not take (CREATE TABLE, ...).
            self._queued.append(("", "", sql % tuple(literal(v, self._escape) for v in values)))
            return
        name, prepare_sql = _prepare(sql, tuple(_TYPES.get(type(v), "unknown") for v in values))
        args = ", ".join(literal(value, self._escape) for value in values)
        self._queued.append((name, prepare_sql, f"EXECUTE {name}({args})"))

    def run(self) -> dict[str, Any]:
        """Send what is queued (if anything); return every result named so far."""
        if not self._queued:
            return self.results
        queued, fetch, count = self._queued, self._fetch, self._count
        self._queued, self._fetch, self._count = [], {}, {}
        connection = self.cursor.cursor.connection
        prepared = _prepared.get(connection)
        sql: list[str] = []
        if prepared is None:
            # A new connection, or one whose earlier script failed part-way: start afresh.
            sql.append("DEALLOCATE ALL")
            prepared = set()
        new: set[str] = set()
        executes: list[int] = []  # which result is each statement's
        for name, prepare_sql, execute in queued:
            if name and name not in prepared and name not in new:
                sql.append(prepare_sql)
                new.add(name)
            executes.append(len(sql))
            sql.append(execute)
        _prepared[connection] = None
        self.cursor.execute(";\n".join(sql))
        _prepared[connection] = prepared | new
        # Any error came with the execute, through Django's wrapper: the results are read from
        # psycopg's cursor directly.
        cursor = self.cursor.cursor
        at = 0
        for index, position in enumerate(executes):
            while at < position:
                cursor.nextset()
                at += 1
            if index in fetch:
                self.results[fetch[index]] = cursor.fetchall()
            if index in count:
                self.results[count[index]] = cursor.rowcount
        return self.results
