"""Durable, idempotent storage of engine event batches.

A batch is stored in one transaction: the raw events go to the partitioned event log, and are
projected into orders, fills, the position ledger, account snapshots, metrics and logs, and the
engine's running figures. The batch is acknowledged only after the commit. Several engines'
batches may share the transaction (``ingest_batches``): the engine socket stores the small frames
that wait at the same time together (controlplane.socket._EventsWriter).

Idempotence: per engine, events are stored in seq order and the engine row keeps the highest
seq processed (``Engine.last_seq``, updated under a row lock in the same transaction). An event at
or below that watermark is a replay and changes nothing. Fills are also unique by
(engine, fill_id) in the database, so a fill re-sent under a new seq is not counted twice either.
An id reused for another fill or order (by an engine that lost its ids) is not a replay: it is
refused by name, and what is stored stands (_check_orders, _same_fill; docs/protocol.md, "Ids").

Engines send small frames most of the time (ten events every 20 ms), so what a batch costs is
mostly per statement (parsing, planning, executor start-up, a round trip, the Python that builds
it) and per transaction, not per row. Batches stored together therefore share their statements:
each table's rows of every engine of the group go in one statement, and a group of small batches
takes two round trips between BEGIN and COMMIT, whatever its number of engines:

1. one script that locks the engines' rows and reads everything the batches need: the
   watermarks, session figures and counts, the instruments, the positions their fills and reports
   touch, their orders as stored (status, last report, creation) and which of their fill ids are
   stored;
2. after the ledgers are worked out in Python, one script of set-based writes (only the ones
   with something to write) ending with the engines' rows' update, with the counts they keep
   (Engine.counts_day).

Ten engines' frames of ten events cost PostgreSQL about a fifth of what ten transactions of one
frame each cost (bench/fanout.py: 0.31 of a core instead of 0.7 at 5,000 events/s).

The scripts' statements are prepared once per connection (controlplane.sqlscript), but for the
lookups in tables that grow all day, which are planned each time.

Rows travel as one JSON document per table, encoded in C by msgspec and unpacked by PostgreSQL's
``json_to_recordset``: no per-value adaptation in Python, no COPY set-up and finish per small
table. A table with COPY_MIN_ROWS rows or more in a group still goes in with COPY (a round trip
of its own), whose format costs PostgreSQL less per row than JSON text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from typing import Any, NamedTuple

import msgspec
from django.db import connection, transaction
from psycopg.errors import UniqueViolation

from controlplane import partitions
from controlplane.models import Engine, Order
from controlplane.sqlscript import Script, json_text, text_array
from engine_sdk import protocol as p

log = logging.getLogger(__name__)

ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.00000001")


class UnknownEngine(LookupError):
    """A batch's engine does not exist (deleted meanwhile): no fault of its events."""


@dataclass
class IngestResult:
    ack_seq: int
    stored: int = 0
    replayed: int = 0
    errors: list[p.Error] = field(default_factory=list)
    # The kinds of the events stored, and the engine row as the batch left it (with the fields of
    # ENGINE_FIELDS; the others load on access): the post-trade evaluation that follows the batch
    # reads them instead of querying again.
    kinds: frozenset[str] = frozenset()
    engine: Engine | None = None


@dataclass
class _Position:
    instrument_id: int
    quantity: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_price: Decimal | None = None
    reported_quantity: Decimal | None = None
    reported_avg_price: Decimal | None = None
    reported_at: datetime | None = None
    mismatch_since: datetime | None = None


def apply_fill(
    pos: _Position,
    *,
    side: str,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    multiplier: Decimal,
) -> None:
    """Update a position ledger with one fill: weighted average on increase, realised P&L on
    decrease, and a new average at the fill price when the position flips sign."""
    signed = quantity if side == "buy" else -quantity
    old = pos.quantity
    new = old + signed
    if old == 0 or (old > 0) == (signed > 0):
        total_cost = abs(old) * pos.avg_price + quantity * price
        pos.avg_price = (total_cost / abs(new)).quantize(PRICE_PLACES)
    else:
        closed = min(quantity, abs(old))
        direction = Decimal(1) if old > 0 else Decimal(-1)
        pos.realized_pnl += closed * (price - pos.avg_price) * direction * multiplier
        if new == 0:
            pos.avg_price = ZERO
        elif (new > 0) != (old > 0):
            pos.avg_price = price
    pos.quantity = new
    pos.realized_pnl -= fee
    pos.last_price = price


def _error(code: str, message: str, event: p.Event, field_name: str | None = None) -> p.Error:
    return p.Error(code=code, message=message, field=field_name, seq=event.seq)


@cache
def _names(columns: str) -> tuple[str, ...]:
    return tuple(column.split()[0] for column in columns.split(","))


@cache
def _rows(columns: str, lead: str = "", staged: str | None = None) -> str:
    """``SELECT [<lead>,] <each column>`` from a JSON array of objects (one parameter after the
    ``lead`` ones), the objects' keys named and typed by ``columns`` ("name type, ..."), or
    from the ``staged`` table of those columns."""
    names = ", ".join(f"r.{name}" for name in _names(columns))
    source = f"{staged} AS r" if staged else f"json_to_recordset(%s::json) AS r({columns})"
    return f"SELECT {lead + ', ' if lead else ''}{names} FROM {source}"


# From this many rows on, a table's rows go in with COPY, in a round trip of their own. A JSON
# parameter is text that PostgreSQL scans (about 10 ns a byte) and then unpacks, which costs it
# more than COPY's format; below this, COPY's round trip, set-up and finish cost more, mostly in
# the web process. Measured: frames of 250 to 500 events took as long either way, with 2 ms less
# of the web process's CPU in JSON; frames of 2,000 events took 20 ms longer in JSON.
COPY_MIN_ROWS = 300


def _copy(
    cursor: Any, table: str, columns: Iterable[str] | None, rows: Iterable[tuple[Any, ...]]
) -> None:
    target = f"{table} ({', '.join(columns)})" if columns else table
    # Decimals and datetimes become text in one pass in C (msgspec): psycopg's own dumpers pick
    # a dumper per value for them, which cost more than the rest of the ingest's Python put
    # together. PostgreSQL parses the ISO 8601 text ("...Z" or "+02:00") exactly.
    rows = msgspec.to_builtins(rows if isinstance(rows, list) else list(rows))
    with cursor.cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _stage(script: Script, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` into a temporary table of ``columns``, for a set-based statement to read."""
    script.add(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS", [])
    # The table empties itself at each commit; rows are left over only when batches share an
    # outer transaction. DELETE on an empty table costs nothing, where TRUNCATE would give the
    # table a new file every batch.
    script.add(f"DELETE FROM {table}", [])
    script.run()
    _copy(script.cursor, table, None, rows)


def _json_rows(columns: str, rows: list[tuple[Any, ...]]) -> str:
    """``rows`` as the JSON array of objects that ``_rows(columns)`` reads."""
    names = _names(columns)
    return json_text([dict(zip(names, row, strict=True)) for row in rows])


def _append(
    script: Script,
    table: str,
    columns: str,
    rows: list[tuple[Any, ...]],
    json_column: str | None = None,
) -> None:
    """Insert into an append-only table the ``rows`` (ordered as ``columns``, the engine's id
    first); ``json_column`` holds objects."""
    if not rows:
        return
    if len(rows) < COPY_MIN_ROWS:
        script.add(
            f"INSERT INTO {table} ({', '.join(_names(columns))}) {_rows(columns)}",
            [_json_rows(columns, rows)],
        )
        return
    if json_column is not None:
        # COPY takes a JSON column as its text.
        at = _names(columns).index(json_column)
        rows = [(*row[:at], json_text(row[at]), *row[at + 1 :]) for row in rows]
    _copy(script.cursor, table, _names(columns), rows)


# The engine fields the ingest returns to the post-trade evaluation (IngestResult.engine), in the
# model's order, as Model.from_db wants them.
ENGINE_FIELDS = tuple(
    f.attname
    for f in Engine._meta.concrete_fields
    if f.attname
    in {"id", "name", "strategy_tags", "desired_state", "equity", "session_start_equity",
        "day_pnl", "drawdown_pct", "counts_day", "orders_today", "rejected_today",
        "fills_today", "working_orders"}
)  # fmt: skip
assert ENGINE_FIELDS[0] == "id"  # the engines' updates are matched to their batches by it


@dataclass
class _Counts:
    """The engine row's counts (see Engine.counts_day), as a batch finds and leaves them."""

    day: date | None
    orders: int
    rejected: int
    fills: int
    working: int


class _StoredOrder(NamedTuple):
    """An order as stored: its status and last report, and what names it for good (an order's
    instrument and side never change; its type and quantity may be amended while it works)."""

    status: str
    last_seq: int
    created_at: datetime
    updated_at: datetime
    instrument_id: int
    side: str
    order_type: str
    quantity: Decimal


class _FillContent(NamedTuple):
    """What a fill says, compared when its fill_id comes again: the same content is a replay,
    other content a second fill under a used id. Its time and liquidity flag are not compared:
    a broker that reports a fill again may stamp it anew."""

    client_order_id: str
    instrument_id: int
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal


@dataclass
class _Read:
    """What the first round trip found for one engine, under the engine's row lock."""

    last_seq: int | None = None
    session_at: datetime | None = None
    session_equity: Decimal | None = None
    high_water_mark: Decimal | None = None
    counts: _Counts | None = None
    positions: dict[int, _Position] = field(default_factory=dict)
    # The batch's orders stored before, by client_order_id.
    stored_orders: dict[str, _StoredOrder] = field(default_factory=dict)
    # The batch's fill ids stored before, with what those fills said.
    stored_fills: dict[str, _FillContent] = field(default_factory=dict)


# The row locks that serialise each engine's batches, taken in id order (two transactions that
# lock some of the same engines queue instead of deadlocking). An UPDATE takes them as SELECT ..
# FOR UPDATE would, and every batch (a replayed one too) records when its engine was last heard
# from anyway.
_LOCK_ENGINES = """
    UPDATE controlplane_engine e SET last_seen_at = %s
    FROM (SELECT id FROM controlplane_engine WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE)
        AS locked
    WHERE e.id = locked.id
    RETURNING e.id, e.last_seq, e.session_start_at, e.session_start_equity, e.high_water_mark,
        e.counts_day, e.orders_today, e.rejected_today, e.fills_today, e.working_orders"""
# Lists of symbols are text[] literals (text_array); (engine, key) pairs are JSON documents.
_READ_INSTRUMENTS = (
    "SELECT symbol, id, multiplier FROM controlplane_instrument WHERE symbol = ANY(%s::text[])"
)
# Each (engine, key) pair is looked up on its own, in a unique index: LIMIT 1 keeps the planner
# from joining the whole JSON document at once, which it takes for a hundred rows, by hashing a
# scan of the table (seen on the positions, which a day's updates leave full of dead rows).
_READ_POSITIONS = """
    SELECT k.engine_id, p.instrument_id, p.quantity, p.avg_price, p.realized_pnl, p.last_price,
           p.reported_quantity, p.reported_avg_price, p.reported_at, p.mismatch_since
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, symbol text)
    CROSS JOIN LATERAL (
        SELECT p.* FROM controlplane_position p
        JOIN controlplane_instrument i ON i.id = p.instrument_id
        WHERE p.engine_id = k.engine_id AND i.symbol = k.symbol LIMIT 1) AS p"""
_ORDER_BY_PAIR = """
    CROSS JOIN LATERAL (
        SELECT * FROM controlplane_order o
        WHERE o.engine_id = k.engine_id AND o.client_order_id = k.client_order_id LIMIT 1) AS o"""
_READ_ORDERS = f"""
    SELECT o.engine_id, o.client_order_id, o.status, o.last_seq, o.created_at, o.updated_at,
           o.instrument_id, o.side, o.order_type, o.quantity
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, client_order_id text)
    {_ORDER_BY_PAIR}"""
_READ_ORDER_IDS = f"""
    SELECT o.engine_id, o.client_order_id, o.id, o.expected_price
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, client_order_id text)
    {_ORDER_BY_PAIR}"""
# With what each stored fill says (_FillContent), to tell a replay from a reused fill_id.
_READ_FILL_IDS = """
    SELECT f.engine_id, f.fill_id, o.client_order_id, f.instrument_id, f.side, f.quantity,
           f.price, f.fee
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, fill_id text)
    CROSS JOIN LATERAL (
        SELECT * FROM controlplane_fill f
        WHERE f.engine_id = k.engine_id AND f.fill_id = k.fill_id LIMIT 1) AS f
    JOIN controlplane_order o ON o.id = f.order_id"""


def _pairs(key: str, pairs: Iterable[tuple[int, str]]) -> str:
    return json_text([{"engine_id": engine_id, key: value} for engine_id, value in pairs])


@dataclass
class _Group:
    """The batches stored together in one transaction: what the read found, and what the
    projections write, each table's rows of every engine in one statement."""

    now: datetime
    reads: dict[int, _Read] = field(default_factory=dict)
    instruments: dict[str, tuple[int, Decimal]] = field(default_factory=dict)
    # False when the batches have too many fills to look their ids up first (see _insert_fills).
    fill_ids_read: bool = True
    orders: list[tuple[Any, ...]] = field(default_factory=list)
    fills: list[tuple[int, p.FillEvent, IngestResult, set[int]]] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[tuple[Any, ...]] = field(default_factory=list)
    metrics: list[tuple[Any, ...]] = field(default_factory=list)
    logs: list[tuple[Any, ...]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    engines: dict[int, dict[str, Any]] = field(default_factory=dict)


def _read(cursor: Any, batches: list[tuple[int, list[p.Event]]], now: datetime) -> _Group:
    """Lock the engines' rows and read what the batches need, in one round trip.

    The watermarks are not known before the locks, so this reads for every event of the
    batches, replays included; the caller keeps what concerns the fresh ones. Each statement
    runs after the locks are held and sees everything the engines' earlier batches committed.
    """
    symbols: set[str] = set()
    ledger: set[tuple[int, str]] = set()
    coids: set[tuple[int, str]] = set()
    fill_ids: set[tuple[int, str]] = set()
    for engine_id, events in batches:
        for event in events:
            kind = type(event)
            if kind is p.FillEvent:
                ledger.add((engine_id, event.symbol))  # type: ignore[union-attr]
                coids.add((engine_id, event.client_order_id))  # type: ignore[union-attr]
                fill_ids.add((engine_id, event.fill_id))  # type: ignore[union-attr]
            elif kind is p.PositionEvent:
                ledger.add((engine_id, event.symbol))  # type: ignore[union-attr]
            elif kind is p.OrderEvent:
                symbols.add(event.symbol)  # type: ignore[union-attr]
                coids.add((engine_id, event.client_order_id))  # type: ignore[union-attr]
    symbols |= {symbol for _, symbol in ledger}
    ids = sorted(engine_id for engine_id, _ in batches)
    group = _Group(now=now, fill_ids_read=len(fill_ids) < COPY_MIN_ROWS)
    script = Script(cursor)
    script.add(_LOCK_ENGINES, [now, "{" + ",".join(map(str, ids)) + "}"], fetch="engines")
    if symbols:
        script.add(_READ_INSTRUMENTS, [text_array(symbols)], fetch="instruments")
    # Planned each time (prepare=False): lookups in tables that grow all day.
    if ledger:
        script.add(_READ_POSITIONS, [_pairs("symbol", ledger)], fetch="positions", prepare=False)
    if coids:
        # Whether each order is new and what it was: for the fills' orders and the counts.
        script.add(_READ_ORDERS, [_pairs("client_order_id", coids)], fetch="orders", prepare=False)
    if fill_ids and group.fill_ids_read:
        script.add(_READ_FILL_IDS, [_pairs("fill_id", fill_ids)], fetch="fill_ids", prepare=False)
    rows = script.run()
    for engine_id, last_seq, session_at, session_equity, hwm, *counts in rows["engines"]:
        group.reads[engine_id] = _Read(
            last_seq=last_seq,
            session_at=session_at,
            session_equity=session_equity,
            high_water_mark=hwm,
            counts=_Counts(*counts),
        )
    group.instruments = {s: (pk, mult) for s, pk, mult in rows.get("instruments", ())}
    for engine_id, *row in rows.get("positions", ()):
        group.reads[engine_id].positions[row[0]] = _Position(*row)
    for engine_id, coid, *row in rows.get("orders", ()):
        group.reads[engine_id].stored_orders[coid] = _StoredOrder(*row)
    for engine_id, fill_id, *content in rows.get("fill_ids", ()):
        group.reads[engine_id].stored_fills[fill_id] = _FillContent(*content)
    return group


def ingest_events(
    *, engine_id: int, events: list[p.Event], now: datetime | None = None
) -> IngestResult:
    """Store a batch for one engine. Raises on a database failure (nothing is then stored)."""
    return ingest_batches([(engine_id, events)], now=now)[0]


def ingest_batches(
    batches: list[tuple[int, list[p.Event]]], *, now: datetime | None = None
) -> list[IngestResult]:
    """Store one batch for each of several engines (no engine twice) in one transaction, each
    table's rows of them all in one statement: what a batch costs is mostly per statement, so
    the batches that wait for a transaction together cost little more than one. Returns their
    results in order. Raises on a database failure, or UnknownEngine if an engine does not exist;
    nothing is then stored, and the caller may store each batch alone to find the one at fault
    (and, within a batch, the events at fault: controlplane.gateway).
    """
    if len({engine_id for engine_id, _ in batches}) != len(batches):
        # One watermark read for both would store the seqs they share twice.
        raise ValueError("a group holds one batch per engine")
    received_at = now or datetime.now(UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        group = _read(cursor, batches, received_at)
        missing = [engine_id for engine_id, _ in batches if engine_id not in group.reads]
        if missing:
            raise UnknownEngine(f"engines {missing} do not exist")
        results: list[IngestResult] = []
        projected: list[tuple[int, list[p.Event], IngestResult, _Split]] = []
        for engine_id, events in batches:
            last_seq = group.reads[engine_id].last_seq
            assert last_seq is not None
            fresh: dict[int, p.Event] = {}
            replayed = 0
            for event in events:
                if event.seq <= last_seq or event.seq in fresh:
                    replayed += 1
                else:
                    fresh[event.seq] = event
            result = IngestResult(ack_seq=last_seq, replayed=replayed)
            results.append(result)
            if fresh:
                batch = [fresh[seq] for seq in sorted(fresh)]
                result.ack_seq = batch[-1].seq
                projected.append((engine_id, batch, result, _split(batch)))
        if not projected:
            return results  # taking the locks recorded last_seen_at: nothing else to write
        missing_symbols = {s for *_, split in projected for s in split.symbols}
        missing_symbols -= group.instruments.keys()
        if missing_symbols:
            group.instruments |= _create_instruments(cursor, missing_symbols)

        script = Script(cursor)
        # The orders first: the fills find their order's row, and the counts what it was.
        for engine_id, _, result, split in projected:
            reports = _check_orders(group, engine_id, split.orders, result, split.rejected)
            split.latest, split.first_ts = _upsert_orders(group, engine_id, reports)
            _check_fills(group, engine_id, split.fills, split.orders, result, split.rejected)
        _insert_fills(script, group)
        fills = 0
        for engine_id, batch, result, split in projected:
            accepted = _project(group, engine_id, batch, split)
            if accepted:
                group.frames.append({"engine_id": engine_id, "first_seq": accepted[0].seq,
                                     "last_seq": accepted[-1].seq, "events": accepted})  # fmt: skip
            result.stored = len(accepted)
            # In the frame's order, whichever check refused each event.
            result.errors.sort(key=lambda error: error.seq or 0)
            result.kinds = frozenset(e.__struct_config__.tag for e in accepted)  # type: ignore[misc]
            group.engines[engine_id]["last_seq"] = result.ack_seq
            fills += sum(1 for e in accepted if type(e) is p.FillEvent)
        updates = _write(script, group)
        written = script.run()
        if written.get("fills", fills) != fills:
            # Each fill's order was found above under the engine's lock, so this cannot happen;
            # were it to, the fill would be lost silently: the batches fail and are sent again.
            raise RuntimeError(f"{fills} fills, {written['fills']} stored")
        rows = {row[0]: row for name in updates for row in written[name]}
        for engine_id, _, result, _ in projected:
            result.engine = Engine.from_db(connection.alias, ENGINE_FIELDS, rows[engine_id])
    return results


@dataclass
class _Split:
    """One engine's fresh events, by kind."""

    orders: list[p.OrderEvent] = field(default_factory=list)
    fills: list[p.FillEvent] = field(default_factory=list)
    reports: list[p.PositionEvent] = field(default_factory=list)
    accounts: list[p.AccountEvent] = field(default_factory=list)
    metrics: list[p.MetricEvent] = field(default_factory=list)
    logs: list[p.LogEvent] = field(default_factory=list)
    state: p.StateEvent | None = None
    symbols: set[str] = field(default_factory=set)
    # The seqs of the events not stored: fills not counted, reports refused.
    rejected: set[int] = field(default_factory=set)
    # Each order's latest report in the batch, and its first one's time (see _upsert_orders).
    latest: dict[str, p.OrderEvent] = field(default_factory=dict)
    first_ts: dict[str, datetime] = field(default_factory=dict)


def _split(batch: list[p.Event]) -> _Split:
    split = _Split()
    for event in batch:
        kind = type(event)
        if kind is p.FillEvent:
            split.fills.append(event)  # type: ignore[arg-type]
            split.symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.OrderEvent:
            split.orders.append(event)  # type: ignore[arg-type]
            split.symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.MetricEvent:
            split.metrics.append(event)  # type: ignore[arg-type]
        elif kind is p.AccountEvent:
            split.accounts.append(event)  # type: ignore[arg-type]
        elif kind is p.PositionEvent:
            split.reports.append(event)  # type: ignore[arg-type]
            split.symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.LogEvent:
            split.logs.append(event)  # type: ignore[arg-type]
        elif kind is p.StateEvent:
            split.state = event  # type: ignore[assignment]
    return split


def _project(
    group: _Group,
    engine_id: int,
    batch: list[p.Event],
    split: _Split,
) -> list[p.Event]:
    """Add one engine's rows (its orders and fills are in already) and its engine row's new
    values to ``group``; return its events accepted (rejected ones got an error)."""
    read = group.reads[engine_id]
    engine_update: dict[str, Any] = {}
    rejected = split.rejected
    fills = split.fills
    if split.orders or fills:
        stored_fills = [f for f in fills if f.seq not in rejected]
        engine_update |= _count(read, split.latest, split.first_ts, stored_fills, group.now)
    if fills or split.reports:
        _update_positions(group, engine_id, fills, rejected, split.reports)
    if split.accounts:
        engine_update |= _store_accounts(group, engine_id, split.accounts)
    group.metrics += [(engine_id, m.ts, m.name, m.value, m.seq) for m in split.metrics]
    group.logs += [(engine_id, e.ts, e.level, e.message, e.context, e.seq) for e in split.logs]
    if split.state is not None:
        state = split.state
        engine_update |= {"reported_state": state.trading_state, "reported_reason": state.reason,
                          "reported_reason_state": state.trading_state,
                          "reported_reason_at": state.ts}  # fmt: skip
    group.engines[engine_id] = engine_update
    return [e for e in batch if e.seq not in rejected]


def _create_instruments(cursor: Any, symbols: Iterable[str]) -> dict[str, tuple[int, Decimal]]:
    # Symbols an engine trades before anyone described them get a bare instrument row that a
    # risk manager can complete (sector, multiplier) in the admin. Rare: one round trip more.
    # Sorted: engines that meet the same new symbols at once insert them in one order, so their
    # transactions queue on the unique index instead of deadlocking (seen with ten engines).
    wanted = text_array(sorted(symbols))
    script = Script(cursor)
    script.add(
        """
        INSERT INTO controlplane_instrument (symbol, sector, asset_class, multiplier, currency)
        SELECT s, '', 'equity', 1, 'USD' FROM unnest(%s::text[]) AS s
        ON CONFLICT (symbol) DO NOTHING
        """,
        [wanted],
    )
    script.add(_READ_INSTRUMENTS, [wanted], fetch="instruments")
    rows = script.run()["instruments"]
    return {symbol: (pk, mult) for symbol, pk, mult in rows}


_ORDER_COLUMNS = """engine_id bigint, client_order_id text, broker_order_id text,
    instrument_id bigint, side text, order_type text, quantity numeric, limit_price numeric,
    stop_price numeric, expected_price numeric, status text, filled_quantity numeric,
    avg_fill_price numeric, reject_reason text, created_at timestamptz, updated_at timestamptz,
    last_seq bigint"""

_UPSERT_ORDERS = """
    INSERT INTO controlplane_order AS o (
        engine_id, client_order_id, broker_order_id, instrument_id, side, order_type,
        quantity, limit_price, stop_price, expected_price, status, filled_quantity,
        avg_fill_price, reject_reason, created_at, updated_at, last_seq)
    {rows}
    ON CONFLICT (engine_id, client_order_id) DO UPDATE SET
        broker_order_id = COALESCE(NULLIF(EXCLUDED.broker_order_id, ''), o.broker_order_id),
        quantity = EXCLUDED.quantity,
        limit_price = EXCLUDED.limit_price,
        stop_price = EXCLUDED.stop_price,
        expected_price = COALESCE(EXCLUDED.expected_price, o.expected_price),
        status = EXCLUDED.status,
        filled_quantity = EXCLUDED.filled_quantity,
        avg_fill_price = EXCLUDED.avg_fill_price,
        reject_reason = EXCLUDED.reject_reason,
        updated_at = EXCLUDED.updated_at,
        last_seq = EXCLUDED.last_seq
    WHERE o.last_seq < EXCLUDED.last_seq"""
_UPSERT_ORDERS_JSON = _UPSERT_ORDERS.replace("{rows}", _rows(_ORDER_COLUMNS))
_UPSERT_ORDERS_STAGED = _UPSERT_ORDERS.replace(
    "{rows}", _rows(_ORDER_COLUMNS, staged="cp_stage_order")
)


def _upsert_orders(
    group: _Group, engine_id: int, orders: list[p.OrderEvent]
) -> tuple[dict[str, p.OrderEvent], dict[str, datetime]]:
    """Add an engine's orders to insert or update; return each one's latest report and its
    first one's time."""
    if not orders:
        return {}, {}
    # Several reports of one order in a batch: the latest wins, the first gives created_at.
    latest: dict[str, p.OrderEvent] = {}
    first_ts: dict[str, datetime] = {}
    for order in orders:
        latest[order.client_order_id] = order
        first_ts.setdefault(order.client_order_id, order.ts)
    instruments = group.instruments
    group.orders += [
        (engine_id, o.client_order_id, o.broker_order_id or "", instruments[o.symbol][0],
         o.side, o.order_type, o.quantity, o.limit_price, o.stop_price, o.expected_price,
         o.status, o.filled_quantity, o.avg_fill_price, o.reject_reason or "",
         first_ts[o.client_order_id], o.ts, o.seq)
        for o in latest.values()
    ]  # fmt: skip
    return latest, first_ts


_WORKING = frozenset(Order.WORKING)


def _count(
    read: _Read,
    latest: dict[str, p.OrderEvent],
    first_ts: dict[str, datetime],
    fills: list[p.FillEvent],
    now: datetime,
) -> dict[str, Any]:
    """The engine row's counts after this batch's orders and stored fills, worked out from what
    the orders were before it (read under the engine's lock) exactly as the upsert changes them:
    a new order is inserted; a stored one changes only when the report is newer than the one it
    holds (last_seq). Today is the UTC day of ``now``; the day's counts start again at zero on
    the first batch of a new day, as the old way of counting did (created_at, ts >= midnight)."""
    before = read.counts
    assert before is not None
    today = now.astimezone(UTC).date()
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    fresh_day = before.day != today
    orders = 0 if fresh_day else before.orders
    rejected = 0 if fresh_day else before.rejected
    fills_today = 0 if fresh_day else before.fills
    working = before.working
    for coid, order in latest.items():
        status = order.status
        stored = read.stored_orders.get(coid)
        if stored is None:
            created = first_ts[coid]
            working += status in _WORKING
            if created >= midnight:
                orders += 1
                rejected += status == "rejected"
            continue
        old_status, old_seq, created = stored.status, stored.last_seq, stored.created_at
        if old_seq >= order.seq:
            continue  # the stored report is as new: the upsert leaves the row as it is
        working += (status in _WORKING) - (old_status in _WORKING)
        if created >= midnight:
            rejected += (status == "rejected") - (old_status == "rejected")
    fills_today += sum(1 for fill in fills if fill.ts >= midnight)
    return {
        "counts_day": today, "orders_today": orders, "rejected_today": rejected,
        "fills_today": fills_today, "working_orders": working,
    }  # fmt: skip


def _check_fills(
    group: _Group,
    engine_id: int,
    fills: list[p.FillEvent],
    orders: list[p.OrderEvent],
    result: IngestResult,
    rejected: set[int],
) -> None:
    """Add an engine's fills to insert; add to ``rejected`` the seqs not counted (unknown
    order, fill_id already stored).

    Under the engine's lock, the orders stored before plus those of this batch are known. So are
    the fills stored before, when the batches have fewer than COPY_MIN_ROWS fills: the others
    are COPYed without that lookup (a fill_id stored before under another seq is rare), and
    should the unique key refuse the COPY, _insert_fills sorts them out. A fill_id that comes
    again with the same content is a replay, counted once (the lowest seq); with other content,
    it is refused (_same_fill).
    """
    read = group.reads[engine_id]
    known_orders = read.stored_orders.keys() | {order.client_order_id for order in orders}
    seen = dict(read.stored_fills)
    for fill in fills:
        if fill.client_order_id not in known_orders:
            rejected.add(fill.seq)
            result.errors.append(
                _error(
                    "unknown_order",
                    f"fill {fill.fill_id!r} is for order {fill.client_order_id!r}, which this "
                    f"engine never reported: send the order event first",
                    fill,
                    "client_order_id",
                )
            )
            continue
        content = _fill_content(group, fill)
        before = seen.get(fill.fill_id)
        if before is None:
            seen[fill.fill_id] = content
            group.fills.append((engine_id, fill, result, rejected))
        else:
            rejected.add(fill.seq)
            _same_fill(group, engine_id, fill, before, content, result)


def _fill_content(group: _Group, fill: p.FillEvent) -> _FillContent:
    return _FillContent(
        fill.client_order_id, group.instruments[fill.symbol][0], fill.side, fill.quantity,
        fill.price, fill.fee,
    )  # fmt: skip


def _same_fill(
    group: _Group,
    engine_id: int,
    fill: p.FillEvent,
    stored: _FillContent,
    content: _FillContent,
    result: IngestResult,
) -> None:
    """A fill whose fill_id is stored (or earlier in its batch): a replay of the same fill is
    counted once and changes nothing; other content under the id is a second fill under a used
    id (an engine that lost its ids, say with its disk), refused with ``duplicate_id``. Either
    way the fill stored first stands."""
    if stored == content:
        result.replayed += 1
        return
    symbols = {pk: symbol for symbol, (pk, _) in group.instruments.items()}
    differs = "; ".join(
        f"{name} {_shown(name, old, symbols)} stored, {_shown(name, new, symbols)} sent"
        for name, old, new in zip(_FillContent._fields, stored, content, strict=True)
        if old != new
    )
    _refuse_id(
        group, engine_id, result, fill, "fill_id", fill.fill_id,
        f"fill_id {fill.fill_id!r} is stored with other content ({differs}): a fill_id names "
        f"one fill for ever; this fill is refused and the stored one stands",
    )  # fmt: skip


def _shown(name: str, value: Any, symbols: dict[int, str]) -> str:
    if name == "instrument_id":
        return repr(symbols.get(value, "another symbol"))
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # as sent, whether stored (101.50000000) or not
    return repr(value)


def _refuse_id(
    group: _Group,
    engine_id: int,
    result: IngestResult,
    event: p.Event,
    field_name: str,
    value: str,
    message: str,
) -> None:
    """Refuse an event that reuses an id: an error for the engine, and a line in its log (in
    the batch's transaction) that the "Reused ids" alert rule counts (alerts.rule_metrics)."""
    result.errors.append(_error("duplicate_id", message, event, field_name))
    context = {"code": "duplicate_id", "field": field_name, "id": value, "seq": event.seq}
    group.logs.append((engine_id, group.now, "error", message, context, None))


# An order that reached one of these statuses has ended: no report brings it back to work.
_ENDED = frozenset({"filled", "cancelled", "rejected", "expired"})
# Reports that begin an order: after its end, one of these newer than its last report is a new
# order under a used id.
_BEGINNING = frozenset({"new", "accepted"})


def _check_orders(
    group: _Group,
    engine_id: int,
    orders: list[p.OrderEvent],
    result: IngestResult,
    rejected: set[int],
) -> list[p.OrderEvent]:
    """Return the reports of an engine's batch that change its order rows; refuse (adding their
    seqs to ``rejected``) those that reuse a client_order_id for another order.

    A client_order_id names one order for ever: a report that gives the order another symbol
    or side is refused. Once the order has ended, a report no newer (by ``ts``) than its latest
    is late or replayed: stored as a report, it leaves the row as it is. A newer one is refused
    when it gives the order another type or quantity, or begins it again (new, accepted): a new
    order under a used id. Otherwise it is a late report, not a reused id: another end (a
    cancel that crossed the fill at the broker) is the order's latest report, as before; a
    partial fill's report is stored and does not reopen the order. Reports are judged in seq
    order, against the order as the reports before them left it.
    """
    read = group.reads[engine_id]
    instruments = group.instruments
    # client_order_id -> (status, time of its last report, instrument, side, type, quantity).
    orders_now: dict[str, tuple[str, datetime, int, str, str, Decimal]] = {}
    changes = []
    for order in orders:
        coid = order.client_order_id
        instrument_id = instruments[order.symbol][0]
        known = orders_now.get(coid)
        if known is None and (stored := read.stored_orders.get(coid)) is not None:
            known = (stored.status, stored.updated_at, stored.instrument_id, stored.side,
                     stored.order_type, stored.quantity)  # fmt: skip
        if known is not None:
            status, last_ts, was_instrument, was_side, was_type, was_quantity = known
            ended = status in _ENDED
            # A working order's type and quantity may be amended, so an ended order's earlier
            # reports may differ in them; its later ones may not.
            newer = order.ts > last_ts
            compared = [("symbol", was_instrument, instrument_id), ("side", was_side, order.side)]
            if ended and newer:
                compared += [("order_type", was_type, order.order_type),
                             ("quantity", was_quantity, order.quantity)]  # fmt: skip
            differs = [name for name, old, new in compared if old != new]
            reused = None
            if differs:
                reused = (
                    f"client_order_id {coid!r} names an order ({status}) of another "
                    f"{', '.join(differs)}: an id names one order for ever"
                )
            elif ended and newer and order.status in _BEGINNING:
                reused = (
                    f"client_order_id {coid!r} names an order that ended ({status}); a "
                    f"{order.status!r} report after it is a new order under a used id"
                )
            if reused is not None:
                rejected.add(order.seq)
                _refuse_id(
                    group, engine_id, result, order, "client_order_id", coid,
                    f"{reused}: this report is refused and the stored order stands",
                )  # fmt: skip
                continue
            if ended and (not newer or order.status not in _ENDED):
                continue  # a late report: stored, the order stays as it ended
        orders_now[coid] = (order.status, order.ts, instrument_id, order.side, order.order_type,
                            order.quantity)  # fmt: skip
        changes.append(order)
    return changes


# Runs after the orders' upsert in the same script, so a fill finds an order reported in its own
# batch, and takes the order's expected price as that upsert left it.
_INSERT_FILLS = f"""
    INSERT INTO controlplane_fill (engine_id, fill_id, order_id, instrument_id, side, quantity,
        price, fee, expected_price, liquidity, ts, seq)
    SELECT k.engine_id, k.fill_id, o.id, k.instrument_id, k.side, k.quantity, k.price, k.fee,
        o.expected_price, k.liquidity, k.ts, k.seq
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, fill_id text,
        client_order_id text, instrument_id bigint, side text, quantity numeric,
        price numeric, fee numeric, liquidity text, ts timestamptz, seq bigint)
    {_ORDER_BY_PAIR}"""
_FILL_COLUMNS = (
    "engine_id", "fill_id", "order_id", "instrument_id", "side", "quantity", "price", "fee",
    "expected_price", "liquidity", "ts", "seq",
)  # fmt: skip


def _insert_fills(script: Script, group: _Group) -> None:
    """Add the fills that _check_fills let through to ``script``, in one statement after the
    orders' upsert; or, from COPY_MIN_ROWS fills on, run the script so far and COPY them (with
    their orders' ids and expected prices read after that upsert), and when their ids were not
    looked up first, sort out those the unique key refuses (rolled back to a savepoint)."""
    if group.orders:
        if len(group.orders) < COPY_MIN_ROWS:
            script.add(_UPSERT_ORDERS_JSON, [_json_rows(_ORDER_COLUMNS, group.orders)])
        else:
            _stage(script, "cp_stage_order", _ORDER_COLUMNS, group.orders)
            script.add(_UPSERT_ORDERS_STAGED, [])
    fresh = group.fills
    if not fresh:
        return
    instruments = group.instruments
    if group.fill_ids_read and len(fresh) < COPY_MIN_ROWS:
        script.add(_INSERT_FILLS, [json_text([
            {"engine_id": engine_id, "fill_id": f.fill_id, "client_order_id": f.client_order_id,
             "instrument_id": instruments[f.symbol][0], "side": f.side, "quantity": f.quantity,
             "price": f.price, "fee": f.fee, "liquidity": f.liquidity or "", "ts": f.ts,
             "seq": f.seq}
            for engine_id, f, _, _ in fresh
        ])], count="fills", prepare=False)  # fmt: skip
        return
    coids = {(engine_id, f.client_order_id) for engine_id, f, _, _ in fresh}
    script.add(
        _READ_ORDER_IDS, [_pairs("client_order_id", coids)], fetch="order_ids", prepare=False
    )
    orders_by_id = {
        (engine_id, coid): (pk, expected)
        for engine_id, coid, pk, expected in script.run()["order_ids"]
    }
    if len(orders_by_id) != len(coids):
        raise RuntimeError("fills without their order row")

    def copy(fills: list[tuple[int, p.FillEvent, IngestResult, set[int]]]) -> None:
        _copy(script.cursor, "controlplane_fill", _FILL_COLUMNS, [
            (engine_id, f.fill_id, orders_by_id[engine_id, f.client_order_id][0],
             instruments[f.symbol][0], f.side, f.quantity, f.price, f.fee,
             orders_by_id[engine_id, f.client_order_id][1], f.liquidity or "", f.ts, f.seq)
            for engine_id, f, _, _ in fills
        ])  # fmt: skip

    if group.fill_ids_read:
        copy(fresh)
        return
    try:
        with transaction.atomic():
            copy(fresh)
        return
    except UniqueViolation as exc:
        if exc.diag.constraint_name != "fill_unique_id":
            raise
    # A fill_id stored before: sort them out, replays from reused ids (_same_fill).
    script.add(
        _READ_FILL_IDS,
        [_pairs("fill_id", {(engine_id, f.fill_id) for engine_id, f, _, _ in fresh})],
        fetch="fill_ids",
        prepare=False,
    )
    stored = {
        (engine_id, fill_id): _FillContent(*content)
        for engine_id, fill_id, *content in script.run()["fill_ids"]
    }
    rest = []
    for item in fresh:
        engine_id, fill, result, rejected = item
        before = stored.get((engine_id, fill.fill_id))
        if before is None:
            rest.append(item)
        else:
            rejected.add(fill.seq)
            _same_fill(group, engine_id, fill, before, _fill_content(group, fill), result)
    group.fills = rest
    if rest:
        copy(rest)


_POSITION_COLUMNS = """engine_id bigint, instrument_id bigint, quantity numeric,
    avg_price numeric, realized_pnl numeric, last_price numeric, reported_quantity numeric,
    reported_avg_price numeric, reported_at timestamptz, mismatch_since timestamptz"""

_UPSERT_POSITIONS = f"""
    INSERT INTO controlplane_position AS p (
        updated_at, engine_id, instrument_id, quantity, avg_price, realized_pnl, last_price,
        reported_quantity, reported_avg_price, reported_at, mismatch_since)
    {_rows(_POSITION_COLUMNS, lead="%s")}
    ON CONFLICT (engine_id, instrument_id) DO UPDATE SET
        quantity = EXCLUDED.quantity, avg_price = EXCLUDED.avg_price,
        realized_pnl = EXCLUDED.realized_pnl, last_price = EXCLUDED.last_price,
        reported_quantity = EXCLUDED.reported_quantity,
        reported_avg_price = EXCLUDED.reported_avg_price,
        reported_at = EXCLUDED.reported_at, mismatch_since = EXCLUDED.mismatch_since,
        updated_at = EXCLUDED.updated_at"""


def _update_positions(
    group: _Group,
    engine_id: int,
    fills: list[p.FillEvent],
    skipped: set[int],
    reports: list[p.PositionEvent],
) -> None:
    instruments = group.instruments
    touched = {instruments[f.symbol][0] for f in fills if f.seq not in skipped}
    touched |= {instruments[r.symbol][0] for r in reports}
    if not touched:
        return
    # The first round trip read the positions of every symbol the batch's fills and reports
    # name; only those an accepted event touches are written back.
    read = group.reads[engine_id]
    positions = {
        instrument_id: read.positions.get(instrument_id) or _Position(instrument_id)
        for instrument_id in touched
    }
    # Fills and reports interleave in seq order: a report reflects the fills before it.
    merged: list[p.FillEvent | p.PositionEvent] = sorted(
        [f for f in fills if f.seq not in skipped] + list(reports), key=lambda e: e.seq
    )
    for event in merged:
        instrument_id, multiplier = instruments[event.symbol]
        pos = positions[instrument_id]
        if isinstance(event, p.FillEvent):
            apply_fill(
                pos, side=event.side, quantity=event.quantity, price=event.price, fee=event.fee,
                multiplier=multiplier,
            )  # fmt: skip
        else:
            pos.reported_quantity = event.quantity
            pos.reported_avg_price = event.avg_price
            pos.reported_at = event.ts
    for pos in positions.values():
        agrees = pos.reported_quantity is None or pos.reported_quantity == pos.quantity
        if agrees:
            pos.mismatch_since = None
        elif pos.mismatch_since is None:
            pos.mismatch_since = group.now
    group.positions += [
        {"engine_id": engine_id, "instrument_id": r.instrument_id, "quantity": r.quantity,
         "avg_price": r.avg_price, "realized_pnl": r.realized_pnl, "last_price": r.last_price,
         "reported_quantity": r.reported_quantity, "reported_avg_price": r.reported_avg_price,
         "reported_at": r.reported_at, "mismatch_since": r.mismatch_since}
        for r in positions.values()
    ]  # fmt: skip


def _store_accounts(
    group: _Group, engine_id: int, accounts: list[p.AccountEvent]
) -> dict[str, Any]:
    """Add the snapshots; return the engine's new equity, session and drawdown figures."""
    group.accounts += [
        (engine_id, a.ts, a.equity, a.cash, a.margin_used, a.currency, a.seq) for a in accounts
    ]
    read = group.reads[engine_id]
    session_at, session_equity, hwm = read.session_at, read.session_equity, read.high_water_mark
    for account in accounts:
        # The trading session starts at 00:00 UTC: the first equity of a new day is its base.
        if (
            session_at is None
            or account.ts.astimezone(UTC).date() > session_at.astimezone(UTC).date()
        ):
            session_at, session_equity = account.ts, account.equity
        if hwm is None or account.equity > hwm:
            hwm = account.equity
    last = accounts[-1]
    day_pnl = last.equity - session_equity
    drawdown = (hwm - last.equity) / hwm * 100 if hwm and hwm > 0 else ZERO
    return {
        "equity": last.equity, "cash": last.cash, "session_start_at": session_at,
        "session_start_equity": session_equity, "high_water_mark": hwm, "day_pnl": day_pnl,
        "drawdown_pct": drawdown.quantize(Decimal("0.000001")),
    }  # fmt: skip


# The engine row's columns a batch may set, with their types for json_to_recordset.
_ENGINE_COLUMNS = {
    "last_seq": "bigint", "counts_day": "date", "orders_today": "integer",
    "rejected_today": "integer", "fills_today": "integer", "working_orders": "integer",
    "equity": "numeric", "cash": "numeric", "session_start_at": "timestamptz",
    "session_start_equity": "numeric", "high_water_mark": "numeric", "day_pnl": "numeric",
    "drawdown_pct": "numeric", "reported_state": "text", "reported_reason": "text",
    "reported_reason_state": "text", "reported_reason_at": "timestamptz",
}  # fmt: skip


@cache
def _update_engines_sql(columns: tuple[str, ...]) -> str:
    """The engines' one update of the batches that set ``columns``: their watermarks, figures
    and reported states (last_seq never goes back)."""
    sets = ", ".join(
        "last_seq = GREATEST(e.last_seq, v.last_seq)" if c == "last_seq" else f"{c} = v.{c}"
        for c in columns
    )
    typed = ", ".join(f"{c} {_ENGINE_COLUMNS[c]}" for c in columns)
    return (
        f"UPDATE controlplane_engine e SET {sets} "
        f"FROM json_to_recordset(%s::json) AS v(id bigint, {typed}) WHERE e.id = v.id "
        f"RETURNING {', '.join(f'e.{name}' for name in ENGINE_FIELDS)}"
    )


def _write(script: Script, group: _Group) -> list[str]:
    """Add the rest of the batches' writes to ``script``: one statement a table, then the
    engines' rows (one statement for each set of columns the batches change), whose updated rows
    are fetched under the names returned."""
    if group.positions:
        script.add(_UPSERT_POSITIONS, [group.now, json_text(group.positions)])
    _append(script, "controlplane_accountsnapshot",
            "engine_id bigint, ts timestamptz, equity numeric, cash numeric, "
            "margin_used numeric, currency text, seq bigint", group.accounts)  # fmt: skip
    _append(script, "controlplane_metricsample",
            "engine_id bigint, ts timestamptz, name text, value float8, seq bigint",
            group.metrics)  # fmt: skip
    _append(script, "controlplane_enginelog",
            "engine_id bigint, ts timestamptz, level text, message text, context jsonb, "
            "seq bigint", group.logs, json_column="context")  # fmt: skip
    if group.frames:
        partitions.ensure_partition(group.now.date())
    for frame in group.frames:
        # One row a batch: its events as one JSON array, encoded in one call in C (msgspec). A
        # statement of its own, so that PostgreSQL reads the array once, as the column's value.
        script.add(
            "INSERT INTO controlplane_eventframe (engine_id, first_seq, last_seq, received_at,"
            " events) VALUES (%s, %s, %s, %s, %s::json)",
            [frame["engine_id"], frame["first_seq"], frame["last_seq"], group.now,
             json_text(frame["events"])],
        )  # fmt: skip
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for engine_id, values in group.engines.items():
        by_columns.setdefault(tuple(values), []).append({"id": engine_id, **values})
    names = []
    for n, (columns, rows) in enumerate(by_columns.items()):
        names.append(f"engines {n}")
        script.add(_update_engines_sql(columns), [json_text(rows)], fetch=names[-1])
    return names
