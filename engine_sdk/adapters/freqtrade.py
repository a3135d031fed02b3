"""A bridge that follows a Freqtrade bot through its REST API and speaks protocol v1 for it.

Freqtrade runs its own order path, so the bridge cannot gate orders before they are sent: it
watches the bot (``/api/v1/status``, ``/trades``, ``/balance``, ``/show_config``) and turns what
it sees into events, and it carries out commands with the bot's own controls:

- trades become orders and fills: a fill for each growth of an order's filled amount, priced
  from the change in the order's cost and charged its share of the fee;
- balances become account events, open trades position events;
- pause is ``/pause``; kill is ``/pause`` then ``/forceexit`` of every open trade (never
  ``/stop``, which leaves open trades unmanaged); flatten is the same without the latch; resume
  is ``/start``;
- the kill's latch lives here: a bot found running while the engine is HALTED (restarted
  locally, or started by hand) is paused again at once, its trades force-exited, and a critical
  log line says so;
- ``set_limits`` is answered ``failed``: the bot's orders never pass ``check_order``.

Fill ids are derived from the trade id, the bot's order id and the cumulative filled amount, and
the amounts already reported are kept on disk (``freqtrade-bridge.json`` beside the journal) only
once the events that report them are in the SDK's journal. A bridge that crashes between the two
reports the same fills again under the same ids, which the server counts once; it never reports
a fill twice under two ids.

It uses the standard library and the SDK only (no freqtrade import): it may run on another host.
docs/adapters.md ("Freqtrade") says how to run it and what it does not guarantee.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

from engine_sdk import __version__ as SDK_VERSION
from engine_sdk import protocol as p
from engine_sdk.client import CommandOutcome, EngineClient
from engine_sdk.config import ClientConfig, HelloInfo
from engine_sdk.gate import StateChange

__all__ = [
    "BadAnswer",
    "BotApiError",
    "BotOrder",
    "BotTrade",
    "BotUnreachable",
    "FillLedger",
    "FreqtradeApi",
    "FreqtradeBridge",
    "main",
    "parse_trade",
]

log = logging.getLogger("engine_sdk.adapters.freqtrade")

PLACES: Final = Decimal("0.00000001")  # the control plane stores 8 places
STATE_FILE: Final = "freqtrade-bridge.json"
# Commands the bridge carries out with the bot's own controls. Not reduce (Freqtrade can exit
# part of a trade, but not "to N % of every position" in one call) and not cancel_all (open
# orders are the bot's, cancelled by its unfilledtimeout).
COMMANDS: Final[list[p.CommandKind]] = [
    "pause",
    "resume",
    "kill",
    "flatten",
    "set_limits",
    "kill_drill",
]
# The codes the protocol takes (ISO 4217 and crypto codes alike: USDT, BNB); another is left out.
_CURRENCY_CODE = re.compile(p.CURRENCY_CODE_PATTERN)


class BotApiError(Exception):
    """The bot's REST API could not be reached or refused a call."""


class BotUnreachable(BotApiError):
    """The bot's REST API did not answer (the bot is down, restarting, or the network is)."""


class BadAnswer(BotApiError):
    """The bot answered something the bridge will not turn into events (it names the field)."""


# --- the bot's REST API ----------------------------------------------------------------------


class FreqtradeApi:
    """Freqtrade's REST API (``freqtrade/rpc/api_server``), with HTTP basic auth, which every
    endpoint of ``/api/v1`` accepts beside its JWT tokens. Blocking: call it from a thread."""

    def __init__(self, base_url: str, username: str, password: str, *, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/api/v1"):
            self.base_url += "/api/v1"
        credentials = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._auth = f"Basic {credentials}"
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Authorization", self._auth)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                raw = response.read(32 * 1024 * 1024)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2048).decode("utf-8", "replace").strip()
            raise BotApiError(f"{method} {path}: HTTP {exc.code} {detail[:300]}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BotUnreachable(f"{method} {path}: bot unreachable ({reason})") from None
        try:
            # Decimals, not floats: amounts and prices are compared and summed exactly.
            return json.loads(raw, parse_float=Decimal)
        except ValueError:
            raise BadAnswer(f"{method} {path}: the answer is not JSON: {raw[:80]!r}") from None

    def show_config(self) -> dict[str, Any]:
        return _obj(self.request("GET", "/show_config"), "show_config")

    def version(self) -> str:
        answer = _obj(self.request("GET", "/version"), "version")
        return str(answer.get("version", "?"))[:40]

    def open_trades(self) -> list[dict[str, Any]]:
        return _list(self.request("GET", "/status"), "status")

    def trade(self, trade_id: int) -> dict[str, Any]:
        return _obj(self.request("GET", f"/trade/{trade_id}"), f"trade/{trade_id}")

    def closed_trades(self, *, limit: int, offset: int = 0, by_id: bool) -> tuple[list, int]:
        """A page of closed trades and the number of closed trades there are."""
        order = "true" if by_id else "false"
        path = f"/trades?limit={limit}&offset={offset}&order_by_id={order}"
        answer = _obj(self.request("GET", path), "trades")
        total = answer.get("total_trades")
        if type(total) is not int or total < 0:
            raise BadAnswer(f"trades: total_trades is {total!r}, expected a count")
        return _list(answer.get("trades"), "trades.trades"), total

    def balance(self) -> dict[str, Any]:
        return _obj(self.request("GET", "/balance"), "balance")

    def pause(self, *, timeout: float | None = None) -> None:
        self.request("POST", "/pause", timeout=timeout)

    def start(self) -> None:
        self.request("POST", "/start")

    def forceexit(self, trade_id: int | str) -> None:
        self.request("POST", "/forceexit", {"tradeid": str(trade_id)})


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadAnswer(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadAnswer(f"{where}: expected a list, got {type(value).__name__}")
    return value


# --- what the bot says, checked ----------------------------------------------------------------


@dataclass(frozen=True)
class BotOrder:
    order_id: str
    side: p.Side
    is_entry: bool
    order_type: p.OrderType
    amount: Decimal
    filled: Decimal
    cost: Decimal
    price: Decimal | None
    status: str
    is_open: bool
    ts_ms: int | None
    filled_ts_ms: int | None


@dataclass(frozen=True)
class BotTrade:
    trade_id: int
    pair: str
    is_open: bool
    is_short: bool
    amount: Decimal
    open_rate: Decimal | None
    fee_open: Decimal
    fee_close: Decimal
    fee_open_currency: str | None
    fee_close_currency: str | None
    quote_currency: str | None
    orders: tuple[BotOrder, ...]


def _decimal(raw: Mapping[str, Any], key: str, where: str, *, optional: bool = False) -> Any:
    value = raw.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise BadAnswer(f"{where}.{key} is {value!r}, expected a number")
    number = Decimal(value)
    if not number.is_finite() or abs(number) >= p.MAX_DECIMAL_ABS:
        raise BadAnswer(f"{where}.{key} is {value!r}, expected a finite number")
    return number


def _text(raw: Mapping[str, Any], key: str, where: str, *, max_length: int) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > max_length or "\x00" in value:
        raise BadAnswer(f"{where}.{key} is {value!r}, expected a text of 1 to {max_length}")
    return value


def _ts(raw: Mapping[str, Any], key: str, where: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if type(value) is not int or not 0 < value < 10**14:
        raise BadAnswer(f"{where}.{key} is {value!r}, expected milliseconds since 1970")
    return value


def _order_type(kind: Any) -> p.OrderType:
    text = str(kind or "").lower()
    if "stop" in text:
        return "stop_limit" if "limit" in text else "stop"
    return "limit" if text == "limit" else "market"


def parse_trade(raw: Any) -> BotTrade:
    """A trade of ``/status``, ``/trade/{id}`` or ``/trades``, checked field by field: anything
    out of shape raises BadAnswer naming the field, and nothing of the trade is used."""
    raw = _obj(raw, "trade")
    trade_id = raw.get("trade_id")
    if type(trade_id) is not int or not 0 < trade_id < 2**53:
        raise BadAnswer(f"trade.trade_id is {trade_id!r}, expected a positive integer")
    where = f"trade {trade_id}"
    is_short = raw.get("is_short", False)
    is_open = raw.get("is_open")
    if type(is_short) is not bool or type(is_open) is not bool:
        raise BadAnswer(f"{where}: is_open / is_short are {is_open!r} / {is_short!r}, not bools")
    pair = _text(raw, "pair", where, max_length=128)
    fees = {}
    for key in ("fee_open", "fee_close"):
        rate = _decimal(raw, key, where, optional=True)
        if rate is not None and not 0 <= rate < 1:
            raise BadAnswer(f"{where}.{key} is {rate}, expected a fee rate from 0 to below 1")
        fees[key] = rate or Decimal(0)
    orders = []
    for i, order in enumerate(_list(raw.get("orders"), f"{where}.orders")):
        ow = f"{where}.orders[{i}]"
        order = _obj(order, ow)
        # /trades gives ft_is_entry; /status and /trade/{id} (Freqtrade's OrderSchema) only
        # the side, which is the entry side for an entry (a stop-loss is an exit).
        side = order.get("ft_order_side")
        if side not in ("buy", "sell", "stoploss"):
            raise BadAnswer(f"{ow}.ft_order_side is {side!r}, expected buy, sell or stoploss")
        is_entry = side == ("sell" if is_short else "buy")
        if order.get("ft_is_entry", is_entry) is not is_entry:
            raise BadAnswer(f"{ow}.ft_is_entry contradicts ft_order_side {side!r}")
        amount = _decimal(order, "amount", ow)
        filled = _decimal(order, "filled", ow, optional=True) or Decimal(0)
        # The cumulative cost as the exchange reports it (filled x average price), the one
        # figure both endpoints give: the fills' prices are differences of it.
        cost = _decimal(order, "cost", ow, optional=True) or Decimal(0)
        price = _decimal(order, "safe_price", ow, optional=True)
        if amount <= 0:
            raise BadAnswer(f"{ow}.amount is {amount}, expected more than 0")
        if not 0 <= filled <= amount:
            raise BadAnswer(f"{ow}.filled is {filled}, expected from 0 to the amount {amount}")
        if cost < 0:
            raise BadAnswer(f"{ow}.cost is {cost}, expected 0 or more")
        if filled > 0 and cost == 0:
            if not (price and price > 0):
                raise BadAnswer(f"{ow}: a filled amount of {filled} with no cost and no price")
            cost = filled * price
        cost = _q(cost)
        if filled > 0 and cost <= 0:
            raise BadAnswer(f"{ow}.cost is {cost} for a filled amount of {filled}")
        buy = is_entry != is_short  # a long enters buying, a short enters selling
        orders.append(
            BotOrder(
                order_id=_text(order, "order_id", ow, max_length=128),
                side="buy" if buy else "sell",
                is_entry=is_entry,
                order_type=_order_type(order.get("order_type")),
                amount=amount,
                filled=filled,
                cost=cost,
                price=price if price and price > 0 else None,
                status=str(order.get("status") or "open")[:32],
                is_open=order.get("is_open") is True,
                ts_ms=_ts(order, "order_timestamp", ow),
                filled_ts_ms=_ts(order, "order_filled_timestamp", ow),
            )
        )
    amount = _decimal(raw, "amount", where)
    if amount < 0:
        raise BadAnswer(f"{where}.amount is {amount}, expected 0 or more")
    open_rate = _decimal(raw, "open_rate", where, optional=True)

    def currency(key: str) -> str | None:
        value = raw.get(key)
        return value if isinstance(value, str) and 0 < len(value) <= 16 else None

    return BotTrade(
        trade_id=trade_id,
        pair=pair,
        is_open=is_open,
        is_short=is_short,
        amount=amount,
        open_rate=open_rate if open_rate and open_rate > 0 else None,
        fee_open=fees["fee_open"],
        fee_close=fees["fee_close"],
        fee_open_currency=currency("fee_open_currency"),
        fee_close_currency=currency("fee_close_currency"),
        quote_currency=currency("quote_currency"),
        orders=tuple(orders),
    )


# --- fills from filled amounts -----------------------------------------------------------------


def client_order_id(trade_id: int, order_id: str) -> str:
    """The protocol's id of a bot order: the trade and a digest of the bot's (long) order id."""
    digest = hashlib.sha256(order_id.encode()).hexdigest()[:16]
    return f"ft{trade_id}-{digest}"


def fill_id(trade_id: int, order_id: str, cumulative: Decimal) -> str:
    """The fill that took an order's filled amount to ``cumulative``: the same growth always
    gets the same id, so a replay after a restart is counted once by the server."""
    # Under 64 characters but for absurd trade ids or amounts; were two ids cut to the same
    # prefix, the server would refuse the second (duplicate_id, an alert), never count it twice.
    return f"{client_order_id(trade_id, order_id)}-{_plain(cumulative)}"[:64]


def _plain(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _q(value: Decimal) -> Decimal:
    return value.quantize(PLACES, rounding=ROUND_HALF_EVEN)


_STATUS: Final[dict[str, p.OrderStatus]] = {
    "closed": "filled",
    "canceled": "cancelled",
    "cancelled": "cancelled",
    "expired": "expired",
    "rejected": "rejected",
}


def _order_status(order: BotOrder) -> p.OrderStatus:
    status = _STATUS.get(order.status)
    if status == "filled" and order.filled < order.amount:
        return "cancelled" if order.filled == 0 else "filled"
    if status is not None:
        return status
    return "partially_filled" if order.filled > 0 else "accepted"


@dataclass
class Mark:
    """What the bridge has reported of one order: its filled amount, the cost of it, the fee
    charged for it (so a later growth pays only its share) and its last status."""

    filled: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    status: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "filled": str(self.filled),
            "cost": str(self.cost),
            "fee": str(self.fee),
            "status": self.status,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Mark:
        return cls(
            filled=Decimal(raw["filled"]),
            cost=Decimal(raw["cost"]),
            fee=Decimal(raw["fee"]),
            status=str(raw["status"]),
        )


def _ms(ts_ms: int | None, now: Callable[[], datetime]) -> datetime:
    """The bot's milliseconds as a time; when it gave none, when the bridge saw it."""
    if ts_ms is None:
        return now()
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


@dataclass
class FillLedger:
    """The orders' marks, and the pure step from a trade as the bot shows it to the events that
    report what changed. Nothing here does I/O."""

    marks: dict[str, Mark] = field(default_factory=dict)
    symbols: set[str] = field(default_factory=set)

    def derive(
        self,
        trade: BotTrade,
        *,
        now: Callable[[], datetime] = p.utc_now,
    ) -> tuple[list[p.Event], dict[str, Mark]]:
        """The events for what changed in ``trade`` since the marks, and the marks after them.

        The marks are not changed: the caller applies the new ones (``apply``) once the events
        are safely journaled. A filled amount that shrinks is refused (BadAnswer): the bot's
        database was reset or replaced, and the fills already reported stand.
        """
        events: list[p.Event] = []
        updates: dict[str, Mark] = {}
        for order in trade.orders:
            key = f"{trade.trade_id}|{order.order_id}"
            mark = self.marks.get(key, Mark())
            if order.filled < mark.filled:
                raise BadAnswer(
                    f"trade {trade.trade_id}: order {order.order_id} shows filled "
                    f"{order.filled}, less than the {mark.filled} already reported"
                )
            status = _order_status(order)
            if order.filled == mark.filled and status == mark.status:
                continue
            coid = client_order_id(trade.trade_id, order.order_id)
            cost = order.cost
            average = _q(cost / order.filled) if order.filled > 0 else None
            rate = trade.fee_open if order.is_entry else trade.fee_close
            fee_total = _q(cost * rate)
            events.append(
                p.OrderEvent(
                    ts=now(),
                    client_order_id=coid,
                    symbol=trade.pair,
                    side=order.side,
                    order_type=order.order_type,
                    quantity=order.amount,
                    limit_price=order.price
                    if order.order_type in ("limit", "stop_limit")
                    else None,
                    stop_price=order.price if order.order_type in ("stop", "stop_limit") else None,
                    status=status,
                    filled_quantity=order.filled,
                    avg_fill_price=average if average and average > 0 else None,
                    # The control plane keeps 64 characters of it (the protocol allows 128):
                    # a longer one is left out rather than cut into an id that is not the bot's.
                    broker_order_id=order.order_id if len(order.order_id) <= 64 else None,
                )
            )
            new_mark = Mark(filled=order.filled, cost=cost, fee=fee_total, status=status)
            grown = order.filled - mark.filled
            if grown > 0:
                price = _q((cost - mark.cost) / grown)
                if price <= 0:
                    raise BadAnswer(
                        f"trade {trade.trade_id}: order {order.order_id}'s cost fell from "
                        f"{mark.cost} to {cost} while its filled amount grew"
                    )
                # The fee is the order's cost x the trade's fee rate: its value in the stake
                # currency (the account's), whatever the venue charged it in (BNB, say). So no
                # fee_currency: naming BNB would have the control plane count 0.1 USDT's worth as
                # 0.1 BNB (docs/protocol.md: a fill's fee is in its fee_currency).
                events.append(
                    p.FillEvent(
                        ts=_ms(order.filled_ts_ms, now),
                        fill_id=fill_id(trade.trade_id, order.order_id, order.filled),
                        client_order_id=coid,
                        symbol=trade.pair,
                        side=order.side,
                        quantity=grown,
                        price=price,
                        # This growth's share of the order's fee: the total for the new filled
                        # amount less what was charged before, so the shares add up to the fee.
                        fee=fee_total - mark.fee,
                    )
                )
            updates[key] = new_mark
        return events, updates

    def apply(self, updates: Mapping[str, Mark]) -> None:
        self.marks.update(updates)

    def to_json(self) -> dict[str, Any]:
        return {
            "orders": {k: m.to_json() for k, m in self.marks.items()},
            "symbols": sorted(self.symbols),
        }

    @classmethod
    def from_json(cls, raw: Any) -> FillLedger:
        marks = {str(k): Mark.from_json(v) for k, v in raw.get("orders", {}).items()}
        return cls(marks=marks, symbols={str(s) for s in raw.get("symbols", [])})


def exitable(trade: BotTrade) -> bool:
    """An open trade with no exit order working: a /forceexit for it is not already under way."""
    return trade.is_open and not any(o.is_open and not o.is_entry for o in trade.orders)


def positions(trades: Sequence[BotTrade]) -> dict[str, tuple[Decimal, Decimal | None]]:
    """The bot's open position per pair (signed) and its average entry, from its open trades."""
    out: dict[str, tuple[Decimal, Decimal]] = {}
    for trade in trades:
        if not trade.is_open:
            continue
        signed = -trade.amount if trade.is_short else trade.amount
        qty, cost = out.get(trade.pair, (Decimal(0), Decimal(0)))
        out[trade.pair] = (qty + signed, cost + trade.amount * (trade.open_rate or 0))
    result: dict[str, tuple[Decimal, Decimal | None]] = {}
    for pair, (qty, cost) in out.items():
        size = abs(qty)
        result[pair] = (qty, _q(cost / size) if size else None)
    return result


# --- the state file ----------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, *, fsync: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_ledger(path: Path) -> FillLedger:
    """The marks kept by the last run; a file that cannot be read stops the bridge rather than
    start counting from zero, which would report every fill again under new amounts."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return FillLedger()
    try:
        return FillLedger.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError, InvalidOperation, AttributeError) as exc:
        raise SystemExit(
            f"{path}: the bridge's record of reported fills cannot be read ({exc}); "
            "move it away only if the engine's fills in the control plane were checked"
        ) from None


# --- the bridge --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BridgeConfig:
    poll_interval_s: float = 1.0
    # How long a kill or flatten waits for the bot's force-exits to fill before answering.
    exit_timeout_s: float = 30.0
    account_every_s: float = 10.0
    # Closed trades read each poll (the most recently closed): a trade opened and closed
    # between two polls is among them; more closed than this in one poll triggers a full scan.
    recent_closed: int = 50
    fsync: bool = True


class FreqtradeBridge:
    """Polls the bot, reports what changed, enforces the trading state on it."""

    def __init__(
        self,
        api: FreqtradeApi,
        client: EngineClient,
        state_dir: Path,
        *,
        config: BridgeConfig | None = None,
    ) -> None:
        self.api = api
        self.client = client
        self.config = config or BridgeConfig()
        self.state_path = Path(state_dir) / STATE_FILE
        self.ledger = load_ledger(self.state_path)
        self.stake_currency: str | None = None
        self.bot_state: str | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._open_ids: set[int] = set()
        self._closed_total: int | None = None
        self._last_account = 0.0
        self._last_error = ""
        self._last_positions: dict[str, tuple[Decimal, Decimal | None]] | None = None
        # Whether the bot was seen paused since the engine left ACTIVE: a bot running after
        # that was started again behind the bridge's back. True at start when HALTED: the
        # latch was there before this run, so a running bot was never allowed to run.
        self._held = client.trading_state == "HALTED"
        self._start_wanted = False
        self._bot_up: bool | None = None
        self._paused_by_hook = 0
        client.on_state_change(self._on_state_change)

    # -- the state hook: runs on the client's loop, must be quick

    def _on_state_change(self, change: StateChange) -> None:
        if change.new != "ACTIVE":
            self._held = False
        if change.new == "HALTED" and change.old != "HALTED":
            # A kill: the SDK halts before it acknowledges, and calls this on the way. Pausing
            # the bot here, blocking the loop for one local HTTP call (2 s at most), means the
            # control plane gets the kill's ack only once the bot has stopped entering (or the
            # bot could not be reached, which the handler then reports).
            try:
                self.api.pause(timeout=2.0)
                self.bot_state = "paused"
                self._paused_by_hook += 1
            except BotApiError as exc:
                log.error("kill: /pause before the ack failed: %s", exc)
        if change.new == "ACTIVE":
            # A resume, a timed pause that ended, a dead-man pause lifted: the bot may enter
            # again (a second /start is answered "already running").
            self._start_wanted = True
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_soon(self._wake.set)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # -- the loop

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
                self._last_error = ""
                self._bot_reachable(True)
            except BotUnreachable as exc:
                # Down or restarting: a warning and the broker_connected metric, not an error,
                # so that the error and critical lines stay the ones that need a person.
                self._bot_reachable(False)
                self._report_error(str(exc), level="warning")
            except BotApiError as exc:
                self._report_error(str(exc))
            except ValueError as exc:  # an event the protocol refuses: the bot's data is odd
                self._report_error(f"an event from the bot's data was refused: {exc}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval_s):
                    waiters = [
                        asyncio.create_task(self._wake.wait()),
                        asyncio.create_task(stop.wait()),
                    ]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waiters:
                            w.cancel()

    def _report_error(self, message: str, *, level: p.LogLevel = "error") -> None:
        log.log(logging.WARNING if level == "warning" else logging.ERROR, "%s", message)
        if message != self._last_error:  # once per distinct error, not once per poll
            self._last_error = message
            text = f"freqtrade bridge: {message}"[:8000]
            self.client.emit(p.LogEvent(ts=p.utc_now(), level=level, message=text))

    def _bot_reachable(self, up: bool) -> None:
        if up != self._bot_up:
            self._bot_up = up
            self.client.emit(
                p.MetricEvent(ts=p.utc_now(), name="broker_connected", value=1.0 if up else 0.0)
            )

    async def poll_once(self) -> None:
        async with self._lock:
            paused_before = self._paused_by_hook
            config = await self._call(self.api.show_config)
            # A kill's hook that paused the bot while this read was under way makes the read
            # stale: keep what the hook knows.
            if self._paused_by_hook == paused_before:
                self.bot_state = str(config.get("state", "")).lower()
            stake = config.get("stake_currency")
            self.stake_currency = stake if isinstance(stake, str) else None
            await self._enforce()
            await self._sync_trades()
            now = time.monotonic()
            if now - self._last_account >= self.config.account_every_s:
                await self._report_account()
                self._last_account = now

    async def _enforce(self) -> None:
        """Make the bot's state agree with the engine's trading state."""
        state = self.client.trading_state
        if state == "ACTIVE":
            if self._start_wanted:
                self._start_wanted = False
                if self.bot_state != "running":
                    await self._call(self.api.start)
                    self.bot_state = "running"
            return
        self._start_wanted = False
        if self.bot_state == "paused":
            self._held = True
            return
        # Running (or stopped, where it manages nothing) while it must not open risk.
        await self._call(self.api.pause)
        was = self.bot_state
        self.bot_state = "paused"
        if state == "HALTED":
            await self._exit_open(None)
        if self._held:
            level: p.LogLevel = "critical" if state == "HALTED" else "warning"
            message = (
                f"freqtrade bot found {was} while the engine is {state}: it was restarted or "
                "started behind the bridge (a new process, or /start by hand); paused it again"
                + (" and force-exited its open trades" if state == "HALTED" else "")
            )
            log.warning("%s", message)
            self.client.emit(
                p.LogEvent(
                    ts=p.utc_now(),
                    level=level,
                    message=message,
                    context={"bot_state": was, "trading_state": state, "relatched": True},
                )
            )
        self._held = True

    def _parse(self, raws: Sequence[Any], bad: list[str]) -> list[BotTrade]:
        """Each trade checked alone: a malformed one is left out (its error in ``bad``), the
        others are reported."""
        out = []
        for raw in raws:
            try:
                out.append(parse_trade(raw))
            except BadAnswer as exc:
                bad.append(str(exc))
        return out

    async def _sync_trades(self) -> None:
        bad: list[str] = []
        trades = self._parse(await self._call(self.api.open_trades), bad)
        open_ids = {t.trade_id for t in trades}
        seen = set(open_ids)
        recent, total = await self._call(
            lambda: self.api.closed_trades(limit=self.config.recent_closed, by_id=False)
        )
        if self._closed_total is None or total - self._closed_total > len(recent):
            # First poll of this run, or more trades closed than one page shows: read them all,
            # so that nothing that filled while the bridge was away is missed.
            closed = await self._all_closed(bad)
        else:
            closed = self._parse(recent, bad)
        for trade in closed:
            if trade.trade_id not in seen:
                trades.append(trade)
                seen.add(trade.trade_id)
        # A trade open at the last poll and neither open nor among the recent closed ones now
        # (deleted in the bot): read it alone, for its last fills.
        for trade_id in sorted(self._open_ids - seen):
            with contextlib.suppress(BotApiError):
                trades.extend(self._parse([await self._call(self.api.trade, trade_id)], bad))
        await self._report(trades, bad)
        self._open_ids = open_ids
        self._closed_total = total
        if bad:
            # A position summed without an unreadable trade would be wrong: none is reported.
            raise BadAnswer("; ".join(bad)[:4000])
        await self._report_positions([t for t in trades if t.is_open])

    async def _all_closed(self, bad: list[str]) -> list[BotTrade]:
        out: list[BotTrade] = []
        offset = 0
        while True:
            page, total = await self._call(
                lambda at=offset: self.api.closed_trades(limit=500, offset=at, by_id=True)
            )
            out.extend(self._parse(page, bad))
            offset += len(page)
            if not page or offset >= total:
                return out

    async def _report(self, trades: Sequence[BotTrade], bad: list[str]) -> None:
        events: list[p.Event] = []
        updates: dict[str, Mark] = {}
        for trade in sorted(trades, key=lambda t: t.trade_id):
            try:
                new_events, new_marks = self.ledger.derive(trade)
            except BadAnswer as exc:  # this trade alone: the others are reported
                bad.append(str(exc))
                continue
            if trade.pair not in self.ledger.symbols:
                # Its quote currency (USDT for BTC/USDT): the account's stake currency, so its
                # exposure counts without an FX rate.
                quote = trade.quote_currency
                events.append(
                    p.InstrumentEvent(
                        ts=p.utc_now(),
                        symbol=trade.pair,
                        asset_class="crypto",
                        currency=quote if quote and _CURRENCY_CODE.match(quote) else None,
                    )
                )
                self.ledger.symbols.add(trade.pair)
            events.extend(new_events)
            updates.update(new_marks)
        if not updates:
            return
        last = 0
        for event in events:
            last = self.client.emit(event)
        await self._journaled(last)
        self.ledger.apply(updates)
        data = json.dumps(self.ledger.to_json(), sort_keys=True).encode()
        await asyncio.to_thread(_write_atomic, self.state_path, data, fsync=self.config.fsync)

    async def _journaled(self, seq: int, within_s: float = 30.0) -> None:
        """Wait until the SDK's journal holds ``seq``: the marks may be saved only then, or a
        crash in between would lose fills that the marks say were reported."""
        deadline = time.monotonic() + within_s
        journal = self.client.writer.journal
        while journal.last_seq < seq:
            if time.monotonic() > deadline:
                raise BotApiError(f"the engine journal did not take seq {seq} in {within_s:.0f} s")
            await asyncio.sleep(0.005)

    async def _report_positions(self, open_trades: Sequence[BotTrade]) -> None:
        now = positions(open_trades)
        # A pair the bot no longer holds is reported flat once.
        for pair in self.ledger.symbols:
            now.setdefault(pair, (Decimal(0), None))
        if now == self._last_positions:
            return
        for pair, (qty, avg) in sorted(now.items()):
            if self._last_positions is not None and self._last_positions.get(pair) == (qty, avg):
                continue
            self.client.emit(
                p.PositionEvent(
                    ts=p.utc_now(), symbol=pair, quantity=qty, avg_price=avg, source="broker"
                )
            )
        self._last_positions = now

    async def _report_account(self) -> None:
        balance = await self._call(self.api.balance)
        stake = balance.get("stake") or self.stake_currency or "USD"
        total = _decimal(balance, "total", "balance")
        cash = Decimal(0)
        for row in _list(balance.get("currencies", []), "balance.currencies"):
            row = _obj(row, "balance.currencies[]")
            if row.get("currency") == stake:
                cash = _decimal(row, "free", f"balance {stake}")
        if not isinstance(stake, str) or not 0 < len(stake) <= 16:
            raise BadAnswer(f"balance.stake is {stake!r}, expected a currency")
        self.client.emit(
            p.AccountEvent(ts=p.utc_now(), equity=_q(total), cash=_q(cash), currency=stake)
        )

    async def _exit_open(
        self,
        symbols: Sequence[str] | None,
        exited: dict[int, float] | None = None,
        bad: list[str] | None = None,
    ) -> list[BotTrade]:
        """Send /forceexit for the open trades (of ``symbols``) with no exit working, at most
        every 3 s per trade; return the open trades. A trade the bridge cannot read (its error
        in ``bad``) is exited all the same: /forceexit all, every 3 s."""
        exited = {} if exited is None else exited
        bad = [] if bad is None else bad
        targets = [
            t
            for t in self._parse(await self._call(self.api.open_trades), bad)
            if not symbols or t.pair in symbols
        ]
        now = time.monotonic()
        if bad and not symbols and now - exited.get(0, -1e9) > 3.0:
            await self._call(self.api.forceexit, "all")
            exited[0] = now
        for trade in targets:
            if exitable(trade) and now - exited.get(trade.trade_id, -1e9) > 3.0:
                await self._call(self.api.forceexit, trade.trade_id)
                exited[trade.trade_id] = now
        return targets

    # -- commands

    async def on_command(self, command: p.Command) -> CommandOutcome:
        try:
            if command.kind == "pause":
                await self._call(self.api.pause)
                self._held = False
                current = self.client.trading_state
                # An engine already REDUCING or HALTED stays so (protocol, section 8).
                state: p.TradingState = current if current in ("REDUCING", "HALTED") else "PAUSED"
                detail = "bot paused (/pause): no new entries, open trades managed"
                if command.params.get("cancel_open"):
                    # Freqtrade cancels an order only by replacing or timing it out (its
                    # unfilledtimeout); the bridge does not reach into its orders.
                    detail += "; cancel_open not done: open orders are left to the bot"
                    return CommandOutcome(status="partial", detail=detail, trading_state=state)
                return CommandOutcome(status="succeeded", detail=detail, trading_state=state)
            if command.kind == "resume":
                await self._call(self.api.start)
                return CommandOutcome(
                    status="succeeded", detail="bot started (/start)", trading_state="ACTIVE"
                )
            if command.kind == "flatten" and command.strategy_id is not None:
                # A flatten of one strategy leaves the engine's state alone; the bridge can
                # only pause and exit the whole bot.
                detail = "the freqtrade bridge flattens the whole bot only, not one strategy"
                return CommandOutcome(status="failed", detail=detail)
            if command.kind in ("kill", "flatten"):
                return await self._exit_all(command)
            if command.kind == "cancel_all":  # the SDK's own, at shutdown: the bot keeps its orders
                return CommandOutcome(
                    status="succeeded",
                    detail="open orders are the bot's: left to its unfilledtimeout",
                )
        except BotApiError as exc:
            # A kill stays HALTED (the SDK halted on receipt): the poll loop pauses and exits
            # the bot once it answers again.
            halted: p.TradingState | None = "HALTED" if command.kind == "kill" else None
            detail = f"freqtrade: {exc}"
            return CommandOutcome(status="failed", detail=detail, trading_state=halted)
        return CommandOutcome(
            status="failed", detail=f"{command.kind} is not supported by the freqtrade bridge"
        )

    async def _exit_all(self, command: p.Command) -> CommandOutcome:
        kill = command.kind == "kill"
        halted = kill or self.client.trading_state == "HALTED"
        state: p.TradingState = "HALTED" if halted else "REDUCING"
        flatten = bool(command.params.get("flatten", True)) if kill else True
        symbols = None if kill else command.params.get("symbols")
        async with self._lock:
            # Under the lock: the poll loop, woken by the same state change, must not send
            # its own /forceexit for the same trades in between.
            await self._call(self.api.pause)
            self.bot_state = "paused"
            self._held = True
        if not flatten:
            detail = "bot paused (/pause); positions left open (flatten=false)"
            return CommandOutcome(status="succeeded", detail=detail, trading_state=state)
        # Exit, and wait for the exits to fill, reporting them as they do, so that the result
        # says what is left. An exit the bot cancelled is sent again.
        deadline = time.monotonic() + self.config.exit_timeout_s
        exited: dict[int, float] = {}
        # What there was to close, whoever sent the exit (the poll loop may have, for a kill).
        closing: dict[int, BotTrade] = {}
        while True:
            unreadable: list[str] = []
            async with self._lock:
                targets = await self._exit_open(symbols, exited, unreadable)
                for trade in targets:
                    closing.setdefault(trade.trade_id, trade)
                with contextlib.suppress(BadAnswer):  # reported by the poll loop
                    await self._sync_trades()
            left = {pair: qty for pair, (qty, _) in positions(targets).items() if qty}
            if (not left and not unreadable) or time.monotonic() > deadline:
                break
            await asyncio.sleep(min(0.2, self.config.poll_interval_s))
        traded: dict[str, Decimal] = {}
        for trade in closing.values():
            signed = trade.amount if trade.is_short else -trade.amount
            traded[trade.pair] = traded.get(trade.pair, Decimal(0)) + signed
        data: dict[str, Any] = {"traded": {k: str(v) for k, v in traded.items() if v}}
        if left or unreadable:
            data["left"] = {k: str(v) for k, v in left.items()}
            detail = (
                f"bot paused (/pause), /forceexit sent; {len(left)} positions still open "
                f"after {self.config.exit_timeout_s:g} s"
            )
            if unreadable:
                detail += f"; trades the bridge cannot read: {'; '.join(unreadable)}"[:4000]
            return CommandOutcome(status="partial", detail=detail, data=data, trading_state=state)
        what = "killed" if kill else "flattened"
        detail = f"{what}: bot paused (/pause), {len(closing)} trades force-exited, flat"
        return CommandOutcome(status="succeeded", detail=detail, data=data, trading_state=state)


# --- the command line --------------------------------------------------------------------------


def _config_hash(config: Mapping[str, Any]) -> str:
    keys = (
        "strategy", "strategy_version", "timeframe", "stake_currency", "stake_amount",
        "max_open_trades", "minimal_roi", "stoploss", "trading_mode", "exchange", "dry_run",
    )  # fmt: skip
    subset = {k: config.get(k) for k in keys}
    digest = hashlib.sha256(json.dumps(subset, sort_keys=True, default=str).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m engine_sdk.adapters.freqtrade",
        description="Follow a Freqtrade bot through its REST API and connect it to the "
        "control plane.",
    )
    parser.add_argument(
        "--bot-url",
        default=env("FREQTRADE_URL"),
        help="the bot's api_server, e.g. http://127.0.0.1:8080 (FREQTRADE_URL)",
    )
    parser.add_argument(
        "--bot-user",
        default=env("FREQTRADE_USERNAME"),
        help="api_server username (FREQTRADE_USERNAME)",
    )
    parser.add_argument(
        "--bot-password",
        default=env("FREQTRADE_PASSWORD"),
        help="api_server password; prefer FREQTRADE_PASSWORD",
    )
    parser.add_argument(
        "--url",
        default=env("CONTROLPLANE_URL"),
        help="ws(s)://host/ws/engine/v1 (CONTROLPLANE_URL)",
    )
    parser.add_argument(
        "--token", default=env("ENGINE_TOKEN"), help="the engine token; prefer ENGINE_TOKEN"
    )
    parser.add_argument(
        "--journal-dir", default=env("ENGINE_JOURNAL_DIR", ".engine-journal/freqtrade")
    )
    parser.add_argument(
        "--mode",
        choices=["paper", "live", "shadow"],
        default=None,
        help="default: paper for a dry-run bot, live otherwise",
    )
    parser.add_argument("--broker", default=None, help="default: the bot's exchange")
    parser.add_argument("--account", default=None, help="default: the bot's name")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--exit-timeout", type=float, default=30.0)
    parser.add_argument("--no-fsync", action="store_true", help="tests only")
    return parser


async def run(args: argparse.Namespace) -> int:
    missing = [
        n for n in ("bot_url", "bot_user", "bot_password", "url", "token") if not getattr(args, n)
    ]
    if missing:
        names = ", ".join("--" + n.replace("_", "-") for n in missing)
        print(
            f"freqtrade bridge: missing {names} (or their environment variables)", file=sys.stderr
        )
        return 2
    api = FreqtradeApi(args.bot_url, args.bot_user, args.bot_password)
    # The hello needs the bot's mode and exchange: wait for the bot to answer.
    while True:
        try:
            bot_config = await asyncio.to_thread(api.show_config)
            version = await asyncio.to_thread(api.version)
            break
        except BotApiError as exc:
            log.warning("waiting for the bot: %s", exc)
            await asyncio.sleep(2)
    exchange = bot_config.get("exchange")
    mode = args.mode or ("paper" if bot_config.get("dry_run", True) else "live")
    hello = HelloInfo(
        engine_build=f"freqtrade {version}; bridge {SDK_VERSION}"[:128],
        config_hash=_config_hash(bot_config),
        mode=mode,
        broker=(args.broker or (exchange if isinstance(exchange, str) else "freqtrade"))[:64],
        account=(args.account or str(bot_config.get("bot_name") or "freqtrade"))[:64],
        capabilities=p.Capabilities(commands=list(COMMANDS), limit_kinds=[]),
    )
    journal = Path(args.journal_dir)
    await asyncio.to_thread(journal.mkdir, parents=True, exist_ok=True)
    holder: dict[str, FreqtradeBridge] = {}

    async def on_command(command: p.Command) -> CommandOutcome:
        return await holder["bridge"].on_command(command)

    client = EngineClient(
        args.url,
        args.token,
        journal_dir=journal,
        hello=hello,
        on_command=on_command,
        config=ClientConfig(fsync=not args.no_fsync),
        enforces_limits=False,
    )
    bridge = FreqtradeBridge(
        api,
        client,
        journal,
        config=BridgeConfig(
            poll_interval_s=args.poll_interval,
            exit_timeout_s=args.exit_timeout,
            fsync=not args.no_fsync,
        ),
    )
    holder["bridge"] = bridge
    stop = asyncio.Event()
    await client.start()
    client.install_signal_handlers(on_signal=lambda _signum: stop.set())
    await bridge.run(stop)
    await client.wait_closed()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
