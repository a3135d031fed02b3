"""Engine protocol v1: the frames exchanged between a trading engine and the control plane.

The wire format is JSON text frames (docs/protocol.md is the reference). Frames are tagged by
their ``type`` field, events inside an ``events`` frame by their ``kind`` field. Decimals travel as
strings ("100.25") so no precision is lost; numbers are accepted too. Timestamps are RFC 3339 and
must carry a timezone. Unknown fields are ignored so either side can add optional fields without
breaking the other.

This module is shared by the SDK and the server's gateway, so it imports nothing but msgspec and
the standard library.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal, get_args

import msgspec

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_PROTOCOL_VIOLATION",
    "CLOSE_RATE_LIMITED",
    "CLOSE_REPLACED",
    "CLOSE_SERVER_ERROR",
    "CLOSE_STAGE_FORBIDS",
    "CLOSE_UNAUTHORIZED",
    "ERROR_CODES",
    "MAX_DECIMAL_ABS",
    "MAX_EVENTS_PER_FRAME",
    "MAX_FRAME_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SEQ",
    "MAX_SYMBOL_LENGTH",
    "MAX_TIMESTAMP",
    "METRIC_NAMES",
    "MIN_POSITIVE_DECIMAL",
    "MIN_TIMESTAMP",
    "PROTOCOL_VERSION",
    "AccountEvent",
    "Ack",
    "AssetClass",
    "Capabilities",
    "Command",
    "CommandAck",
    "CommandKind",
    "CommandResult",
    "CommandResultStatus",
    "EngineFrame",
    "Error",
    "ErrorCode",
    "Event",
    "EventKind",
    "Events",
    "FillEvent",
    "Heartbeat",
    "Hello",
    "InstrumentEvent",
    "LogEvent",
    "LogLevel",
    "MetricEvent",
    "Mode",
    "OrderEvent",
    "OrderStatus",
    "OrderType",
    "PositionEvent",
    "ServerFrame",
    "ServerHeartbeat",
    "Side",
    "Stage",
    "StateEvent",
    "TradingState",
    "Welcome",
    "check_encoded_event",
    "decode_engine_frame",
    "decode_event",
    "decode_events_leniently",
    "decode_events_positioned",
    "decode_server_frame",
    "encode",
    "encode_event",
    "error_field",
    "frame_bytes",
    "utc_now",
    "validate_event",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME_BYTES: Final = 1_048_576
MAX_EVENTS_PER_FRAME: Final = 5000
# The bounds below keep whatever the schema accepts inside what the server's database holds, so
# that a valid event is never one the database refuses (docs/protocol.md, "Bounds").
# Every decimal must be finite and below this in absolute value: it keeps values inside a
# NUMERIC(24, 8) column.
MAX_DECIMAL_ABS: Final = Decimal(10) ** 16
# Decimals are stored to 8 places: a price or quantity that must be positive must not round to 0.
MIN_POSITIVE_DECIMAL: Final = Decimal("0.00000001")
# Digits after the point a decimal may carry (PostgreSQL parses at most 16383; the 9th on are
# rounded away when stored anyway).
MAX_DECIMAL_PLACES: Final = 1000
# A seq is a BIGINT.
MAX_SEQ: Final = 2**63 - 1
# A limits version is an INTEGER.
MAX_INT32: Final = 2**31 - 1
# Times: PostgreSQL takes UTC offsets below 16 h, and this range keeps any arithmetic on them
# (days, sessions, windows) far from the ends of Python's datetime.
MAX_UTC_OFFSET: Final = timedelta(hours=16)
MIN_TIMESTAMP: Final = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP: Final = datetime(3000, 1, 1, tzinfo=UTC)
# Nesting of free-form JSON objects (a log's context, a command result's data): the database and
# every reader walk them recursively.
MAX_JSON_DEPTH: Final = 16

CLOSE_UNAUTHORIZED: Final = 4401
CLOSE_PROTOCOL_VIOLATION: Final = 4400
CLOSE_REPLACED: Final = 4409
# The engine's stage does not allow the mode it said hello in (a live hello from an engine the
# control plane has not promoted to real money): a person must act, so the engine stops.
CLOSE_STAGE_FORBIDS: Final = 4403
# The engine sent frames faster than the server takes them (see docs/protocol.md, section 13).
CLOSE_RATE_LIMITED: Final = 4429
CLOSE_SERVER_ERROR: Final = 1011
CLOSE_GOING_AWAY: Final = 1001

Side = Literal["buy", "sell"]
Mode = Literal["backtest", "paper", "shadow", "live"]
# The step of the way to real money the control plane has an engine on (docs/going-live.md).
Stage = Literal["backtest", "paper", "shadow", "small_capital", "full"]
TradingState = Literal["ACTIVE", "PAUSED", "REDUCING", "HALTED"]
OrderStatus = Literal[
    "new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "expired"
]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
CommandKind = Literal[
    "pause", "resume", "reduce", "flatten", "cancel_all", "kill", "set_limits", "kill_drill"
]
CommandResultStatus = Literal["succeeded", "partial", "failed"]
EventKind = Literal["order", "fill", "position", "account", "metric", "log", "state", "instrument"]
AssetClass = Literal["equity", "future", "option", "fx", "crypto", "bond", "other"]
ErrorCode = Literal[
    "malformed_json",
    "unknown_type",
    "invalid_frame",
    "invalid_event",
    "unknown_kind",
    "frame_too_large",
    "too_many_events",
    "not_hello",
    "hello_timeout",
    "protocol_version",
    "unknown_order",
    "duplicate_id",
    "engine_mismatch",
    "internal_error",
    "stale_command",
    "unauthorized",
    "rate_limited",
    "event_refused",
    "stage_forbids_live",
    "instrument_conflict",
]
ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))

# Metric names with an agreed meaning; any name matching the pattern is accepted.
METRIC_NAMES: Final = (
    "latency_ms",
    "md_latency_ms",
    "quote_age_ms",
    "cpu_pct",
    "memory_mb",
    "queue_depth",
    "error_count",
)

# PostgreSQL text cannot hold U+0000: no string the engine sends may contain it.
_NO_NUL = r"^[^\x00]*$"
_NO_NUL_MESSAGE = f"Expected `str` matching regex {_NO_NUL!r}"
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
LastSeq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
LimitsVersion = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT32)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
# Symbols and ids are in every order and fill: their structs check for U+0000 themselves, with
# `in`, a fraction of what a regular expression costs per string (_check_text).
# 128: venues with long instrument ids (option series, perpetual swaps on some crypto venues)
# exceed the 32 characters once allowed.
MAX_SYMBOL_LENGTH: Final = 128
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SYMBOL_LENGTH)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ShortText = Annotated[str, msgspec.Meta(max_length=1024, pattern=_NO_NUL)]
Name = Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)]
MetricName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
LogMessage = Annotated[str, msgspec.Meta(max_length=8192, pattern=_NO_NUL)]
Currency = Annotated[str, msgspec.Meta(min_length=1, max_length=16, pattern=_NO_NUL)]
BrokerOrderId = Annotated[str, msgspec.Meta(max_length=128, pattern=_NO_NUL)]
Text64 = Annotated[str, msgspec.Meta(max_length=64, pattern=_NO_NUL)]
Text32 = Annotated[str, msgspec.Meta(max_length=32, pattern=_NO_NUL)]
Detail = Annotated[str, msgspec.Meta(max_length=8192, pattern=_NO_NUL)]
# A currency's code: an instrument's currency, a fee's, and the currencies of the FX rates. Every
# ISO 4217 code (EUR), and the codes crypto venues use (USDT, BNB, 1INCH): upper-case letters and
# digits, 2 to 16 of them, as the columns that keep them hold.
CURRENCY_CODE_PATTERN: Final = r"^[A-Z0-9]{2,16}$"
CurrencyCode = Annotated[str, msgspec.Meta(pattern=CURRENCY_CODE_PATTERN)]
# A strategy's id inside an engine that hosts several, and the id of one run of an engine (a
# backtest, a restarted paper run) whose order and fill ids may repeat those of its previous run.
StrategyId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_NO_NUL)]
RunId = Annotated[str, msgspec.Meta(max_length=64, pattern=_NO_NUL)]
_CURRENCY_CODE: Final = re.compile(CURRENCY_CODE_PATTERN)
# An FX rate's key is checked in AccountEvent.__post_init__, which names the field.
_FxKey = Annotated[str, msgspec.Meta(max_length=32)]
# At most this many FX rates on one account event (a desk trades in a few currencies).
MAX_FX_RATES: Final = 64
# An instrument's multiplier and tick size, and an FX rate, are positive and bounded so that
# they fit their columns (multiplier NUMERIC(18, 6), tick size NUMERIC(20, 10)) and so that a
# position's exposure (quantity x price x multiplier x rate) stays a number Python and
# PostgreSQL hold exactly enough. Places beyond what is stored are refused, not rounded away.
MAX_MULTIPLIER: Final = Decimal(10) ** 9
MULTIPLIER_PLACES: Final = 6
MAX_TICK_SIZE: Final = Decimal(10) ** 6
TICK_SIZE_PLACES: Final = 10
MAX_FX_RATE: Final = Decimal(10) ** 6
FX_RATE_PLACES: Final = 12

_ZERO: Final = Decimal(0)
_MIN_DECIMAL: Final = -MAX_DECIMAL_ABS


def utc_now() -> datetime:
    return datetime.now(UTC)


# msgspec cannot put bounds on Decimal, so the structs check their decimals in __post_init__,
# which msgspec runs both on construction and on decoding. The message mimics msgspec's own
# (" - at `$.field`") so error_field() can name the field either way.
def _too_many_places(value: Decimal) -> bool:
    """More than MAX_DECIMAL_PLACES digits after the point (value finite, |value| < 1e16)."""
    # str() costs a tenth of as_tuple() (a tuple of every digit), and shows the places: without
    # an exponent, they are fewer than the characters (at most 16 digits, a sign and a point
    # precede them).
    text = str(value)
    if "E" not in text:
        return len(text) > MAX_DECIMAL_PLACES and -value.as_tuple().exponent > MAX_DECIMAL_PLACES  # type: ignore[operator]
    return -value.as_tuple().exponent > MAX_DECIMAL_PLACES  # type: ignore[operator]


def _check_decimal(name: str, value: Decimal | None, *, low: str | None = None) -> None:
    if value is None:
        return
    if not value.is_finite() or abs(value) >= MAX_DECIMAL_ABS:
        raise ValueError(f"Expected a finite `decimal` with |x| < 1e16 - at `$.{name}`")
    if _too_many_places(value):
        raise ValueError(
            f"Expected a `decimal` with at most {MAX_DECIMAL_PLACES} places - at `$.{name}`"
        )
    if low == ">0" and value < MIN_POSITIVE_DECIMAL:
        raise ValueError(f"Expected `decimal` >= 0.00000001 - at `$.{name}`")
    if low == ">=0" and value < _ZERO:
        raise ValueError(f"Expected `decimal` >= 0 - at `$.{name}`")


def _check_positive(name: str, value: Decimal | None, *, below: Decimal, places: int) -> None:
    """A positive decimal under ``below`` with at most ``places`` digits after the point."""
    if value is None:
        return
    if not value.is_finite() or not Decimal(0) < value < below:
        raise ValueError(f"Expected a finite `decimal` > 0 and < {below:f} - at `$.{name}`")
    if -value.as_tuple().exponent > places:  # type: ignore[operator]
        raise ValueError(f"Expected a `decimal` with at most {places} places - at `$.{name}`")


def _check_text(name: str, value: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{_NO_NUL_MESSAGE} - at `$.{name}`")


def _check_time(name: str, value: datetime | None) -> None:
    if value is None:
        return
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"Expected `datetime` with a timezone - at `$.{name}`")
    if not -MAX_UTC_OFFSET < offset < MAX_UTC_OFFSET:
        raise ValueError(f"Expected a UTC offset within +-15:59 - at `$.{name}`")
    if not MIN_TIMESTAMP <= value < MAX_TIMESTAMP:
        raise ValueError(f"Expected a time from 1900 to 2999 UTC - at `$.{name}`")


def _check_json(name: str, value: Any) -> None:
    """Free-form JSON: nested at most MAX_JSON_DEPTH deep, and no U+0000 in keys or strings.

    Walked with a stack, not recursion, so no value can exhaust Python's recursion limit here.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(
                    f"Expected JSON nested at most {MAX_JSON_DEPTH} deep - at `$.{name}`"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and "\x00" in key:
                        raise ValueError(f"{_NO_NUL_MESSAGE} - at `$.{name}`")
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, str) and "\x00" in item:
            raise ValueError(f"{_NO_NUL_MESSAGE} - at `$.{name}`")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"Expected finite numbers in JSON - at `$.{name}`")


class _EventBase(
    msgspec.Struct, kw_only=True, tag_field="kind", forbid_unknown_fields=False, omit_defaults=True
):
    # seq 0 means "not assigned yet": the SDK assigns the real one when the event is emitted, and
    # the decoders reject an event that arrives without one.
    seq: Seq = 0
    ts: Timestamp

    def __post_init__(self) -> None:
        ts = self.ts
        # The usual case in two comparisons (the server decodes thousands of events a second).
        if (
            ts.tzinfo is UTC
            or (
                (offset := ts.utcoffset()) is not None and -MAX_UTC_OFFSET < offset < MAX_UTC_OFFSET
            )
        ) and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
            return
        _check_time("ts", ts)


class OrderEvent(_EventBase, kw_only=True, tag="order"):
    client_order_id: Id
    symbol: Symbol
    side: Side
    order_type: OrderType
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    status: OrderStatus
    filled_quantity: Decimal = _ZERO
    avg_fill_price: Decimal | None = None
    # The price the strategy expected when it decided to trade; the server derives slippage.
    expected_price: Decimal | None = None
    broker_order_id: BrokerOrderId | None = None
    reject_reason: ShortText | None = None
    # Which of the engine's strategies placed the order (left out: the engine's only one).
    strategy_id: StrategyId | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_text("client_order_id", self.client_order_id)
        _check_text("symbol", self.symbol)
        _check_decimal("quantity", self.quantity, low=">0")
        _check_decimal("limit_price", self.limit_price, low=">0")
        _check_decimal("stop_price", self.stop_price, low=">0")
        _check_decimal("filled_quantity", self.filled_quantity, low=">=0")
        _check_decimal("avg_fill_price", self.avg_fill_price, low=">0")
        _check_decimal("expected_price", self.expected_price, low=">0")


class FillEvent(_EventBase, kw_only=True, tag="fill"):
    fill_id: Id
    client_order_id: Id
    symbol: Symbol
    side: Side
    quantity: Decimal
    price: Decimal
    # Negative for a rebate.
    fee: Decimal = _ZERO
    liquidity: Literal["maker", "taker"] | None = None
    # For a simulated fill (paper, shadow): the price a real order would have got at that moment,
    # the far side of the live quote (the ask for a buy, the bid for a sell). Left out for real
    # fills. The control plane compares the two: how well the engine models its slippage.
    market_price: Decimal | None = None
    # The currency ``fee`` is in, when not the account's (a crypto venue's fee in its own token,
    # BNB). Left out, the fee is in the account's currency. The control plane converts it with
    # the engine's FX rates (docs/protocol.md, "fill").
    fee_currency: CurrencyCode | None = None
    strategy_id: StrategyId | None = None

    def __post_init__(self) -> None:
        # The server decodes thousands of fills a second: the usual case (a UTC time, decimals
        # of a few places) is settled by chained comparisons and one string, the rest goes
        # through the checks that name the field.
        ts = self.ts
        try:
            if (
                ts.tzinfo is UTC
                and MIN_TIMESTAMP <= ts < MAX_TIMESTAMP
                and MIN_POSITIVE_DECIMAL <= self.quantity < MAX_DECIMAL_ABS
                and MIN_POSITIVE_DECIMAL <= self.price < MAX_DECIMAL_ABS
                and _MIN_DECIMAL < self.fee < MAX_DECIMAL_ABS
                and self.market_price is None
                # Without an exponent, the places are fewer than the characters.
                and "E" not in (text := f"{self.quantity}{self.price}{self.fee}")
                and len(text) < MAX_DECIMAL_PLACES
                and "\x00" not in self.fill_id + self.client_order_id + self.symbol
            ):
                return
        except InvalidOperation:  # NaN, which cannot be compared
            pass
        super().__post_init__()
        _check_text("fill_id", self.fill_id)
        _check_text("client_order_id", self.client_order_id)
        _check_text("symbol", self.symbol)
        _check_decimal("quantity", self.quantity, low=">0")
        _check_decimal("price", self.price, low=">0")
        _check_decimal("fee", self.fee)
        _check_decimal("market_price", self.market_price, low=">0")


class PositionEvent(_EventBase, kw_only=True, tag="position"):
    symbol: Symbol
    # Signed: negative is short.
    quantity: Decimal
    avg_price: Decimal | None = None
    source: Literal["broker", "engine"] = "broker"
    strategy_id: StrategyId | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_text("symbol", self.symbol)
        _check_decimal("quantity", self.quantity)
        _check_decimal("avg_price", self.avg_price, low=">=0")


class AccountEvent(_EventBase, kw_only=True, tag="account"):
    equity: Decimal
    cash: Decimal
    margin_used: Decimal = _ZERO
    currency: Currency = "USD"
    # What one unit of each currency is worth in the account's currency (EUR 1.1: one euro is
    # 1.1 of the account's currency), at ``ts``. Optional: an engine sends the rates of the
    # currencies its instruments trade in; the control plane keeps each currency's latest and
    # converts exposures with it (docs/protocol.md, "Instruments and FX rates").
    fx_rates: Annotated[dict[_FxKey, Decimal], msgspec.Meta(max_length=MAX_FX_RATES)] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_decimal("equity", self.equity)
        _check_decimal("cash", self.cash)
        _check_decimal("margin_used", self.margin_used, low=">=0")
        for code, rate in self.fx_rates.items():
            # Checked here rather than by the key's type: msgspec names no field for a key.
            if _CURRENCY_CODE.fullmatch(code) is None:
                raise ValueError(
                    "Expected a currency code, 2-16 upper-case letters and digits (EUR, USDT)"
                    " - at `$.fx_rates`"
                )
            _check_positive(f"fx_rates.{code}", rate, below=MAX_FX_RATE, places=FX_RATE_PLACES)


class MetricEvent(_EventBase, kw_only=True, tag="metric"):
    # The unit is part of the name (latency_ms, cpu_pct), so there is no unit field.
    name: MetricName
    value: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.value):
            raise ValueError("Expected a finite `float` - at `$.value`")


class LogEvent(_EventBase, kw_only=True, tag="log"):
    level: LogLevel
    message: LogMessage
    context: dict[str, Any] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context:
            _check_json("context", self.context)


class StateEvent(_EventBase, kw_only=True, tag="state"):
    trading_state: TradingState
    reason: ShortText = ""


class InstrumentEvent(_EventBase, kw_only=True, tag="instrument"):
    """What an instrument is: the control plane's exposure, limits and P&L use its multiplier
    and convert its currency. Every field but the symbol is optional: a field left out leaves
    what is stored as it is. A declaration that contradicts what is already set is refused
    (``instrument_conflict``, docs/protocol.md)."""

    symbol: Symbol
    asset_class: AssetClass | None = None
    # Currency per point of price per unit held: 50 for an E-mini S&P 500 contract.
    multiplier: Decimal | None = None
    currency: CurrencyCode | None = None
    tick_size: Decimal | None = None
    sector: Text64 | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_text("symbol", self.symbol)
        _check_positive(
            "multiplier", self.multiplier, below=MAX_MULTIPLIER, places=MULTIPLIER_PLACES
        )
        _check_positive("tick_size", self.tick_size, below=MAX_TICK_SIZE, places=TICK_SIZE_PLACES)


Event = (
    OrderEvent
    | FillEvent
    | PositionEvent
    | AccountEvent
    | MetricEvent
    | LogEvent
    | StateEvent
    | InstrumentEvent
)

_EVENT_TYPES: Final[dict[str, type[Event]]] = {
    "order": OrderEvent,
    "fill": FillEvent,
    "position": PositionEvent,
    "account": AccountEvent,
    "metric": MetricEvent,
    "log": LogEvent,
    "state": StateEvent,
    "instrument": InstrumentEvent,
}


class _FrameBase(
    msgspec.Struct, kw_only=True, tag_field="type", forbid_unknown_fields=False, omit_defaults=True
):
    pass


# --- engine -> server -------------------------------------------------------------------------


# Limit kinds are the control plane's (its risk limits), not the protocol's: a bounded name each.
LimitKindName = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]


class Capabilities(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The commands an engine handles and the pre-trade limit kinds it enforces (a hello's
    ``capabilities``). A command or limit outside them is not sent as if it would work: the
    control plane fails the command and flags the limit (docs/protocol.md, "Capabilities")."""

    commands: Annotated[list[CommandKind], msgspec.Meta(max_length=32)] = []
    limit_kinds: Annotated[list[LimitKindName], msgspec.Meta(max_length=64)] = []


class Hello(_FrameBase, kw_only=True, tag="hello"):
    # Always sent, never defaulted: a receiver must not assume its own version.
    protocol: int
    engine_build: Name
    config_hash: Name
    mode: Mode
    broker: Text64
    account: Text64
    trading_state: TradingState
    # The highest seq the engine has assigned so far (0 before its first event).
    last_seq: LastSeq
    # The version of the limits the engine currently enforces, None if it has none.
    limits_version: LimitsVersion | None = None
    sdk_version: Text32 = ""
    # This run of the engine: order and fill ids are unique per (engine, run), so a backtest or
    # a restarted paper run that repeats its previous run's ids (deterministic ids) is stored,
    # not dropped as replays. "" (left out): the engine's one run, as before.
    run_id: RunId = ""
    # What the engine can enforce; None (left out): everything, as before.
    capabilities: Capabilities | None = None


class Events(_FrameBase, kw_only=True, tag="events"):
    events: Annotated[list[Event], msgspec.Meta(max_length=MAX_EVENTS_PER_FRAME)]


class Heartbeat(_FrameBase, kw_only=True, tag="heartbeat"):
    ts: Timestamp
    trading_state: TradingState
    last_seq: LastSeq
    # The pre-trade limits version the engine enforces right now (None: none yet).
    limits_version: LimitsVersion | None = None
    # True on the last heartbeat of an engine shutting down on purpose (its working orders
    # cancelled, its state saved): the control plane shows it stopped rather than down. Left
    # out otherwise, so a server that does not know the field reads the frame as before.
    stopping: bool = False


class CommandAck(_FrameBase, kw_only=True, tag="command_ack"):
    command_id: uuid.UUID


class CommandResult(_FrameBase, kw_only=True, tag="command_result"):
    command_id: uuid.UUID
    status: CommandResultStatus
    detail: Detail = ""
    data: dict[str, Any] = {}
    # The engine's state once the command was handled, when the command changed or checked it.
    trading_state: TradingState | None = None

    def __post_init__(self) -> None:
        if self.data:
            _check_json("data", self.data)


EngineFrame = Hello | Events | Heartbeat | CommandAck | CommandResult

# --- server -> engine -------------------------------------------------------------------------
# These carry no length limits: an older SDK must not choke on what a newer server sends.


class Command(_FrameBase, kw_only=True, tag="command"):
    command_id: uuid.UUID
    kind: CommandKind
    params: dict[str, Any] = {}
    reason: str = ""
    issued_by: str = ""
    issued_at: Timestamp
    # None: the command never expires (kill never does).
    expires_at: Timestamp | None = None

    @property
    def strategy_id(self) -> str | None:
        """The one strategy the command targets (its ``strategy_id`` param), None for all of the
        engine's strategies."""
        value = self.params.get("strategy_id")
        return value if isinstance(value, str) and value else None


class Welcome(_FrameBase, kw_only=True, tag="welcome"):
    protocol: int
    engine_id: int
    engine_name: str
    # The highest seq the server has stored for this engine; the engine resends everything above.
    last_seq: Annotated[int, msgspec.Meta(ge=0)]
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)]
    desired_state: TradingState
    limits_version: int
    limits: list[dict[str, Any]] = []
    # Pending commands, oldest first. The same command may also arrive later as a command frame;
    # the engine applies each command_id once.
    commands: list[Command] = []
    # The engine's stage on the way to real money (docs/going-live.md); None from a server that
    # predates stages.
    stage: Stage | None = None
    # The most the engine may hold, gross, in its account currency: a decimal string, None when
    # its stage sets no ceiling (docs/going-live.md, the capital ramp). A string, not a number,
    # so that a value this SDK cannot read is reported rather than refusing the whole welcome.
    capital_ceiling: str | None = None


class Ack(_FrameBase, kw_only=True, tag="ack"):
    # Every seq <= this is durably stored or permanently rejected (and reported with an error).
    seq: Annotated[int, msgspec.Meta(ge=0)]


class Error(_FrameBase, kw_only=True, tag="error"):
    code: str
    message: str
    field: str | None = None
    seq: int | None = None


class ServerHeartbeat(_FrameBase, kw_only=True, tag="heartbeat"):
    ts: Timestamp


ServerFrame = Welcome | Ack | Command | Error | ServerHeartbeat

# --- encoding and decoding --------------------------------------------------------------------

_encoder: Final = msgspec.json.Encoder()
_engine_frame_decoder: Final = msgspec.json.Decoder(EngineFrame)
_server_frame_decoder: Final = msgspec.json.Decoder(ServerFrame)
_event_decoders: Final = {kind: msgspec.json.Decoder(t) for kind, t in _EVENT_TYPES.items()}
_event_union_decoder: Final = msgspec.json.Decoder(Event)


def frame_bytes(data: bytes | str) -> int:
    """The size of a frame on the wire: its UTF-8 bytes, which MAX_FRAME_BYTES bounds.

    A text frame arrives decoded, and a str's length counts characters: a frame of three-byte
    characters is three times longer on the wire than len() says.
    """
    if isinstance(data, bytes) or data.isascii():
        return len(data)
    # surrogatepass: a lone surrogate (which no UTF-8 text frame can carry) is still counted.
    return len(data.encode("utf-8", "surrogatepass"))


def encode(frame: EngineFrame | ServerFrame | Event) -> bytes:
    return _encoder.encode(frame)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


# msgspec stops at about a thousand levels of nesting with a RecursionError.
_TOO_DEEP: Final = "JSON nested too deeply to decode"


def _require_seqs(frame: EngineFrame) -> None:
    if isinstance(frame, Events):
        for i, event in enumerate(frame.events):
            if event.seq == 0:
                raise msgspec.ValidationError(
                    f"Object missing required field `seq` - at `$.events[{i}]`"
                )


def decode_engine_frame(data: bytes | str) -> EngineFrame:
    """Decode one engine frame strictly: any invalid event fails the whole frame.

    Raises msgspec.DecodeError for bad JSON and msgspec.ValidationError (a subclass) for a frame
    that does not match the schema.
    """
    try:
        frame = _engine_frame_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError(_TOO_DEEP) from None
    _require_seqs(frame)
    return frame


def validate_event(event: Event) -> None:
    """Check an event built in Python against every bound of the schema; see check_encoded_event.

    Constructing a struct runs its __post_init__ checks (decimals, times, JSON), but not the
    length, pattern and range constraints of its fields, which msgspec applies when decoding.
    """
    check_encoded_event(encode_event(event))


def check_encoded_event(raw: bytes) -> None:
    """Decode an encoded event as the server will, with its seq; raise ValueError naming the
    field it fails on, e.g. "Expected `str` of length <= 8192 (field message)"."""
    try:
        decode_event(raw)
    except msgspec.MsgspecError as exc:
        text, field = error_field(str(exc))
        raise ValueError(f"{text} (field {field})" if field else text) from None


def decode_server_frame(data: bytes | str) -> ServerFrame:
    return _server_frame_decoder.decode(data)


def decode_event(data: bytes | str) -> Event:
    """Decode one event (as stored in the SDK journal); the event must carry its seq."""
    try:
        event = _event_union_decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError(_TOO_DEEP) from None
    if event.seq == 0:
        raise msgspec.ValidationError("Object missing required field `seq`")
    return event


_NO_NUL_TEXT: Final = "Expected `str` without U+0000 (NUL), which the database cannot store"
_PATH_RE: Final = re.compile(r" - at `\$([^`]*)`")
_MISSING_RE: Final = re.compile(r"^Object missing required field `([^`]+)`")


def error_field(message: str, prefix: str = "") -> tuple[str, str | None]:
    """Split a msgspec validation message into (message without paths, field path).

    msgspec appends " - at `$.a[1]`" to its messages, and nested failures raised from
    __post_init__ carry one suffix per level, innermost first; they are joined outermost first.
    ``prefix`` is prepended, e.g. "events[3]" for an event decoded on its own.
    """
    parts = _PATH_RE.findall(message)
    text = _PATH_RE.sub("", message).replace(_NO_NUL_MESSAGE, _NO_NUL_TEXT)
    path = prefix + "".join(reversed(parts))
    # A missing field is reported at its parent's path; name the field itself.
    missing = _MISSING_RE.match(text)
    if missing:
        path = f"{path}.{missing.group(1)}"
    if not path:
        return text, None
    return text, path.lstrip(".")


class _RawEvents(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    type: Any = None
    events: list[msgspec.Raw] | None = None


class _EventProbe(msgspec.Struct, forbid_unknown_fields=False):
    kind: Any = None
    seq: Any = None


_ENGINE_FRAME_TYPES: Final = frozenset(
    {"hello", "events", "heartbeat", "command_ack", "command_result"}
)
_raw_events_decoder: Final = msgspec.json.Decoder(_RawEvents)
_events_frame_decoder: Final = msgspec.json.Decoder(Events)
_probe_decoder: Final = msgspec.json.Decoder(_EventProbe)


_Lenient = tuple[list[Event], list[Error], list[int]]


def _frame_error(code: str, message: str, field: str | None = None) -> _Lenient:
    return [], [Error(code=code, message=message, field=field)], []


def decode_events_leniently(data: bytes | str) -> tuple[list[Event], list[Error]]:
    """Decode an ``events`` frame so that one bad event does not sink the batch.

    Returns the valid events, in frame order, and one Error per rejected event (``field`` names
    the offending field, ``seq`` is set when it could be read). A frame that is not a usable
    events frame at all gives no events and a single frame-level Error. Never raises.
    """
    events, errors, _ = decode_events_positioned(data)
    return events, errors


def decode_events_positioned(data: bytes | str) -> _Lenient:
    """decode_events_leniently, with each valid event's position in the frame (``events[i]``)."""
    if frame_bytes(data) > MAX_FRAME_BYTES:
        return _frame_error("frame_too_large", f"frame exceeds {MAX_FRAME_BYTES} bytes")
    try:
        return _decode_events_leniently(data)
    except RecursionError:
        # Too deep even to split into events: nothing in it can be read, not even a seq.
        return _frame_error("malformed_json", _TOO_DEEP)


def _decode_events_leniently(data: bytes | str) -> _Lenient:
    try:
        # Fast path: a valid frame is decoded in one pass.
        frame = _events_frame_decoder.decode(data)
    except msgspec.MsgspecError:
        pass
    else:
        if all(event.seq != 0 for event in frame.events):
            return list(frame.events), [], list(range(len(frame.events)))
    try:
        envelope = _raw_events_decoder.decode(data)
    except msgspec.DecodeError as exc:
        if isinstance(exc, msgspec.ValidationError):
            text, field = error_field(str(exc))
            return _frame_error("invalid_frame", text, field)
        return _frame_error("malformed_json", str(exc))
    if envelope.type != "events":
        known = isinstance(envelope.type, str) and envelope.type in _ENGINE_FRAME_TYPES
        code = "invalid_frame" if known else "unknown_type"
        return _frame_error(code, f"expected an events frame, got {envelope.type!r}", "type")
    if envelope.events is None:
        return _frame_error("invalid_frame", "Object missing required field `events`", "events")
    if len(envelope.events) > MAX_EVENTS_PER_FRAME:
        return _frame_error(
            "too_many_events",
            f"{len(envelope.events)} events in one frame, at most {MAX_EVENTS_PER_FRAME}",
            "events",
        )
    events: list[Event] = []
    positions: list[int] = []
    errors: list[Error] = []
    for i, raw in enumerate(envelope.events):
        prefix = f"events[{i}]"
        try:
            probe = _probe_decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            text, _ = error_field(str(exc))
            errors.append(Error(code="invalid_event", message=text, field=prefix, seq=None))
            continue
        # A seq out of range is not one: it could not be acknowledged.
        seq = probe.seq if type(probe.seq) is int and 1 <= probe.seq <= MAX_SEQ else None
        decoder = _event_decoders.get(probe.kind) if isinstance(probe.kind, str) else None
        if decoder is None:
            errors.append(
                Error(
                    code="unknown_kind",
                    message=f"unknown event kind {probe.kind!r}",
                    field=f"{prefix}.kind",
                    seq=seq,
                )
            )
            continue
        try:
            event = decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            text, field = error_field(str(exc), prefix)
            errors.append(Error(code="invalid_event", message=text, field=field, seq=seq))
            continue
        if event.seq == 0:
            errors.append(
                Error(
                    code="invalid_event",
                    message="Object missing required field `seq`",
                    field=f"{prefix}.seq",
                    seq=None,
                )
            )
            continue
        events.append(event)
        positions.append(i)
    return events, errors, positions
