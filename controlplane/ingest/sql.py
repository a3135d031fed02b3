"""The ingest's SQL texts: every statement it sends, built from the models' tables and values.

Table names come from ``Model._meta.db_table`` and the instrument row's defaults from the model,
so the statements follow the models; the texts are otherwise fixed, and a statement's text names
its prepared statement on each connection (controlplane.sqlscript). Rows travel as JSON documents
unpacked by ``json_to_recordset``: a table's columns are written "name type, ..." once and serve
both the unpacking and the insert (``rows``, ``json_rows`` in controlplane.ingest.store).
"""

from __future__ import annotations

from functools import cache

from controlplane import partitions
from controlplane.models import (
    AccountSnapshot,
    Engine,
    EngineLog,
    Fill,
    Instrument,
    MetricSample,
    Order,
    Position,
)

ENGINE = Engine._meta.db_table
INSTRUMENT = Instrument._meta.db_table
ORDER = Order._meta.db_table
FILL = Fill._meta.db_table
POSITION = Position._meta.db_table
ACCOUNT_SNAPSHOT = AccountSnapshot._meta.db_table
METRIC_SAMPLE = MetricSample._meta.db_table
ENGINE_LOG = EngineLog._meta.db_table
# The raw event log has no model: it is partitioned by day (controlplane.partitions).
EVENT_FRAME = partitions.PARENT
# The engines' tables are partitioned by day too, under the names controlplane.partitions knows.
assert (METRIC_SAMPLE, ENGINE_LOG, ACCOUNT_SNAPSHOT) == partitions.ENGINE_TABLES

# The unique key that refuses a fill_id stored before (a COPY of fills may meet it).
FILL_UNIQUE_ID = "fill_unique_id"
assert any(c.name == FILL_UNIQUE_ID for c in Fill._meta.constraints)

# The engine fields the ingest returns to the post-trade evaluation (IngestResult.engine), in the
# model's order, as Model.from_db wants them.
_RETURNED = {
    "id",
    "name",
    "strategy_tags",
    "desired_state",
    "equity",
    "session_start_equity",
    "day_pnl",
    "drawdown_pct",
    "counts_day",
    "orders_today",
    "rejected_today",
    "fills_today",
    "working_orders",
    # The capital ceiling's (risk's capital_ceiling_pct limit).
    "stage",
    "target_capital",
    "capital_pct",
    # Exposures are converted into the account currency (controlplane.trading_math.exposure).
    "account_currency",
    "fx_rates",
}
ENGINE_FIELDS = tuple(f.attname for f in Engine._meta.concrete_fields if f.attname in _RETURNED)
assert ENGINE_FIELDS[0] == "id"  # the engines' updates are matched to their batches by it


@cache
def names(columns: str) -> tuple[str, ...]:
    """The names of ``columns`` ("name type, ...")."""
    return tuple(column.split()[0] for column in columns.split(","))


@cache
def rows(columns: str, lead: str = "", staged: str | None = None) -> str:
    """``SELECT [<lead>,] <each column>`` from a JSON array of objects (one parameter after the
    ``lead`` ones), the objects' keys named and typed by ``columns`` ("name type, ..."), or
    from the ``staged`` table of those columns."""
    selected = ", ".join(f"r.{name}" for name in names(columns))
    source = f"{staged} AS r" if staged else f"json_to_recordset(%s::json) AS r({columns})"
    return f"SELECT {lead + ', ' if lead else ''}{selected} FROM {source}"


@cache
def append(table: str, columns: str) -> str:
    """Insert into ``table`` the rows of one JSON parameter (``rows``)."""
    return f"INSERT INTO {table} ({', '.join(names(columns))}) {rows(columns)}"


def copy(table: str, columns: tuple[str, ...] | None) -> str:
    target = f"{table} ({', '.join(columns)})" if columns else table
    return f"COPY {target} FROM STDIN"


def create_stage(table: str, columns: str) -> str:
    return f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS"


def empty_stage(table: str) -> str:
    return f"DELETE FROM {table}"


# The row locks that serialise each engine's batches, taken in id order (two transactions that
# lock some of the same engines queue instead of deadlocking). An UPDATE takes them as SELECT ..
# FOR UPDATE would, and every batch (a replayed one too) records when its engine was last heard
# from anyway.
LOCK_ENGINES = f"""
    UPDATE {ENGINE} e SET last_seen_at = %s
    FROM (SELECT id FROM {ENGINE} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE)
        AS locked
    WHERE e.id = locked.id
    RETURNING e.id, e.last_seq, e.session_start_at, e.session_start_equity, e.high_water_mark,
        e.run_id, e.account_currency, e.fx_rates::text, e.counts_day, e.orders_today,
        e.rejected_today, e.fills_today, e.working_orders"""
# Lists of symbols are text[] literals (text_array); (engine, key) pairs are JSON documents.
READ_INSTRUMENTS = (
    f"SELECT symbol, id, multiplier, currency FROM {INSTRUMENT} WHERE symbol = ANY(%s::text[])"
)


def _default(field: str) -> str:
    value = Instrument._meta.get_field(field).get_default()
    return f"'{value}'" if isinstance(value, str) else str(value)


# Symbols an engine trades before anyone described them get a bare instrument row, with the
# model's defaults, that a risk manager can complete (sector, multiplier) in the admin.
_BARE_FIELDS = ("sector", "asset_class", "multiplier", "currency", "described_by")
_BARE_INSTRUMENT = ", ".join(map(_default, _BARE_FIELDS))
CREATE_INSTRUMENTS = f"""
        INSERT INTO {INSTRUMENT} (symbol, {", ".join(_BARE_FIELDS)})
        SELECT s, {_BARE_INSTRUMENT} FROM unnest(%s::text[]) AS s
        ON CONFLICT (symbol) DO NOTHING
        """
# Instruments the engines declare (instrument events): locked in symbol order, so that two
# engines declaring the same symbols queue, and the second is judged against the first's.
DECLARED_FIELDS = ("asset_class", "multiplier", "currency", "tick_size", "sector")
LOCK_DECLARED = f"""
    SELECT symbol, id, {", ".join(DECLARED_FIELDS)}, described_by FROM {INSTRUMENT}
    WHERE symbol = ANY(%s::text[]) ORDER BY symbol FOR UPDATE"""
DECLARED_COLUMNS = (
    "id bigint, asset_class text, multiplier numeric, currency text, tick_size numeric, "
    "sector text, described_by text"
)
ENGINE_NAMES = f"SELECT id, name FROM {ENGINE} WHERE id = ANY(%s::bigint[])"
UPDATE_DECLARED = f"""
    UPDATE {INSTRUMENT} i SET {", ".join(f"{c} = r.{c}" for c in names(DECLARED_COLUMNS)[1:])}
    FROM json_to_recordset(%s::json) AS r({DECLARED_COLUMNS}) WHERE i.id = r.id
    RETURNING i.symbol, i.id, i.multiplier, i.currency"""
# Each (engine, key) pair is looked up on its own, in a unique index: LIMIT 1 keeps the planner
# from joining the whole JSON document at once, which it takes for a hundred rows, by hashing a
# scan of the table (seen on the positions, which a day's updates leave full of dead rows).
READ_POSITIONS = f"""
    SELECT k.engine_id, p.instrument_id, p.quantity, p.avg_price, p.realized_pnl, p.last_price,
           p.reported_quantity, p.reported_avg_price, p.reported_at, p.mismatch_since
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, symbol text)
    CROSS JOIN LATERAL (
        SELECT p.* FROM {POSITION} p
        JOIN {INSTRUMENT} i ON i.id = p.instrument_id
        WHERE p.engine_id = k.engine_id AND i.symbol = k.symbol LIMIT 1) AS p"""
# Ids are unique per (engine, run): an engine's orders and fills are those of the run its last
# hello named, read from its row, which the batch holds locked (LOCK_ENGINES) so that the run
# cannot change under it.
_ORDER_BY_PAIR = f"""
    JOIN {ENGINE} e ON e.id = k.engine_id
    CROSS JOIN LATERAL (
        SELECT * FROM {ORDER} o
        WHERE o.engine_id = k.engine_id AND o.run_id = e.run_id
            AND o.client_order_id = k.client_order_id LIMIT 1) AS o"""
READ_ORDERS = f"""
    SELECT o.engine_id, o.client_order_id, o.status, o.last_seq, o.created_at, o.updated_at,
           o.instrument_id, o.side, o.order_type, o.quantity
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, client_order_id text)
    {_ORDER_BY_PAIR}"""
READ_ORDER_IDS = f"""
    SELECT o.engine_id, o.client_order_id, o.id, o.expected_price
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, client_order_id text)
    {_ORDER_BY_PAIR}"""
# With what each stored fill says (the store's _FillContent), to tell a replay from a reused
# fill_id.
READ_FILL_IDS = f"""
    SELECT f.engine_id, f.fill_id, o.client_order_id, f.instrument_id, f.side, f.quantity,
           f.price, f.fee
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, fill_id text)
    JOIN {ENGINE} e ON e.id = k.engine_id
    CROSS JOIN LATERAL (
        SELECT * FROM {FILL} f
        WHERE f.engine_id = k.engine_id AND f.run_id = e.run_id AND f.fill_id = k.fill_id
        LIMIT 1) AS f
    JOIN {ORDER} o ON o.id = f.order_id"""

ORDER_COLUMNS = """engine_id bigint, client_order_id text, broker_order_id text,
    instrument_id bigint, side text, order_type text, quantity numeric, limit_price numeric,
    stop_price numeric, expected_price numeric, status text, filled_quantity numeric,
    avg_fill_price numeric, reject_reason text, created_at timestamptz, updated_at timestamptz,
    last_seq bigint, run_id text, strategy_id text"""
# The temporary table that a group's orders are COPYed into when they are many.
ORDER_STAGE = "cp_stage_order"

# A stored order changes only for a newer report (last_seq): a late or replayed one leaves it.
_UPSERT_ORDERS = f"""
    INSERT INTO {ORDER} AS o (
        engine_id, client_order_id, broker_order_id, instrument_id, side, order_type,
        quantity, limit_price, stop_price, expected_price, status, filled_quantity,
        avg_fill_price, reject_reason, created_at, updated_at, last_seq, run_id, strategy_id)
    {{rows}}
    ON CONFLICT (engine_id, run_id, client_order_id) DO UPDATE SET
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
        last_seq = EXCLUDED.last_seq,
        strategy_id = COALESCE(NULLIF(EXCLUDED.strategy_id, ''), o.strategy_id)
    WHERE o.last_seq < EXCLUDED.last_seq"""
UPSERT_ORDERS_JSON = _UPSERT_ORDERS.replace("{rows}", rows(ORDER_COLUMNS))
UPSERT_ORDERS_STAGED = _UPSERT_ORDERS.replace("{rows}", rows(ORDER_COLUMNS, staged=ORDER_STAGE))

# Runs after the orders' upsert in the same script, so a fill finds an order reported in its own
# batch, and takes the order's expected price as that upsert left it.
INSERT_FILLS = f"""
    INSERT INTO {FILL} (engine_id, fill_id, order_id, instrument_id, side, quantity,
        price, fee, expected_price, market_price, liquidity, ts, seq, run_id, strategy_id,
        fee_currency)
    SELECT k.engine_id, k.fill_id, o.id, k.instrument_id, k.side, k.quantity, k.price, k.fee,
        o.expected_price, k.market_price, k.liquidity, k.ts, k.seq, e.run_id, k.strategy_id,
        k.fee_currency
    FROM json_to_recordset(%s::json) AS k(engine_id bigint, fill_id text,
        client_order_id text, instrument_id bigint, side text, quantity numeric,
        price numeric, fee numeric, market_price numeric, liquidity text, ts timestamptz,
        seq bigint, strategy_id text, fee_currency text)
    {_ORDER_BY_PAIR}"""
# The fill table's columns as the COPY of many fills writes them.
FILL_COLUMNS = (
    "engine_id",
    "fill_id",
    "order_id",
    "instrument_id",
    "side",
    "quantity",
    "price",
    "fee",
    "expected_price",
    "market_price",
    "liquidity",
    "ts",
    "seq",
    "run_id",
    "strategy_id",
    "fee_currency",
)

POSITION_COLUMNS = """engine_id bigint, instrument_id bigint, quantity numeric,
    avg_price numeric, realized_pnl numeric, last_price numeric, reported_quantity numeric,
    reported_avg_price numeric, reported_at timestamptz, mismatch_since timestamptz"""
UPSERT_POSITIONS = f"""
    INSERT INTO {POSITION} AS p (
        updated_at, engine_id, instrument_id, quantity, avg_price, realized_pnl, last_price,
        reported_quantity, reported_avg_price, reported_at, mismatch_since)
    {rows(POSITION_COLUMNS, lead="%s")}
    ON CONFLICT (engine_id, instrument_id) DO UPDATE SET
        quantity = EXCLUDED.quantity, avg_price = EXCLUDED.avg_price,
        realized_pnl = EXCLUDED.realized_pnl, last_price = EXCLUDED.last_price,
        reported_quantity = EXCLUDED.reported_quantity,
        reported_avg_price = EXCLUDED.reported_avg_price,
        reported_at = EXCLUDED.reported_at, mismatch_since = EXCLUDED.mismatch_since,
        updated_at = EXCLUDED.updated_at"""

# The append-only tables' columns, the engine's id first.
ACCOUNT_COLUMNS = (
    "engine_id bigint, ts timestamptz, equity numeric, cash numeric, "
    "margin_used numeric, currency text, seq bigint"
)
METRIC_COLUMNS = "engine_id bigint, ts timestamptz, name text, value float8, seq bigint"
LOG_COLUMNS = (
    "engine_id bigint, ts timestamptz, level text, message text, context jsonb, seq bigint"
)

# One row a batch, its events as one JSON array: a statement of its own, so that PostgreSQL
# reads the array once, as the column's value.
INSERT_FRAME = (
    f"INSERT INTO {EVENT_FRAME} (engine_id, first_seq, last_seq, received_at, first_ts,"
    " events) VALUES (%s, %s, %s, %s, %s, %s::json)"
)

# The engine row's columns a batch may set, with their types for json_to_recordset.
ENGINE_COLUMNS = {
    "last_seq": "bigint",
    "counts_day": "date",
    "orders_today": "integer",
    "rejected_today": "integer",
    "fills_today": "integer",
    "working_orders": "integer",
    "equity": "numeric",
    "cash": "numeric",
    "session_start_at": "timestamptz",
    "session_start_equity": "numeric",
    "high_water_mark": "numeric",
    "day_pnl": "numeric",
    "drawdown_pct": "numeric",
    "reported_state": "text",
    "reported_reason": "text",
    "reported_reason_state": "text",
    "reported_reason_at": "timestamptz",
    "account_currency": "text",
    "fx_rates": "jsonb",
}


_ENGINE_SETS = {
    "last_seq": "last_seq = GREATEST(e.last_seq, v.last_seq)",
    # Each currency's latest rate; rates into another account currency are forgotten.
    "fx_rates": (
        "fx_rates = CASE WHEN e.account_currency = v.account_currency "
        "THEN e.fx_rates || v.fx_rates ELSE v.fx_rates END"
    ),
}


@cache
def update_engines(columns: tuple[str, ...]) -> str:
    """The engines' one update of the batches that set ``columns``: their watermarks, figures
    and reported states (last_seq never goes back); returns ENGINE_FIELDS."""
    sets = ", ".join(_ENGINE_SETS.get(c, f"{c} = v.{c}") for c in columns)
    typed = ", ".join(f"{c} {ENGINE_COLUMNS[c]}" for c in columns)
    return (
        f"UPDATE {ENGINE} e SET {sets} "
        f"FROM json_to_recordset(%s::json) AS v(id bigint, {typed}) WHERE e.id = v.id "
        f"RETURNING {', '.join(f'e.{name}' for name in ENGINE_FIELDS)}"
    )
