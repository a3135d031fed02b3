"""Several SQL statements in one round trip, for the paths that follow every engine batch.

A ``Script`` queues statements with their parameters written in as SQL literals and sends them as
one query: PostgreSQL's simple protocol runs them in order, in the current transaction. The
ingest (controlplane.ingest) and the post-trade evaluation's read (risk.selectors) use it. It
relies on Django's default client-side cursor: with server-side binding a query holds one
statement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg.pq import Escaping


def text_array(values: Iterable[str]) -> str:
    """A ``text[]`` literal, for ``= ANY(%s::text[])``: the parser makes it a constant, so the
    planner sees how many values there are and, whatever plan it picks with statistics that may be
    stale, matches them through a hash, never once per row and value. Written here, it costs a
    fraction of psycopg's adaptation of a list, value by value."""
    quoted = [v.replace("\\", "\\\\").replace('"', '\\"') for v in values]
    return '{"' + '","'.join(quoted) + '"}' if quoted else "{}"


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
    raise TypeError(f"no SQL literal for {type(value).__name__}")


class Script:
    """Statements sent as one query: the simple protocol runs them in order, in the current
    transaction, for one round trip. Keeps the rows of those that return some.

    Parameters are written into the statements here (``literal``): what psycopg's client-side
    cursor would do, which for a dozen statements a batch cost the ingest more than the rest of it.
    """

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor
        self.results: dict[str, Any] = {}
        self._escape = Escaping(cursor.connection.pgconn).escape_literal
        self._sql: list[str] = []
        self._fetch: dict[int, str] = {}
        self._count: dict[int, str] = {}

    def add(
        self, sql: str, params: Iterable[Any], *, fetch: str | None = None, count: str | None = None
    ) -> None:
        """Queue a statement; ``fetch`` names its rows in ``results``, ``count`` its row count."""
        if fetch is not None:
            self._fetch[len(self._sql)] = fetch
        if count is not None:
            self._count[len(self._sql)] = count
        self._sql.append(sql % tuple(literal(value, self._escape) for value in params))

    def run(self) -> dict[str, Any]:
        """Send what is queued (if anything); return every result named so far."""
        if self._sql:
            self.cursor.execute(";\n".join(self._sql))
            # Any error came with the execute, through Django's wrapper: the results are read
            # from psycopg's cursor directly.
            cursor = self.cursor.cursor
            for index in range(len(self._sql)):
                if index:
                    cursor.nextset()
                if index in self._fetch:
                    self.results[self._fetch[index]] = cursor.fetchall()
                if index in self._count:
                    self.results[self._count[index]] = cursor.rowcount
            self._sql, self._fetch, self._count = [], {}, {}
        return self.results
