"""Durable, idempotent storage of engine event batches.

One batch is one transaction: the raw events go to the partitioned event log, and are projected
into orders, fills, the position ledger, account snapshots, metrics and logs, and the engine's
running figures. The batch is acknowledged only after the commit.

Idempotence: per engine, events are stored in seq order and the engine row keeps the highest
seq processed (``Engine.last_seq``, updated under a row lock in the same transaction). An event at
or below that watermark is a replay and changes nothing. Fills are also unique by
(engine, fill_id) in the database, so a fill re-sent under a new seq is not counted twice either.

The hot path never makes an ORM call per event: rows go in with COPY (append-only tables) or one
``INSERT .. SELECT FROM unnest(...)`` statement per table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
from django.db import connection, transaction
from psycopg.errors import UniqueViolation

from controlplane import partitions
from engine_sdk import protocol as p

log = logging.getLogger(__name__)

ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.00000001")


@dataclass
class IngestResult:
    ack_seq: int
    stored: int = 0
    replayed: int = 0
    errors: list[p.Error] = field(default_factory=list)


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


def _instrument_ids(cursor: Any, symbols: Iterable[str]) -> dict[str, tuple[int, Decimal]]:
    wanted = sorted(set(symbols))
    if not wanted:
        return {}
    # Symbols an engine trades before anyone described them get a bare instrument row that a
    # risk manager can complete (sector, multiplier) in the admin.
    cursor.execute(
        """
        INSERT INTO controlplane_instrument (symbol, sector, asset_class, multiplier, currency)
        SELECT s, '', 'equity', 1, 'USD' FROM unnest(%s::text[]) AS s
        ON CONFLICT (symbol) DO NOTHING
        """,
        [wanted],
    )
    cursor.execute(
        "SELECT symbol, id, multiplier FROM controlplane_instrument WHERE symbol = ANY(%s)",
        [wanted],
    )
    return {symbol: (pk, mult) for symbol, pk, mult in cursor.fetchall()}


def _error(code: str, message: str, event: p.Event, field_name: str | None = None) -> p.Error:
    return p.Error(code=code, message=message, field=field_name, seq=event.seq)


def ingest_events(
    *, engine_id: int, events: list[p.Event], now: datetime | None = None
) -> IngestResult:
    """Store a batch for one engine. Raises on a database failure (nothing is then stored)."""
    received_at = now or datetime.now(UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT last_seq FROM controlplane_engine WHERE id = %s FOR UPDATE", [engine_id]
        )
        row = cursor.fetchone()
        if row is None:
            raise LookupError(f"engine {engine_id} does not exist")
        last_seq: int = row[0]

        fresh: dict[int, p.Event] = {}
        replayed = 0
        for event in events:
            if event.seq <= last_seq or event.seq in fresh:
                replayed += 1
            else:
                fresh[event.seq] = event
        result = IngestResult(ack_seq=last_seq, replayed=replayed)
        if not fresh:
            _touch_engine(cursor, engine_id, received_at)
            return result
        batch = [fresh[seq] for seq in sorted(fresh)]
        result.ack_seq = batch[-1].seq

        accepted = _project(cursor, engine_id, batch, result, received_at)
        _append_event_log(cursor, engine_id, accepted, received_at)
        result.stored = len(accepted)
        cursor.execute(
            """
            UPDATE controlplane_engine
            SET last_seq = GREATEST(last_seq, %s), last_seen_at = %s
            WHERE id = %s
            """,
            [result.ack_seq, received_at, engine_id],
        )
    return result


def _touch_engine(cursor: Any, engine_id: int, at: datetime) -> None:
    cursor.execute(
        "UPDATE controlplane_engine SET last_seen_at = %s WHERE id = %s", [at, engine_id]
    )


_json = msgspec.json.Encoder()


def _append_event_log(
    cursor: Any, engine_id: int, events: list[p.Event], received_at: datetime
) -> None:
    if not events:
        return
    partitions.ensure_partition(received_at.date())
    _copy(cursor, "controlplane_engineevent",
          ("engine_id", "seq", "kind", "ts", "received_at", "payload"),
          [(engine_id, event.seq, event.__struct_config__.tag, event.ts, received_at,
            _json.encode(event).decode()) for event in events])  # fmt: skip


def _project(
    cursor: Any, engine_id: int, batch: list[p.Event], result: IngestResult, now: datetime
) -> list[p.Event]:
    """Write the projections; return the events accepted (rejected ones get an error)."""
    orders: list[p.OrderEvent] = []
    fills: list[p.FillEvent] = []
    reports: list[p.PositionEvent] = []
    accounts: list[p.AccountEvent] = []
    metrics: list[p.MetricEvent] = []
    logs: list[p.LogEvent] = []
    state: p.StateEvent | None = None
    symbols: set[str] = set()
    for event in batch:
        kind = type(event)
        if kind is p.FillEvent:
            fills.append(event)  # type: ignore[arg-type]
            symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.OrderEvent:
            orders.append(event)  # type: ignore[arg-type]
            symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.MetricEvent:
            metrics.append(event)  # type: ignore[arg-type]
        elif kind is p.AccountEvent:
            accounts.append(event)  # type: ignore[arg-type]
        elif kind is p.PositionEvent:
            reports.append(event)  # type: ignore[arg-type]
            symbols.add(event.symbol)  # type: ignore[union-attr]
        elif kind is p.LogEvent:
            logs.append(event)  # type: ignore[arg-type]
        elif kind is p.StateEvent:
            state = event  # type: ignore[assignment]
    instruments = _instrument_ids(cursor, symbols)
    rejected: set[int] = set()

    _upsert_orders(cursor, engine_id, orders, instruments)
    if fills:
        # After the order upsert, so a fill may arrive in the same batch as its order.
        rejected |= _insert_fills(cursor, engine_id, fills, instruments, result)
    if fills or reports:
        _update_positions(cursor, engine_id, fills, rejected, reports, instruments, now)
    if accounts:
        _store_accounts(cursor, engine_id, accounts)
    if metrics:
        _copy(cursor, "controlplane_metricsample", ("engine_id", "ts", "name", "value", "seq"),
              ((engine_id, m.ts, m.name, m.value, m.seq) for m in metrics))  # fmt: skip
    if logs:
        _copy(cursor, "controlplane_enginelog",
              ("engine_id", "ts", "level", "message", "context", "seq"),
              ((engine_id, e.ts, e.level, e.message, _json.encode(e.context).decode(), e.seq)
               for e in logs))  # fmt: skip
    if state is not None:
        cursor.execute(
            "UPDATE controlplane_engine SET reported_state = %s WHERE id = %s",
            [state.trading_state, engine_id],
        )
    return [e for e in batch if e.seq not in rejected]


def _copy(
    cursor: Any, table: str, columns: tuple[str, ...] | None, rows: Iterable[tuple[Any, ...]]
) -> None:
    target = f"{table} ({', '.join(columns)})" if columns else table
    # Decimals and datetimes become text in one pass in C (msgspec): psycopg's own dumpers pick
    # a dumper per value for them, which cost more than the rest of the ingest's Python put
    # together. PostgreSQL parses the ISO 8601 text ("...Z" or "+02:00") exactly.
    rows = msgspec.to_builtins(rows if isinstance(rows, list) else list(rows))
    with cursor.cursor.copy(f"COPY {target} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# Staging tables: COPY (formatted in C by psycopg) into a temporary table, then one set-based
# statement into the real table. Binding thousands of values as array parameters costs far more.
_STAGING = {
    "cp_stage_order": """
        client_order_id text, broker_order_id text, instrument_id bigint, side text,
        order_type text, quantity numeric, limit_price numeric, stop_price numeric,
        expected_price numeric, status text, filled_quantity numeric, avg_fill_price numeric,
        reject_reason text, created_at timestamptz, updated_at timestamptz, last_seq bigint""",
}


def _stage(cursor: Any, table: str, rows: Iterable[tuple[Any, ...]]) -> None:
    cursor.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {table} ({_STAGING[table]}) ON COMMIT DELETE ROWS"
    )
    # The table empties itself at each commit; rows are left over only when batches share an
    # outer transaction. DELETE on an empty table costs nothing, where TRUNCATE would give the
    # table a new file every batch.
    cursor.execute(f"DELETE FROM {table}")
    _copy(cursor, table, None, rows)


def _upsert_orders(
    cursor: Any,
    engine_id: int,
    orders: list[p.OrderEvent],
    instruments: dict[str, tuple[int, Decimal]],
) -> None:
    if not orders:
        return
    # Several reports of one order in a batch: the latest wins, the first gives created_at.
    latest: dict[str, p.OrderEvent] = {}
    first_ts: dict[str, datetime] = {}
    for order in orders:
        latest[order.client_order_id] = order
        first_ts.setdefault(order.client_order_id, order.ts)
    _stage(cursor, "cp_stage_order", (
        (o.client_order_id, o.broker_order_id or "", instruments[o.symbol][0], o.side,
         o.order_type, o.quantity, o.limit_price, o.stop_price, o.expected_price, o.status,
         o.filled_quantity, o.avg_fill_price, o.reject_reason or "", first_ts[o.client_order_id],
         o.ts, o.seq)
        for o in latest.values()
    ))  # fmt: skip
    cursor.execute(
        """
        INSERT INTO controlplane_order AS o (
            engine_id, client_order_id, broker_order_id, instrument_id, side, order_type,
            quantity, limit_price, stop_price, expected_price, status, filled_quantity,
            avg_fill_price, reject_reason, created_at, updated_at, last_seq)
        SELECT %s, s.* FROM cp_stage_order s
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
        WHERE o.last_seq < EXCLUDED.last_seq
        """,
        [engine_id],
    )


def _insert_fills(
    cursor: Any,
    engine_id: int,
    fills: list[p.FillEvent],
    instruments: dict[str, tuple[int, Decimal]],
    result: IngestResult,
) -> set[int]:
    """Insert fills; return the seqs not counted (unknown order, or fill_id already stored).

    The fills go straight into the table with COPY. A fill_id stored before under another seq is
    rare, so it is not looked up first: the unique (engine, fill_id) key refuses the COPY, which
    is then rolled back to its savepoint and done again without the fills already stored.
    """
    cursor.execute(
        """
        SELECT client_order_id, id, expected_price FROM controlplane_order
        WHERE engine_id = %s AND client_order_id = ANY(%s)
        """,
        [engine_id, list({fill.client_order_id for fill in fills})],
    )
    orders = {coid: (pk, expected) for coid, pk, expected in cursor.fetchall()}
    rejected: set[int] = set()
    known: list[p.FillEvent] = []
    for fill in fills:
        if fill.client_order_id in orders:
            known.append(fill)
        else:
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
    if not known:
        return rejected
    if len({fill.fill_id for fill in known}) == len(known):
        try:
            with transaction.atomic():
                _copy(cursor, "controlplane_fill", _FILL_COLUMNS,
                      _fill_rows(engine_id, known, orders, instruments))  # fmt: skip
            return rejected
        except UniqueViolation as exc:
            if exc.diag.constraint_name != "fill_unique_id":
                raise
            # A fill_id stored before: sort them out below.
    cursor.execute(
        "SELECT fill_id FROM controlplane_fill WHERE engine_id = %s AND fill_id = ANY(%s)",
        [engine_id, [fill.fill_id for fill in known]],
    )
    seen = {row[0] for row in cursor.fetchall()}
    fresh = []
    for fill in known:
        if fill.fill_id in seen:
            # Already stored under another seq: counted once, the repeat is only logged.
            rejected.add(fill.seq)
            result.replayed += 1
        else:
            seen.add(fill.fill_id)
            fresh.append(fill)
    if fresh:
        _copy(cursor, "controlplane_fill", _FILL_COLUMNS,
              _fill_rows(engine_id, fresh, orders, instruments))  # fmt: skip
    return rejected


def _fill_rows(
    engine_id: int,
    fills: list[p.FillEvent],
    orders: dict[str, tuple[int, Decimal | None]],
    instruments: dict[str, tuple[int, Decimal]],
) -> list[tuple[Any, ...]]:
    return [
        (engine_id, f.fill_id, orders[f.client_order_id][0], instruments[f.symbol][0], f.side,
         f.quantity, f.price, f.fee, orders[f.client_order_id][1], f.liquidity or "", f.ts, f.seq)
        for f in fills
    ]  # fmt: skip


_FILL_COLUMNS = (
    "engine_id", "fill_id", "order_id", "instrument_id", "side", "quantity", "price", "fee",
    "expected_price", "liquidity", "ts", "seq",
)  # fmt: skip


def _update_positions(
    cursor: Any,
    engine_id: int,
    fills: list[p.FillEvent],
    skipped: set[int],
    reports: list[p.PositionEvent],
    instruments: dict[str, tuple[int, Decimal]],
    now: datetime,
) -> None:
    touched = {instruments[f.symbol][0] for f in fills if f.seq not in skipped}
    touched |= {instruments[r.symbol][0] for r in reports}
    if not touched:
        return
    cursor.execute(
        """
        SELECT instrument_id, quantity, avg_price, realized_pnl, last_price, reported_quantity,
               reported_avg_price, reported_at, mismatch_since
        FROM controlplane_position WHERE engine_id = %s AND instrument_id = ANY(%s)
        """,
        [engine_id, sorted(touched)],
    )
    positions = {row[0]: _Position(*row) for row in cursor.fetchall()}
    for instrument_id in touched:
        positions.setdefault(instrument_id, _Position(instrument_id))
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
            pos.mismatch_since = now
    rows = list(positions.values())
    cursor.execute(
        """
        INSERT INTO controlplane_position AS p (
            engine_id, instrument_id, quantity, avg_price, realized_pnl, last_price,
            reported_quantity, reported_avg_price, reported_at, mismatch_since, updated_at)
        SELECT %s, u.*, %s FROM unnest(
            %s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[], %s::numeric[],
            %s::numeric[], %s::numeric[], %s::timestamptz[], %s::timestamptz[]) AS u
        ON CONFLICT (engine_id, instrument_id) DO UPDATE SET
            quantity = EXCLUDED.quantity, avg_price = EXCLUDED.avg_price,
            realized_pnl = EXCLUDED.realized_pnl, last_price = EXCLUDED.last_price,
            reported_quantity = EXCLUDED.reported_quantity,
            reported_avg_price = EXCLUDED.reported_avg_price,
            reported_at = EXCLUDED.reported_at, mismatch_since = EXCLUDED.mismatch_since,
            updated_at = EXCLUDED.updated_at
        """,
        [
            engine_id,
            now,
            [r.instrument_id for r in rows],
            [r.quantity for r in rows],
            [r.avg_price for r in rows],
            [r.realized_pnl for r in rows],
            [r.last_price for r in rows],
            [r.reported_quantity for r in rows],
            [r.reported_avg_price for r in rows],
            [r.reported_at for r in rows],
            [r.mismatch_since for r in rows],
        ],
    )


def _store_accounts(cursor: Any, engine_id: int, accounts: list[p.AccountEvent]) -> None:
    _copy(cursor, "controlplane_accountsnapshot",
          ("engine_id", "ts", "equity", "cash", "margin_used", "currency", "seq"),
          ((engine_id, a.ts, a.equity, a.cash, a.margin_used, a.currency, a.seq)
           for a in accounts))  # fmt: skip
    cursor.execute(
        """
        SELECT session_start_at, session_start_equity, high_water_mark
        FROM controlplane_engine WHERE id = %s
        """,
        [engine_id],
    )
    session_at, session_equity, hwm = cursor.fetchone()
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
    cursor.execute(
        """
        UPDATE controlplane_engine SET equity = %s, cash = %s, session_start_at = %s,
            session_start_equity = %s, high_water_mark = %s, day_pnl = %s, drawdown_pct = %s
        WHERE id = %s
        """,
        [last.equity, last.cash, session_at, session_equity, hwm, day_pnl,
         drawdown.quantize(Decimal("0.000001")), engine_id],
    )  # fmt: skip
