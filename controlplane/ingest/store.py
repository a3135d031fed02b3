"""Durable, idempotent storage of engine event batches.

A batch is stored in one transaction: the raw events go to the partitioned event log, and are
projected into orders, fills, the position ledger, account snapshots, metrics and logs, and the
engine's running figures. The batch is acknowledged only after the commit. Several engines'
batches may share the transaction (``ingest_batches``): the engine socket stores the small frames
that wait at the same time together (controlplane.socket._EventsWriter).

This module holds the statements' order and round trips and the checks between them; the
arithmetic on the values read (the position ledger, the session figures, the engine row's counts)
is in controlplane.ingest.ledger, and the statements' texts in controlplane.ingest.sql.

Idempotence: per engine, events are stored in seq order and the engine row keeps the highest
seq processed (``Engine.last_seq``, updated under a row lock in the same transaction). An event at
or below that watermark is a replay and changes nothing. Fills are also unique by
(engine, run, fill_id) in the database, so a fill re-sent under a new seq is not counted twice
either. Order and fill ids are an engine's run's (Engine.run_id, set by its hello): a new run
that repeats the previous run's ids stores its own orders and fills.
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

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import msgspec
from django.db import connection, transaction
from django.db.models import JSONField
from psycopg.errors import UniqueViolation

from controlplane import partitions
from controlplane.audit import audit_record
from controlplane.ingest import ledger, sql
from controlplane.models import Engine, Instrument, Order
from controlplane.sqlscript import Script, json_text, text_array
from controlplane.trading_math import DEFAULT_ACCOUNT_CURRENCY
from engine_sdk import protocol as p

log = logging.getLogger(__name__)


class UnknownEngine(LookupError):
    """A batch's engine does not exist (deleted meanwhile): no fault of its events."""


@dataclass
class IngestResult:
    ack_seq: int
    stored: int = 0
    replayed: int = 0
    errors: list[p.Error] = field(default_factory=list)
    # The kinds of the events stored, and the engine row as the batch left it (with the fields
    # of sql.ENGINE_FIELDS; the others load on access): the post-trade evaluation that follows
    # the batch reads them instead of querying again.
    kinds: frozenset[str] = frozenset()
    engine: Engine | None = None


def _error(code: str, message: str, event: p.Event, field_name: str | None = None) -> p.Error:
    return p.Error(code=code, message=message, field=field_name, seq=event.seq)


# From this many rows on, a table's rows go in with COPY, in a round trip of their own. A JSON
# parameter is text that PostgreSQL scans (about 10 ns a byte) and then unpacks, which costs it
# more than COPY's format; below this, COPY's round trip, set-up and finish cost more, mostly in
# the web process. Measured: frames of 250 to 500 events took as long either way, with 2 ms less
# of the web process's CPU in JSON; frames of 2,000 events took 20 ms longer in JSON.
COPY_MIN_ROWS = 300


def _copy(
    cursor: Any, table: str, columns: tuple[str, ...] | None, rows: Iterable[tuple[Any, ...]]
) -> None:
    # Decimals and datetimes become text in one pass in C (msgspec): psycopg's own dumpers pick
    # a dumper per value for them, which cost more than the rest of the ingest's Python put
    # together. PostgreSQL parses the ISO 8601 text ("...Z" or "+02:00") exactly.
    rows = msgspec.to_builtins(rows if isinstance(rows, list) else list(rows))
    with cursor.cursor.copy(sql.copy(table, columns)) as copy:
        for row in rows:
            copy.write_row(row)


def _stage(script: Script, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY ``rows`` into a temporary table of ``columns``, for a set-based statement to read."""
    script.add(sql.create_stage(table, columns), [])
    # The table empties itself at each commit; rows are left over only when batches share an
    # outer transaction. DELETE on an empty table costs nothing, where TRUNCATE would give the
    # table a new file every batch.
    script.add(sql.empty_stage(table), [])
    script.run()
    _copy(script.cursor, table, None, rows)


def _json_rows(columns: str, rows: list[tuple[Any, ...]]) -> str:
    """``rows`` as the JSON array of objects that ``sql.rows(columns)`` reads."""
    names = sql.names(columns)
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
        script.add(sql.append(table, columns), [_json_rows(columns, rows)])
        return
    if json_column is not None:
        # COPY takes a JSON column as its text.
        at = sql.names(columns).index(json_column)
        rows = [(*row[:at], json_text(row[at]), *row[at + 1 :]) for row in rows]
    _copy(script.cursor, table, sql.names(columns), rows)


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
    # The engine's current run: its orders and fills are stored under it (Engine.run_id).
    run_id: str = ""
    # The engine's account currency and latest FX rates as stored (Engine.fx_rates): a fill's
    # fee is converted with them into its instrument's currency.
    account_currency: str = ""
    fx_rates: dict[str, Any] = field(default_factory=dict)
    counts: ledger.Counts | None = None
    positions: dict[int, ledger.Position] = field(default_factory=dict)
    # The batch's orders stored before, by client_order_id.
    stored_orders: dict[str, _StoredOrder] = field(default_factory=dict)
    # The batch's fill ids stored before, with what those fills said.
    stored_fills: dict[str, _FillContent] = field(default_factory=dict)


def _pairs(key: str, pairs: Iterable[tuple[int, str]]) -> str:
    return json_text([{"engine_id": engine_id, key: value} for engine_id, value in pairs])


class _Instrument(NamedTuple):
    """What the ledger needs of an instrument: its row, multiplier and currency."""

    id: int
    multiplier: Decimal
    currency: str


@dataclass
class _Group:
    """The batches stored together in one transaction: what the read found, and what the
    projections write, each table's rows of every engine in one statement."""

    now: datetime
    reads: dict[int, _Read] = field(default_factory=dict)
    instruments: dict[str, _Instrument] = field(default_factory=dict)
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
    positions: set[tuple[int, str]] = set()
    coids: set[tuple[int, str]] = set()
    fill_ids: set[tuple[int, str]] = set()
    for engine_id, events in batches:
        for event in events:
            kind = type(event)
            if kind is p.FillEvent:
                positions.add((engine_id, event.symbol))  # type: ignore[union-attr]
                coids.add((engine_id, event.client_order_id))  # type: ignore[union-attr]
                fill_ids.add((engine_id, event.fill_id))  # type: ignore[union-attr]
            elif kind is p.PositionEvent:
                positions.add((engine_id, event.symbol))  # type: ignore[union-attr]
            elif kind is p.OrderEvent:
                symbols.add(event.symbol)  # type: ignore[union-attr]
                coids.add((engine_id, event.client_order_id))  # type: ignore[union-attr]
    symbols |= {symbol for _, symbol in positions}
    ids = sorted(engine_id for engine_id, _ in batches)
    group = _Group(now=now, fill_ids_read=len(fill_ids) < COPY_MIN_ROWS)
    script = Script(cursor)
    engine_ids = "{" + ",".join(map(str, ids)) + "}"
    script.add(sql.LOCK_ENGINES, [now, engine_ids], fetch="engines")
    if symbols:
        script.add(sql.READ_INSTRUMENTS, [text_array(symbols)], fetch="instruments")
    # Planned each time (prepare=False): lookups in tables that grow all day.
    if positions:
        pairs = _pairs("symbol", positions)
        script.add(sql.READ_POSITIONS, [pairs], fetch="positions", prepare=False)
    if coids:
        # Whether each order is new and what it was: for the fills' orders and the counts.
        pairs = _pairs("client_order_id", coids)
        script.add(sql.READ_ORDERS, [pairs], fetch="orders", prepare=False)
    if fill_ids and group.fill_ids_read:
        pairs = _pairs("fill_id", fill_ids)
        script.add(sql.READ_FILL_IDS, [pairs], fetch="fill_ids", prepare=False)
    rows = script.run()
    for engine_id, last_seq, session_at, session_equity, hwm, run_id, *rest in rows["engines"]:
        account_currency, fx_rates, *counts = rest
        group.reads[engine_id] = _Read(
            last_seq=last_seq,
            session_at=session_at,
            session_equity=session_equity,
            high_water_mark=hwm,
            run_id=run_id,
            account_currency=account_currency,
            fx_rates=json.loads(fx_rates) if fx_rates else {},
            counts=ledger.Counts(*counts),
        )
    group.instruments = {s: _Instrument(*row) for s, *row in rows.get("instruments", ())}
    for engine_id, *row in rows.get("positions", ()):
        group.reads[engine_id].positions[row[0]] = ledger.Position(*row)
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
        if any(split.instruments for *_, split in projected):
            _declare_instruments(cursor, group, projected)
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
                frame = {
                    "engine_id": engine_id,
                    "first_seq": accepted[0].seq,
                    "last_seq": accepted[-1].seq,
                    # When its first event happened: a frame that arrives long after it held
                    # events the engine's journal kept while it was cut off (golive.gates).
                    "first_ts": accepted[0].ts,
                    "events": accepted,
                }
                group.frames.append(frame)
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
            result.engine = _engine(rows[engine_id])
    return results


# The JSON columns among the fields returned: a raw cursor gives their text, which the model's
# field turns into values (Model.from_db takes values as they are).
_JSON_FIELDS = {
    at: Engine._meta.get_field(name)
    for at, name in enumerate(sql.ENGINE_FIELDS)
    if isinstance(Engine._meta.get_field(name), JSONField)
}


def _engine(row: tuple[Any, ...]) -> Engine:
    values = list(row)
    for at, json_field in _JSON_FIELDS.items():
        values[at] = json_field.from_db_value(values[at], None, connection)
    return Engine.from_db(connection.alias, sql.ENGINE_FIELDS, values)


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
    instruments: list[p.InstrumentEvent] = field(default_factory=list)
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
        elif kind is p.InstrumentEvent:
            split.instruments.append(event)  # type: ignore[arg-type]
    return split


def _declare_instruments(
    cursor: Any, group: _Group, projected: list[tuple[int, list[p.Event], IngestResult, _Split]]
) -> None:
    """Apply the batches' instrument declarations, before their orders and fills (which then
    use the declared multiplier), under the instruments' row locks.

    A declaration fills in a bare instrument row (one an engine's trading created, with
    defaults) and any field still empty (sector, tick size) of a described one; it may not
    contradict a field already described, by an engine or a person: such a declaration is
    refused whole with ``instrument_conflict`` naming the field, and a line in the engine's log
    says what is stored and by whom. Who described an instrument is kept on its row; each change
    is audited ("instrument.declared").
    """
    symbols = sorted({e.symbol for *_, split in projected for e in split.instruments})
    wanted = text_array(symbols)
    script = Script(cursor)
    script.add(sql.CREATE_INSTRUMENTS, [wanted])
    script.add(sql.LOCK_DECLARED, [wanted], fetch="rows")
    ids = [engine_id for engine_id, *_, split in projected if split.instruments]
    script.add(sql.ENGINE_NAMES, ["{" + ",".join(map(str, ids)) + "}"], fetch="names")
    found = script.run()
    names = dict(found["names"])
    rows: dict[str, dict[str, Any]] = {}
    for symbol, pk, *values, described_by in found["rows"]:
        row = dict(zip(sql.DECLARED_FIELDS, values, strict=True))
        rows[symbol] = {"id": pk, **row, "described_by": described_by}
    changes: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for engine_id, _, result, split in projected:
        who = f"engine {names[engine_id]}"
        for event in split.instruments:
            row = rows[event.symbol]
            changed, conflict = _declaration(row, event)
            if conflict is not None:
                split.rejected.add(event.seq)
                field_name, stored = conflict
                message = (
                    f"instrument {event.symbol!r} has {field_name} {stored} (described by "
                    f"{row['described_by']}); this declaration says {getattr(event, field_name)}: "
                    f"refused, nothing changed. A risk manager changes it in the admin."
                )
                result.errors.append(_error("instrument_conflict", message, event, field_name))
                context = {"code": "instrument_conflict", "field": field_name, "seq": event.seq}
                group.logs.append((engine_id, group.now, "error", message, context, None))
                continue
            if not changed:
                continue
            before = {name: _plain(row[name]) for name in changed}
            row.update(changed)
            if not row["described_by"]:
                row["described_by"] = who
            diff = {name: [before[name], _plain(value)] for name, value in changed.items()}
            changes.setdefault(event.symbol, []).append((who, diff))
    if changes:
        updated = [rows[symbol] for symbol in sorted(changes)]
        script.add(sql.UPDATE_DECLARED, [json_text(updated)], fetch="updated")
        for symbol, pk, multiplier, currency in script.run()["updated"]:
            group.instruments[symbol] = _Instrument(pk, multiplier, currency)
            for who, diff in changes[symbol]:
                audit_record(
                    action="instrument.declared",
                    actor_label=who,
                    target=Instrument(pk=pk, symbol=symbol),
                    data={"symbol": symbol, "changes": diff},
                )
    for symbol, row in rows.items():
        group.instruments.setdefault(
            symbol, _Instrument(row["id"], row["multiplier"], row["currency"])
        )


def _plain(value: Any) -> Any:
    return format(value.normalize(), "f") if isinstance(value, Decimal) else value


def _declaration(
    row: dict[str, Any], event: p.InstrumentEvent
) -> tuple[dict[str, Any], tuple[str, Any] | None]:
    """The fields ``event`` changes on ``row``, or the first field it contradicts and its stored
    value. A bare row takes every field declared; a described one only its empty ones."""
    bare = not row["described_by"]
    changed: dict[str, Any] = {}
    for name in sql.DECLARED_FIELDS:
        value = getattr(event, name)
        stored = row[name]
        if value is None or value == stored:
            continue
        if bare or stored in (None, ""):
            changed[name] = value
        else:
            return {}, (name, _plain(stored))
    return changed, None


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
    account_currency, fx_rates = read.account_currency, read.fx_rates
    if split.accounts:
        engine_update |= _store_accounts(group, engine_id, split.accounts)
        # The rates as the engine's row will hold them after this batch (sql._ENGINE_SETS).
        account_currency, batch_rates = engine_update["account_currency"], engine_update["fx_rates"]
        same = account_currency == read.account_currency
        fx_rates = {**read.fx_rates, **batch_rates} if same else batch_rates
    if fills or split.reports:
        rates = _Rates(account_currency, fx_rates)
        _update_positions(group, engine_id, fills, rejected, split.reports, rates)
    group.metrics += [(engine_id, m.ts, m.name, m.value, m.seq) for m in split.metrics]
    group.logs += [(engine_id, e.ts, e.level, e.message, e.context, e.seq) for e in split.logs]
    if split.state is not None:
        state = split.state
        engine_update |= {
            "reported_state": state.trading_state,
            "reported_reason": state.reason,
            "reported_reason_state": state.trading_state,
            "reported_reason_at": state.ts,
        }
    group.engines[engine_id] = engine_update
    return [e for e in batch if e.seq not in rejected]


def _create_instruments(cursor: Any, symbols: Iterable[str]) -> dict[str, _Instrument]:
    # Symbols an engine trades before anyone described them get a bare instrument row that a
    # risk manager can complete (sector, multiplier) in the admin. Rare: one round trip more.
    # Sorted: engines that meet the same new symbols at once insert them in one order, so their
    # transactions queue on the unique index instead of deadlocking (seen with ten engines).
    wanted = text_array(sorted(symbols))
    script = Script(cursor)
    script.add(sql.CREATE_INSTRUMENTS, [wanted])
    script.add(sql.READ_INSTRUMENTS, [wanted], fetch="instruments")
    rows = script.run()["instruments"]
    return {symbol: _Instrument(*row) for symbol, *row in rows}


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
    run_id = group.reads[engine_id].run_id
    for o in latest.values():
        row = (
            engine_id,
            o.client_order_id,
            o.broker_order_id or "",
            instruments[o.symbol][0],
            o.side,
            o.order_type,
            o.quantity,
            o.limit_price,
            o.stop_price,
            o.expected_price,
            o.status,
            o.filled_quantity,
            o.avg_fill_price,
            o.reject_reason or "",
            first_ts[o.client_order_id],
            o.ts,
            o.seq,
            run_id,
            o.strategy_id or "",
        )
        group.orders.append(row)
    return latest, first_ts


_WORKING = frozenset(Order.WORKING)


def _order_state(status: str, created_at: datetime, seq: int) -> ledger.OrderState:
    working, rejected = status in _WORKING, status == Order.Status.REJECTED
    return ledger.OrderState(working, rejected, created_at, seq)


def _count(
    read: _Read,
    latest: dict[str, p.OrderEvent],
    first_ts: dict[str, datetime],
    fills: list[p.FillEvent],
    now: datetime,
) -> dict[str, Any]:
    """The engine row's counts after this batch's orders and stored fills, worked out from what
    the orders were before it (read under the engine's lock) exactly as the upsert changes them
    (ledger.count). A stored order keeps its created_at."""
    assert read.counts is not None
    orders: list[tuple[ledger.OrderState | None, ledger.OrderState]] = []
    for coid, order in latest.items():
        stored = read.stored_orders.get(coid)
        if stored is None:
            orders.append((None, _order_state(order.status, first_ts[coid], order.seq)))
        else:
            old = _order_state(stored.status, stored.created_at, stored.last_seq)
            orders.append((old, _order_state(order.status, stored.created_at, order.seq)))
    counts = ledger.count(read.counts, orders, (fill.ts for fill in fills), now)
    return {
        "counts_day": counts.day,
        "orders_today": counts.orders,
        "rejected_today": counts.rejected,
        "fills_today": counts.fills,
        "working_orders": counts.working,
    }


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
    instrument_id = group.instruments[fill.symbol][0]
    return _FillContent(
        fill.client_order_id, instrument_id, fill.side, fill.quantity, fill.price, fill.fee
    )


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
    symbols = {pk: symbol for symbol, (pk, *_) in group.instruments.items()}
    differs = "; ".join(
        f"{name} {_shown(name, old, symbols)} stored, {_shown(name, new, symbols)} sent"
        for name, old, new in zip(_FillContent._fields, stored, content, strict=True)
        if old != new
    )
    message = (
        f"fill_id {fill.fill_id!r} is stored with other content ({differs}): a fill_id names "
        f"one fill for ever; this fill is refused and the stored one stands"
    )
    _refuse_id(group, engine_id, result, fill, "fill_id", fill.fill_id, message)


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


# An order that reached one of these statuses (every one but the working ones) has ended: no
# report brings it back to work.
_ENDED = frozenset(Order.Status) - _WORKING
# Reports that begin an order: after its end, one of these newer than its last report is a new
# order under a used id.
_BEGINNING = frozenset({Order.Status.NEW, Order.Status.ACCEPTED})


class _OrderNow(NamedTuple):
    """An order as the reports judged so far leave it."""

    status: str
    last_ts: datetime
    instrument_id: int
    side: str
    order_type: str
    quantity: Decimal


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
    orders_now: dict[str, _OrderNow] = {}
    changes = []
    for order in orders:
        coid = order.client_order_id
        instrument_id = instruments[order.symbol][0]
        known = orders_now.get(coid)
        if known is None and (stored := read.stored_orders.get(coid)) is not None:
            known = _OrderNow(
                stored.status,
                stored.updated_at,
                stored.instrument_id,
                stored.side,
                stored.order_type,
                stored.quantity,
            )
        if known is not None:
            status, last_ts, was_instrument, was_side, was_type, was_quantity = known
            ended = status in _ENDED
            # A working order's type and quantity may be amended, so an ended order's earlier
            # reports may differ in them; its later ones may not.
            newer = order.ts > last_ts
            compared = [("symbol", was_instrument, instrument_id), ("side", was_side, order.side)]
            if ended and newer:
                compared.append(("order_type", was_type, order.order_type))
                compared.append(("quantity", was_quantity, order.quantity))
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
                message = f"{reused}: this report is refused and the stored order stands"
                _refuse_id(group, engine_id, result, order, "client_order_id", coid, message)
                continue
            if ended and (not newer or order.status not in _ENDED):
                continue  # a late report: stored, the order stays as it ended
        orders_now[coid] = _OrderNow(
            order.status, order.ts, instrument_id, order.side, order.order_type, order.quantity
        )
        changes.append(order)
    return changes


def _insert_fills(script: Script, group: _Group) -> None:
    """Add the fills that _check_fills let through to ``script``, in one statement after the
    orders' upsert; or, from COPY_MIN_ROWS fills on, run the script so far and COPY them (with
    their orders' ids and expected prices read after that upsert), and when their ids were not
    looked up first, sort out those the unique key refuses (rolled back to a savepoint)."""
    if group.orders:
        if len(group.orders) < COPY_MIN_ROWS:
            rows = _json_rows(sql.ORDER_COLUMNS, group.orders)
            script.add(sql.UPSERT_ORDERS_JSON, [rows])
        else:
            _stage(script, sql.ORDER_STAGE, sql.ORDER_COLUMNS, group.orders)
            script.add(sql.UPSERT_ORDERS_STAGED, [])
    fresh = group.fills
    if not fresh:
        return
    instruments = group.instruments
    if group.fill_ids_read and len(fresh) < COPY_MIN_ROWS:
        fills = [
            {
                "engine_id": engine_id,
                "fill_id": f.fill_id,
                "client_order_id": f.client_order_id,
                "instrument_id": instruments[f.symbol][0],
                "side": f.side,
                "quantity": f.quantity,
                "price": f.price,
                "fee": f.fee,
                "market_price": f.market_price,
                "liquidity": f.liquidity or "",
                "ts": f.ts,
                "seq": f.seq,
                "strategy_id": f.strategy_id or "",
                "fee_currency": f.fee_currency or "",
            }
            for engine_id, f, _, _ in fresh
        ]
        script.add(sql.INSERT_FILLS, [json_text(fills)], count="fills", prepare=False)
        return
    coids = {(engine_id, f.client_order_id) for engine_id, f, _, _ in fresh}
    pairs = _pairs("client_order_id", coids)
    script.add(sql.READ_ORDER_IDS, [pairs], fetch="order_ids", prepare=False)
    orders_by_id = {
        (engine_id, coid): (pk, expected)
        for engine_id, coid, pk, expected in script.run()["order_ids"]
    }
    if len(orders_by_id) != len(coids):
        raise RuntimeError("fills without their order row")

    def row(engine_id: int, f: p.FillEvent) -> tuple[Any, ...]:
        order_id, expected_price = orders_by_id[engine_id, f.client_order_id]
        instrument_id = instruments[f.symbol][0]
        return (
            engine_id,
            f.fill_id,
            order_id,
            instrument_id,
            f.side,
            f.quantity,
            f.price,
            f.fee,
            expected_price,
            f.market_price,
            f.liquidity or "",
            f.ts,
            f.seq,
            group.reads[engine_id].run_id,
            f.strategy_id or "",
            f.fee_currency or "",
        )

    def copy(fills: list[tuple[int, p.FillEvent, IngestResult, set[int]]]) -> None:
        rows = [row(engine_id, f) for engine_id, f, _, _ in fills]
        _copy(script.cursor, sql.FILL, sql.FILL_COLUMNS, rows)

    if group.fill_ids_read:
        copy(fresh)
        return
    try:
        with transaction.atomic():
            copy(fresh)
        return
    except UniqueViolation as exc:
        if exc.diag.constraint_name != sql.FILL_UNIQUE_ID:
            raise
    # A fill_id stored before: sort them out, replays from reused ids (_same_fill).
    pairs = _pairs("fill_id", {(engine_id, f.fill_id) for engine_id, f, _, _ in fresh})
    script.add(sql.READ_FILL_IDS, [pairs], fetch="fill_ids", prepare=False)
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


def _update_positions(
    group: _Group,
    engine_id: int,
    fills: list[p.FillEvent],
    skipped: set[int],
    reports: list[p.PositionEvent],
    rates: _Rates,
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
        instrument_id: read.positions.get(instrument_id) or ledger.Position(instrument_id)
        for instrument_id in touched
    }
    # Fills and reports interleave in seq order: a report reflects the fills before it.
    merged: list[p.FillEvent | p.PositionEvent] = sorted(
        [f for f in fills if f.seq not in skipped] + list(reports), key=lambda e: e.seq
    )
    for event in merged:
        instrument_id, multiplier, currency = instruments[event.symbol]
        pos = positions[instrument_id]
        if isinstance(event, p.FillEvent):
            fee = ledger.fee_in_instrument_currency(
                event.fee,
                fee_currency=event.fee_currency,
                currency=currency,
                account_currency=rates.account_currency,
                fx_rates=rates.fx_rates,
            )
            if fee is None:
                _fee_left_out(group, engine_id, event, currency, rates)
            ledger.apply_fill(
                pos,
                side=event.side,
                quantity=event.quantity,
                price=event.price,
                fee=ledger.ZERO if fee is None else fee,
                multiplier=multiplier,
            )
        else:
            ledger.apply_report(
                pos, quantity=event.quantity, avg_price=event.avg_price, ts=event.ts
            )
    for pos in positions.values():
        ledger.flag_mismatch(pos, group.now)
        group.positions.append({"engine_id": engine_id, **_position_row(pos)})


class _Rates(NamedTuple):
    """An engine's account currency and its latest FX rates, its batch's account events
    included."""

    account_currency: str
    fx_rates: dict[str, Any]


def _fee_left_out(
    group: _Group, engine_id: int, fill: p.FillEvent, currency: str, rates: _Rates
) -> None:
    """A fee whose currency cannot be converted is left out of the realised P&L, never
    counted at a rate of 1; a line in the engine's log says so, naming the fill and the
    currency. The fill itself is stored as reported."""
    account = rates.account_currency or DEFAULT_ACCOUNT_CURRENCY
    fee_currency = fill.fee_currency or account
    missing = sorted({fee_currency, currency} - {account} - rates.fx_rates.keys())
    message = (
        f"fill {fill.fill_id!r} ({fill.symbol}): its fee of {_plain(fill.fee)} {fee_currency} is "
        f"left out of the realised P&L, in {currency}: no FX rate for "
        f"{', '.join(missing)} into the account's {account}. Report it in an account event's "
        f"fx_rates."
    )
    context = {
        "code": "fee_not_converted",
        "fill_id": fill.fill_id,
        "seq": fill.seq,
        "fee": _plain(fill.fee),
        "fee_currency": fee_currency,
        "currency": currency,
        "missing_rates": missing,
    }
    group.logs.append((engine_id, group.now, "error", message, context, None))


def _position_row(pos: ledger.Position) -> dict[str, Any]:
    """A position's columns, in sql.POSITION_COLUMNS' order after the engine's id."""
    return {
        "instrument_id": pos.instrument_id,
        "quantity": pos.quantity,
        "avg_price": pos.avg_price,
        "realized_pnl": pos.realized_pnl,
        "last_price": pos.last_price,
        "reported_quantity": pos.reported_quantity,
        "reported_avg_price": pos.reported_avg_price,
        "reported_at": pos.reported_at,
        "mismatch_since": pos.mismatch_since,
    }


def _store_accounts(
    group: _Group, engine_id: int, accounts: list[p.AccountEvent]
) -> dict[str, Any]:
    """Add the snapshots; return the engine's new equity, session and drawdown figures."""
    group.accounts += [
        (engine_id, a.ts, a.equity, a.cash, a.margin_used, a.currency, a.seq) for a in accounts
    ]
    read = group.reads[engine_id]
    session = ledger.Session(read.session_at, read.session_equity, read.high_water_mark)
    for account in accounts:
        session = ledger.advance_session(session, account.ts, account.equity)
    last = accounts[-1]
    # Each currency's latest rate in the batch; the update merges them into the stored ones.
    rates: dict[str, str] = {}
    for account in accounts:
        if account.currency != last.currency:
            rates = {}
        rates |= {code: _plain(rate) for code, rate in account.fx_rates.items()}
    return {
        "account_currency": last.currency,
        "fx_rates": rates,
        "equity": last.equity,
        "cash": last.cash,
        "session_start_at": session.start_at,
        "session_start_equity": session.start_equity,
        "high_water_mark": session.high_water_mark,
        "day_pnl": ledger.day_pnl(session, last.equity),
        "drawdown_pct": ledger.drawdown_pct(session.high_water_mark, last.equity),
    }


def _write(script: Script, group: _Group) -> list[str]:
    """Add the rest of the batches' writes to ``script``: one statement a table, then the
    engines' rows (one statement for each set of columns the batches change), whose updated rows
    are fetched under the names returned."""
    if group.positions:
        script.add(sql.UPSERT_POSITIONS, [group.now, json_text(group.positions)])
    # The engines' tables are partitioned by day of the engine's ts, which is today's for a live
    # engine: today's partitions are made if missing (a set lookup once they are known). A row
    # of another day without its partition goes to the DEFAULT one.
    today = group.now.date()
    for table, rows in (
        (sql.ACCOUNT_SNAPSHOT, group.accounts),
        (sql.METRIC_SAMPLE, group.metrics),
        (sql.ENGINE_LOG, group.logs),
    ):
        if rows:
            partitions.ensure_partition(today, table)
    _append(script, sql.ACCOUNT_SNAPSHOT, sql.ACCOUNT_COLUMNS, group.accounts)
    _append(script, sql.METRIC_SAMPLE, sql.METRIC_COLUMNS, group.metrics)
    _append(script, sql.ENGINE_LOG, sql.LOG_COLUMNS, group.logs, json_column="context")
    if group.frames:
        partitions.ensure_partition(today)
    for frame in group.frames:
        # One row a batch: its events as one JSON array, encoded in one call in C (msgspec).
        events = json_text(frame["events"])
        values = [
            frame["engine_id"],
            frame["first_seq"],
            frame["last_seq"],
            group.now,
            frame["first_ts"],
            events,
        ]
        script.add(sql.INSERT_FRAME, values)
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for engine_id, values in group.engines.items():
        by_columns.setdefault(tuple(values), []).append({"id": engine_id, **values})
    names = []
    for n, (columns, rows) in enumerate(by_columns.items()):
        names.append(f"engines {n}")
        script.add(sql.update_engines(columns), [json_text(rows)], fetch=names[-1])
    return names
