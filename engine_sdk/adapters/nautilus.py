"""NautilusTrader adapter: a node's orders, fills, positions and account reach the control plane,
and the node obeys its commands.

``ControlPlaneAdapter`` is a NautilusTrader ``Actor`` that owns an ``EngineClient``. Installed on a
``TradingNode`` or a ``BacktestEngine`` (``adapter.install(node_or_engine)``) it:

- forwards the node's order, fill, position and account events (message bus subscriptions to
  ``events.order.*``, ``events.position.*``, ``events.account.*``), with each order's and fill's
  Nautilus ``StrategyId``, the commission's currency as ``fee_currency``, and an ``instrument``
  event for each instrument before its first order;
- gates every new order in front of the ``RiskEngine``: it takes the message bus endpoint
  ``RiskEngine.execute`` (which every ``SubmitOrder`` reaches, from a strategy, the order emulator
  or an execution algorithm) and hands on to the risk engine only the orders the control plane's
  trading state and pre-trade limits allow (``EngineClient.check_order``). NautilusTrader's own
  trading states cannot do this: they have no PAUSED, and their REDUCING lets an order take a
  position across zero;
- obeys commands: pause and resume change the gate; reduce, flatten and kill close positions
  through the strategies that own them (``Strategy.close_position``, ``cancel_all_orders``).

Threads. On a live node the client runs on the node's own event loop, and command handlers call
the strategies directly. A ``BacktestEngine`` runs on the caller's thread as fast as it can, so
the client runs on an event loop of its own in a thread, and what a command does to the
strategies is queued and done on the engine's thread, by a timer of the actor (simulated time)
and by ``adapter.pump()``, which a backtest driving the engine in steps calls between steps.

Nothing in ``engine_sdk`` imports this module: NautilusTrader is an optional extra of the SDK.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from nautilus_trader.common import Environment
from nautilus_trader.common.actor import Actor
from nautilus_trader.config import ActorConfig
from nautilus_trader.core.uuid import UUID4
from nautilus_trader.execution.messages import ModifyOrder, SubmitOrder, SubmitOrderList
from nautilus_trader.model.enums import (
    AssetClass,
    InstrumentClass,
    LiquiditySide,
    OrderSide,
    OrderStatus,
    OrderType,
    PositionSide,
)
from nautilus_trader.model.events import (
    AccountState,
    OrderDenied,
    OrderEvent,
    OrderFilled,
    OrderModifyRejected,
    OrderRejected,
    PositionEvent,
)

from engine_sdk import limits as sdk_limits
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient, HelloInfo
from engine_sdk.gate import OrderRejected as GateRejected

__all__ = ["COMMANDS", "ControlPlaneAdapter"]

log = logging.getLogger(__name__)

# What this adapter carries out: every command of protocol v1 (kill_drill is the SDK's own), and
# every pre-trade limit kind the SDK's check_order enforces, since every order passes it.
COMMANDS: list[p.CommandKind] = [
    "pause",
    "resume",
    "reduce",
    "flatten",
    "cancel_all",
    "kill",
    "set_limits",
    "kill_drill",
]

_ENDPOINT = "RiskEngine.execute"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
T = TypeVar("T")

_ORDER_TYPES: dict[int, p.OrderType] = {
    OrderType.MARKET: "market",
    OrderType.MARKET_TO_LIMIT: "market",
    OrderType.LIMIT: "limit",
    OrderType.STOP_MARKET: "stop",
    OrderType.MARKET_IF_TOUCHED: "stop",
    OrderType.TRAILING_STOP_MARKET: "stop",
    OrderType.STOP_LIMIT: "stop_limit",
    OrderType.LIMIT_IF_TOUCHED: "stop_limit",
    OrderType.TRAILING_STOP_LIMIT: "stop_limit",
}
_ENDED: dict[int, p.OrderStatus] = {
    OrderStatus.DENIED: "rejected",
    OrderStatus.REJECTED: "rejected",
    OrderStatus.CANCELED: "cancelled",
    OrderStatus.EXPIRED: "expired",
    OrderStatus.FILLED: "filled",
}


def _time(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _dec(value: Any) -> Decimal:
    """A Nautilus Quantity, Price or Money (or a float) as a Decimal."""
    as_decimal = getattr(value, "as_decimal", None)
    return as_decimal() if as_decimal is not None else Decimal(str(value))


_CURRENCY_CODE = re.compile(p.CURRENCY_CODE_PATTERN)


def _side(side: int) -> p.Side:
    return "buy" if side == OrderSide.BUY else "sell"


def _currency_code(currency: Any) -> str | None:
    """The currency's code when it is one the protocol takes (ISO 4217, or a crypto venue's code
    such as USDT: 2 to 16 capitals and digits), else None: left out rather than refused."""
    code = getattr(currency, "code", None)
    return code if isinstance(code, str) and _CURRENCY_CODE.fullmatch(code) else None


def _order_status(order: Any) -> p.OrderStatus:
    ended = _ENDED.get(order.status)
    if ended is not None:
        return ended
    filled = _dec(order.filled_qty)
    if filled > 0:
        return "partially_filled"
    if order.status in (OrderStatus.INITIALIZED, OrderStatus.EMULATED, OrderStatus.RELEASED):
        return "new"
    if order.status == OrderStatus.SUBMITTED:
        return "new"
    # ACCEPTED, TRIGGERED, PENDING_UPDATE, PENDING_CANCEL: working at the venue.
    return "accepted"


def _asset_class(instrument: Any) -> p.AssetClass:
    kind = instrument.instrument_class
    if kind in (InstrumentClass.FUTURE, InstrumentClass.FUTURES_SPREAD):
        return "future"
    if kind in (InstrumentClass.OPTION, InstrumentClass.OPTION_SPREAD):
        return "option"
    return {
        AssetClass.FX: "fx",
        AssetClass.EQUITY: "equity",
        AssetClass.CRYPTOCURRENCY: "crypto",
        AssetClass.DEBT: "bond",
    }.get(instrument.asset_class, "other")


def _fits(value: Decimal, below: Decimal, places: int) -> Decimal | None:
    """``value`` if the protocol takes it as a multiplier or tick size, else None (left out)."""
    value = value.normalize()
    if 0 < value < below and -value.as_tuple().exponent <= places:  # type: ignore[operator]
        return value
    return None


@dataclass
class _Work:
    """One piece of command work for the engine's thread, and where its result goes."""

    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


class _LoopThread:
    """An asyncio event loop on a daemon thread of its own: the client's, beside a backtest."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="controlplane-client", daemon=True
        )
        self.thread.start()

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.loop.close()


class ControlPlaneAdapter(Actor):
    """Connects one NautilusTrader node (live or backtest) to the control plane as one engine.

    ``run_id`` names this run (protocol.md, "Runs"): NautilusTrader's order and fill ids repeat
    from one backtest to the next, so each run needs its own; left out, a backtest draws a new
    random one and a live node keeps the engine's one run (""). ``command_timeout_s`` bounds
    how long a command waits (wall clock) for orders to be cancelled and positions to close
    before it answers with what is left.
    """

    def __init__(
        self,
        *,
        url: str,
        token: str,
        journal_dir: str | os.PathLike[str],
        engine_build: str,
        config_hash: str,
        mode: p.Mode,
        broker: str,
        account: str,
        run_id: str | None = None,
        client_config: ClientConfig | None = None,
        command_timeout_s: float = 30.0,
        pump_interval: timedelta = timedelta(seconds=1),
        component_id: str = "ControlPlane",
    ) -> None:
        super().__init__(config=ActorConfig(component_id=component_id))
        self.command_timeout_s = command_timeout_s
        self.pump_interval = pump_interval
        self._run_id = run_id
        # The client is made by install(), once it knows whether the node is a backtest.
        self._client_args: dict[str, Any] = {
            "url": url,
            "token": token,
            "journal_dir": journal_dir,
            "config": client_config,
            "hello": {
                "engine_build": engine_build,
                "config_hash": config_hash,
                "mode": mode,
                "broker": broker,
                "account": account,
            },
        }
        self._client: EngineClient | None = None
        self._kernel: Any = None
        self._risk_execute: Callable[[Any], None] | None = None
        self._backtest = False
        self._loop_thread: _LoopThread | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._client_started = False
        self._start_task: asyncio.Future[None] | None = None
        self._work: queue.SimpleQueue[_Work] = queue.SimpleQueue()
        # Set (on the client's loop) whenever the node reports something a command may wait for.
        self._progress: asyncio.Event | None = None
        self._declared: set[str] = set()
        self._accounts_seen: set[Any] = set()
        # True while a command's own closing orders are submitted (engine thread only): the gate
        # lets them through in HALTED, and no limit applies to them.
        self._liquidating = False
        # What the gate refused (client order id, reason) and each command handled (kind,
        # status), in order: for a backtest's own record and its tests.
        self.denied: list[tuple[str, str]] = []
        self.handled: list[tuple[str, str]] = []

    # --- installing -------------------------------------------------------------------------

    @property
    def client(self) -> EngineClient:
        """The SDK client (made by ``install``): its trading state, gate, limits, ``emit``."""
        if self._client is None:
            raise RuntimeError("ControlPlaneAdapter.install(node) makes the client")
        return self._client

    @property
    def run_id(self) -> str:
        return self.client.hello.run_id

    def install(self, node: Any) -> None:
        """Add the adapter to a ``TradingNode`` (after ``build()``) or a ``BacktestEngine`` (after
        its venues and instruments are added), and put its gate in front of the risk engine."""
        if self._kernel is not None:
            raise RuntimeError("this adapter is installed already")
        kernel = node.kernel
        self._kernel = kernel
        self._backtest = kernel.environment == Environment.BACKTEST
        args = self._client_args
        # A backtest's order and fill ids repeat from run to run: each run is a run of its own.
        # A live node's ids embed the time; it keeps one run (""), so that events its journal
        # sends again after a restart are deduplicated against what the server stored.
        run_id = self._run_id
        if run_id is None:
            run_id = uuid.uuid4().hex if self._backtest else ""
        self._client = EngineClient(
            args["url"],
            args["token"],
            journal_dir=args["journal_dir"],
            hello=HelloInfo(
                **args["hello"],
                run_id=run_id,
                capabilities=p.Capabilities(
                    commands=list(COMMANDS), limit_kinds=sorted(sdk_limits.KINDS)
                ),
            ),
            on_command=self._on_command,
            config=args["config"],
        )
        node.trader.add_actor(self)
        msgbus = kernel.msgbus
        risk_execute = kernel.risk_engine.execute
        msgbus.deregister(_ENDPOINT, risk_execute)
        msgbus.register(_ENDPOINT, self._gate_execute)
        self._risk_execute = risk_execute
        if self._backtest:
            self._loop_thread = _LoopThread()
            self._client_loop = self._loop_thread.loop
            self._loop_thread.call(self._start_client())
        else:
            # On the node's own loop, as soon as it runs (before the actor starts, so that the
            # strategies' first events are journaled by a started client).
            self._client_loop = kernel.loop
            self._start_task = asyncio.ensure_future(self._start_client(), loop=kernel.loop)

    async def _start_client(self) -> None:
        self._progress = asyncio.Event()
        if not self._client_started:
            self._client_started = True
            # Returns at once: an unreachable control plane is retried in the background while
            # the node runs (the dead-man pauses new orders after dead_man_after_s).
            await self.client.start()

    def wait_connected(self, timeout: float) -> None:
        """Block until the control plane welcomed the engine (backtest: from the engine thread)."""
        if self._loop_thread is None:
            raise RuntimeError("wait_connected blocks: on a live node, await connected()")
        self._loop_thread.call(self.client.wait_connected(timeout), timeout + 1)

    async def connected(self, timeout: float) -> None:  # noqa: ASYNC109
        """Live node, on its loop: until the client started and the control plane welcomed it."""
        if self._start_task is None:
            raise RuntimeError("connected() is for a live node; a backtest uses wait_connected")
        await self._start_task
        await self.client.wait_connected(timeout)

    def flush(self, timeout: float) -> None:
        """Backtest: block until the server has acked every event emitted so far."""
        if self._loop_thread is None:
            raise RuntimeError("flush blocks: on a live node, await client.flush()")
        self._loop_thread.call(self.client.flush(timeout), timeout + 1)

    def close(self, flush_timeout: float = 10.0) -> None:
        """Backtest: wait for the server to ack everything (at most ``flush_timeout`` s), close
        the client and stop its thread. Unacked events stay in the journal for the next run."""
        if self._loop_thread is None:
            raise RuntimeError("close is for a backtest; on a live node, await client.shutdown()")
        with contextlib.suppress(Exception):
            self._loop_thread.call(self.client.close(flush_timeout=flush_timeout))
        self._loop_thread.stop()
        self._loop_thread = None

    # --- actor lifecycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        if self._kernel is None:
            raise RuntimeError("ControlPlaneAdapter must be added with adapter.install(node)")
        self.msgbus.subscribe(topic="events.order.*", handler=self._on_order_event)
        self.msgbus.subscribe(topic="events.position.*", handler=self._on_position_event)
        self.msgbus.subscribe(topic="events.account.*", handler=self._on_account_event)
        self._report_accounts()
        if self._backtest:
            # Command work queued while the engine runs is done at this simulated pace.
            self.clock.set_timer(
                "controlplane-pump", self.pump_interval, callback=lambda _event: self.pump()
            )

    def on_stop(self) -> None:
        with contextlib.suppress(Exception):
            self.msgbus.unsubscribe(topic="events.order.*", handler=self._on_order_event)
            self.msgbus.unsubscribe(topic="events.position.*", handler=self._on_position_event)
            self.msgbus.unsubscribe(topic="events.account.*", handler=self._on_account_event)
        if self._backtest:
            with contextlib.suppress(Exception):
                self.clock.cancel_timer("controlplane-pump")

    # --- the engine's thread ----------------------------------------------------------------

    def pump(self) -> None:
        """Do the command work queued for the engine's thread (backtest). Call it between the
        steps of a backtest run in steps; a timer calls it while the engine runs."""
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            self._do(work)
        self._poke()

    def _do(self, work: _Work) -> None:
        try:
            work.future.set_result(work.fn())
        except Exception as exc:
            log.exception("controlplane: command work failed")
            work.future.set_exception(exc)

    def pump_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Backtest, between steps: do queued command work as it comes until ``done()`` (read
        on this thread) is true; False if ``timeout`` s pass first."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while True:
                self.pump()
                if done():
                    return True
                if deadline.is_set():
                    return False
                try:
                    # Blocks until command work arrives (or a short slice passes, to re-read
                    # ``done``, which the client's thread may change without queueing work).
                    work = self._work.get(timeout=0.05)
                except queue.Empty:
                    continue
                self._do(work)
        finally:
            timer.cancel()

    def _poke(self) -> None:
        loop, progress = self._client_loop, self._progress
        if loop is None or progress is None or loop.is_closed():
            return
        if self._backtest:
            loop.call_soon_threadsafe(progress.set)
        else:
            progress.set()

    async def _on_engine(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` where the strategies live: at once on a live node (this is its loop), on
        the engine's thread at its next pump in a backtest."""
        if not self._backtest:
            return fn()
        work = _Work(fn)
        self._work.put(work)
        return await asyncio.wrap_future(work.future)

    async def _wait_for(self, check: Callable[[], bool], deadline: float) -> bool:
        """Until ``check()`` (run on the engine's thread) is true, or the wall-clock deadline."""
        loop = asyncio.get_running_loop()
        assert self._progress is not None
        while True:
            self._progress.clear()
            if await self._on_engine(check):
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._progress.wait()

    # --- the gate in front of the risk engine -------------------------------------------------

    def _gate_execute(self, command: Any) -> None:
        assert self._risk_execute is not None
        try:
            if isinstance(command, SubmitOrder):
                reason = self._refusal(command.order)
                if reason is not None:
                    self._deny(command.order, reason)
                    return
            elif isinstance(command, SubmitOrderList):
                for order in command.order_list.orders:
                    reason = self._refusal(order)
                    if reason is not None:
                        for each in command.order_list.orders:
                            self._deny(each, f"order list refused: {reason}")
                        return
            elif isinstance(command, ModifyOrder):
                reason = self._modify_refusal(command)
                if reason is not None:
                    self._reject_modify(command, reason)
                    return
        except Exception as exc:
            # A gate that cannot decide refuses: an order must never pass unchecked.
            log.exception("controlplane: the gate failed on %s", command)
            if isinstance(command, SubmitOrder):
                self._deny(command.order, f"control plane gate error: {exc!r}")
                return
            if isinstance(command, SubmitOrderList):
                for each in command.order_list.orders:
                    self._deny(each, f"control plane gate error: {exc!r}")
                return
        self._risk_execute(command)

    def _position(self, instrument_id: Any, strategy_id: Any) -> Decimal:
        """The strategy's net position in the instrument (signed)."""
        total = Decimal(0)
        for position in self.cache.positions_open(
            instrument_id=instrument_id, strategy_id=strategy_id
        ):
            qty = _dec(position.quantity)
            total += qty if position.side == PositionSide.LONG else -qty
        return total

    def _effective_position(self, order: Any) -> Decimal:
        """The strategy's position net of its working orders that reduce it: so that several
        reducing orders at once can never together take it across zero."""
        position = self._position(order.instrument_id, order.strategy_id)
        if position == 0:
            return position
        for working in self.cache.orders(
            instrument_id=order.instrument_id, strategy_id=order.strategy_id
        ):
            if (
                working.client_order_id == order.client_order_id
                or working.is_closed
                or working.status == OrderStatus.INITIALIZED
            ):
                continue
            leaves = _dec(working.leaves_qty)
            signed = leaves if working.side == OrderSide.BUY else -leaves
            if (signed > 0) != (position > 0):
                position += signed
        return position

    def _reference_price(self, instrument_id: Any, side: int) -> Decimal | None:
        quote = self.cache.quote_tick(instrument_id)
        if quote is not None:
            return _dec(quote.ask_price if side == OrderSide.BUY else quote.bid_price)
        trade = self.cache.trade_tick(instrument_id)
        return _dec(trade.price) if trade is not None else None

    def _refusal(self, order: Any) -> str | None:
        """Why the control plane's trading state or limits refuse this new order, or None."""
        symbol = order.instrument_id.value
        price = getattr(order, "price", None)
        try:
            self.client.check_order(
                symbol,
                _side(order.side),
                _dec(order.quantity),
                self._effective_position(order),
                price=_dec(price) if price is not None else None,
                reference_price=self._reference_price(order.instrument_id, order.side),
                liquidating=self._liquidating,
            )
        except GateRejected as exc:
            return exc.reason
        return None

    def _deny(self, order: Any, reason: str) -> None:
        # As the RiskEngine denies an order: an OrderDenied through the execution engine, which
        # the strategy and this adapter's order subscription then see.
        if order.status != OrderStatus.INITIALIZED:
            return
        self.denied.append((order.client_order_id.value, reason))
        log.warning("controlplane: order %s denied: %s", order.client_order_id, reason)
        if not self.cache.order_exists(order.client_order_id):
            self.cache.add_order(order)
        denied = OrderDenied(
            trader_id=order.trader_id,
            strategy_id=order.strategy_id,
            instrument_id=order.instrument_id,
            client_order_id=order.client_order_id,
            reason=reason[:1024],
            event_id=UUID4(),
            ts_init=self.clock.timestamp_ns(),
        )
        self.msgbus.send(endpoint="ExecEngine.process", msg=denied)

    def _modify_refusal(self, command: Any) -> str | None:
        """A modify that makes an order bigger is a new risk: refused unless ACTIVE."""
        if command.quantity is None or self.client.trading_state == "ACTIVE":
            return None
        order = self.cache.order(command.client_order_id)
        if order is None or _dec(command.quantity) <= _dec(order.quantity):
            return None
        return (
            f"{command.instrument_id.value}: trading is {self.client.trading_state}; an order's "
            f"quantity may not grow ({order.quantity} to {command.quantity})"
        )

    def _reject_modify(self, command: Any, reason: str) -> None:
        order = self.cache.order(command.client_order_id)
        now = self.clock.timestamp_ns()
        rejected = OrderModifyRejected(
            trader_id=command.trader_id,
            strategy_id=command.strategy_id,
            instrument_id=command.instrument_id,
            client_order_id=command.client_order_id,
            venue_order_id=command.venue_order_id,
            account_id=order.account_id if order is not None else None,
            reason=reason[:1024],
            event_id=UUID4(),
            ts_event=now,
            ts_init=now,
        )
        self.msgbus.send(endpoint="ExecEngine.process", msg=rejected)

    # --- events to the control plane ----------------------------------------------------------

    def _emit(self, event: p.Event) -> None:
        try:
            self.client.emit(event)
        except Exception:
            # An event the protocol cannot carry (or backpressure) must not stop the node.
            log.exception("controlplane: could not emit %s", type(event).__name__)

    def _declare(self, instrument_id: Any) -> None:
        symbol = instrument_id.value
        if symbol in self._declared:
            return
        self._declared.add(symbol)
        instrument = self.cache.instrument(instrument_id)
        if instrument is None:
            return
        try:
            self.client.declare_instrument(
                symbol,
                asset_class=_asset_class(instrument),
                multiplier=_fits(_dec(instrument.multiplier), p.MAX_MULTIPLIER, 6),
                currency=_currency_code(instrument.quote_currency),
                tick_size=_fits(_dec(instrument.price_increment), p.MAX_TICK_SIZE, 10),
            )
        except (ValueError, InvalidOperation):
            log.exception("controlplane: could not declare %s", symbol)

    def _on_order_event(self, event: OrderEvent) -> None:
        order = self.cache.order(event.client_order_id)
        if order is None:
            return
        self._declare(order.instrument_id)
        ts = _time(event.ts_event)
        strategy = order.strategy_id.value
        if isinstance(event, OrderFilled):
            fee = _dec(event.commission)
            fill_id = f"{event.client_order_id.value}-{event.trade_id.value}"
            if len(fill_id) > 64:
                fill_id = hashlib.sha256(fill_id.encode()).hexdigest()[:64]
            self._emit(
                p.FillEvent(
                    ts=ts,
                    fill_id=fill_id,
                    client_order_id=order.client_order_id.value,
                    symbol=order.instrument_id.value,
                    side=_side(event.order_side),
                    quantity=_dec(event.last_qty),
                    price=_dec(event.last_px),
                    fee=fee,
                    fee_currency=_currency_code(event.commission.currency),
                    liquidity={LiquiditySide.MAKER: "maker", LiquiditySide.TAKER: "taker"}.get(
                        event.liquidity_side
                    ),
                    strategy_id=strategy,
                )
            )
        price = getattr(order, "price", None)
        trigger = getattr(order, "trigger_price", None)
        filled = _dec(order.filled_qty)
        reason = None
        if isinstance(event, OrderDenied | OrderRejected):
            reason = (event.reason or "rejected")[:1024]
        self._emit(
            p.OrderEvent(
                ts=ts,
                client_order_id=order.client_order_id.value,
                symbol=order.instrument_id.value,
                side=_side(order.side),
                order_type=_ORDER_TYPES.get(order.order_type, "market"),
                quantity=_dec(order.quantity),
                limit_price=_dec(price) if price is not None else None,
                stop_price=_dec(trigger) if trigger is not None else None,
                status=_order_status(order),
                filled_quantity=filled,
                avg_fill_price=Decimal(str(order.avg_px)) if filled > 0 and order.avg_px else None,
                broker_order_id=order.venue_order_id.value if order.venue_order_id else None,
                reject_reason=reason,
                strategy_id=strategy,
            )
        )
        self._poke()

    def _on_position_event(self, event: PositionEvent) -> None:
        instrument_id = event.instrument_id
        self._declare(instrument_id)
        # The control plane keeps one position per engine and symbol (all strategies together):
        # report the net of every strategy's positions in the instrument.
        net, cost = Decimal(0), Decimal(0)
        strategies = set()
        for position in self.cache.positions_open(instrument_id=instrument_id):
            qty = _dec(position.quantity)
            net += qty if position.side == PositionSide.LONG else -qty
            cost += qty * Decimal(str(position.avg_px_open))
            strategies.add(position.strategy_id.value)
        gross = sum(
            (_dec(x.quantity) for x in self.cache.positions_open(instrument_id=instrument_id)),
            Decimal(0),
        )
        avg = (cost / gross).quantize(Decimal("0.00000001")) if gross else None
        self._emit(
            p.PositionEvent(
                ts=_time(event.ts_event),
                symbol=instrument_id.value,
                quantity=net,
                avg_price=avg if net else None,
                source="engine",
                strategy_id=strategies.pop() if len(strategies) == 1 else None,
            )
        )
        self._report_accounts()
        self._poke()

    def _report_accounts(self) -> None:
        # A backtest's simulated venue updates its account without publishing it on the message
        # bus: the latest state of each account is read after each position change.
        for account in self.cache.accounts():
            event = account.last_event
            if event is not None:
                self._on_account_event(event)

    def _on_account_event(self, event: AccountState) -> None:
        if event.id in self._accounts_seen:
            return
        self._accounts_seen.add(event.id)
        balances = list(event.balances)
        if not balances:
            return
        base = event.base_currency
        balance = next((b for b in balances if b.currency == base), balances[0])
        code = balance.currency.code
        self._emit(
            p.AccountEvent(
                ts=_time(event.ts_event),
                equity=_dec(balance.total),
                cash=_dec(balance.free),
                margin_used=_dec(balance.locked),
                currency=code[:16],
            )
        )

    # --- commands ---------------------------------------------------------------------------

    def _strategies(self, strategy_id: str | None) -> list[Any]:
        strategies = list(self._kernel.trader.strategies())
        if strategy_id is None:
            return strategies
        return [s for s in strategies if s.id.value == strategy_id]

    @staticmethod
    def _symbols(params: dict[str, Any]) -> set[str] | None:
        symbols = params.get("symbols")
        if symbols is None:
            return None
        if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
            raise ValueError(f"params.symbols must be a list of symbols, got {symbols!r}")
        return set(symbols)

    async def _on_command(self, command: p.Command) -> CommandOutcome:
        outcome = await self._handle(command)
        self.handled.append((command.kind, outcome.status))
        return outcome

    async def _handle(self, command: p.Command) -> CommandOutcome:
        kind = command.kind
        state = self.client.trading_state
        if kind == "set_limits":
            # The SDK applies them (check_order enforces them on every order here) and answers
            # partial for kinds it does not enforce.
            return CommandOutcome(status="succeeded")
        if kind == "resume":
            return CommandOutcome(status="succeeded", trading_state="ACTIVE")
        try:
            symbols = self._symbols(command.params)
        except ValueError as exc:
            return CommandOutcome(status="failed", detail=str(exc))
        strategy_id = command.strategy_id
        strategies = await self._on_engine(lambda: self._strategies(strategy_id))
        if strategy_id is not None and not strategies:
            known = await self._on_engine(lambda: [s.id.value for s in self._strategies(None)])
            return CommandOutcome(
                status="failed",
                detail=f"no strategy {strategy_id!r} in this node (strategies: "
                f"{', '.join(known) or 'none'})",
            )
        deadline = asyncio.get_running_loop().time() + self.command_timeout_s
        if kind == "pause":
            keep = state in ("REDUCING", "HALTED")
            outcome = CommandOutcome(status="succeeded", trading_state=None if keep else "PAUSED")
            if command.params.get("cancel_open"):
                data = await self._cancel(strategies, symbols, deadline)
                outcome.data = data
                if data["working"]:
                    outcome.status = "partial"
                    outcome.detail = f"{len(data['working'])} orders still working"
            return outcome
        if kind == "cancel_all":
            data = await self._cancel(strategies, symbols, deadline)
            if data["working"]:
                return CommandOutcome(
                    status="partial",
                    detail=f"{len(data['working'])} orders still working",
                    data=data,
                )
            return CommandOutcome(status="succeeded", data=data)
        if kind in ("reduce", "flatten"):
            target = command.params.get("target_pct", 0) if kind == "reduce" else 0
            if (
                not isinstance(target, int | float)
                or isinstance(target, bool)
                or not 0 <= target < 100
            ):
                return CommandOutcome(
                    status="failed",
                    detail=f"params.target_pct must be a number from 0 to below 100, got "
                    f"{target!r}",
                )
            # Reducing is the engine's state while it works positions down; a command aimed at
            # one strategy leaves the engine's state alone, and HALTED stays HALTED.
            new_state: p.TradingState | None = "REDUCING"
            if state == "HALTED" or strategy_id is not None:
                new_state = None
            if new_state is not None:
                # Before any order is sent: nothing else may add risk while this works.
                self.client.gate.set_state("REDUCING", reason=f"{kind} by {command.issued_by}")
            outcome = await self._reduce(strategies, symbols, Decimal(str(target)), deadline)
            outcome.trading_state = new_state
            return outcome
        if kind == "kill":
            # The SDK has already halted the gate, before the ack.
            if command.params.get("flatten", True) is False:
                data = await self._cancel(strategies, None, deadline)
                status = "partial" if data["working"] else "succeeded"
                detail = f"{len(data['working'])} orders still working" if data["working"] else ""
                return CommandOutcome(
                    status=status, detail=detail, data=data, trading_state="HALTED"
                )
            outcome = await self._reduce(strategies, None, Decimal(0), deadline)
            outcome.trading_state = "HALTED"
            return outcome
        return CommandOutcome(status="failed", detail=f"{kind} is not supported by this adapter")

    # Engine-thread helpers: they read the cache and call strategies.

    def _working(self, strategies: list[Any], symbols: set[str] | None) -> list[Any]:
        orders = []
        for strategy in strategies:
            for order in self.cache.orders(strategy_id=strategy.id):
                if order.is_closed or order.status == OrderStatus.INITIALIZED:
                    continue
                if symbols is None or order.instrument_id.value in symbols:
                    orders.append(order)
        return orders

    def _open_positions(self, strategies: list[Any], symbols: set[str] | None) -> list[Any]:
        positions = []
        for strategy in strategies:
            for position in self.cache.positions_open(strategy_id=strategy.id):
                if symbols is None or position.instrument_id.value in symbols:
                    positions.append((strategy, position))
        return positions

    def _cancel_now(self, strategies: list[Any], symbols: set[str] | None) -> list[str]:
        working = self._working(strategies, symbols)
        by_strategy = {s.id: s for s in strategies}
        for strategy_id, instrument_id in {(o.strategy_id, o.instrument_id) for o in working}:
            by_strategy[strategy_id].cancel_all_orders(instrument_id)
        return [o.client_order_id.value for o in working]

    async def _cancel(
        self, strategies: list[Any], symbols: set[str] | None, deadline: float
    ) -> dict[str, Any]:
        cancelled = await self._on_engine(lambda: self._cancel_now(strategies, symbols))
        await self._wait_for(lambda: not self._working(strategies, symbols), deadline)
        working = await self._on_engine(
            lambda: [o.client_order_id.value for o in self._working(strategies, symbols)]
        )
        return {"cancelled": [c for c in cancelled if c not in working], "working": working}

    @contextlib.contextmanager
    def _closing(self) -> Iterator[None]:
        self._liquidating = True
        try:
            yield
        finally:
            self._liquidating = False

    def _reduce_step(
        self,
        strategies: list[Any],
        symbols: set[str] | None,
        keep: Decimal,
        goals: dict[Any, Decimal],
        traded: dict[str, Decimal],
    ) -> bool:
        """One round: send a closing order for each position above its goal that has no order
        of its own working. True once every position is at its goal."""
        done = True
        working = {(o.strategy_id, o.instrument_id) for o in self._working(strategies, symbols)}
        for strategy, position in self._open_positions(strategies, symbols):
            qty = _dec(position.quantity)
            key = position.id
            if key not in goals:
                # What to keep, rounded to the instrument's lot so it can be traded exactly.
                instrument = self.cache.instrument(position.instrument_id)
                goal = qty * keep / 100
                if instrument is not None and goal > 0:
                    goal = _dec(instrument.make_qty(float(goal), round_down=True))
                goals[key] = goal
            goal = goals[key]
            if qty <= goal:
                continue
            done = False
            if (strategy.id, position.instrument_id) in working:
                continue
            signed = qty if position.side == PositionSide.LONG else -qty
            symbol = position.instrument_id.value
            with self._closing():
                if goal == 0:
                    strategy.close_position(position, tags=["controlplane"])
                else:
                    order = strategy.order_factory.market(
                        instrument_id=position.instrument_id,
                        order_side=OrderSide.SELL if signed > 0 else OrderSide.BUY,
                        quantity=self.cache.instrument(position.instrument_id).make_qty(
                            float(qty - goal)
                        ),
                        reduce_only=True,
                        tags=["controlplane"],
                    )
                    strategy.submit_order(order, position_id=position.id)
            sent = qty - goal
            traded[symbol] = traded.get(symbol, Decimal(0)) + (-sent if signed > 0 else sent)
        return done

    async def _reduce(
        self, strategies: list[Any], symbols: set[str] | None, keep: Decimal, deadline: float
    ) -> CommandOutcome:
        """Cancel the working orders, then trade each position down to ``keep`` % through the
        strategy that owns it, again until it is there or the deadline passes."""
        data = await self._cancel(strategies, symbols, deadline)
        goals: dict[Any, Decimal] = {}
        traded: dict[str, Decimal] = {}
        reached = await self._wait_for(
            lambda: self._reduce_step(strategies, symbols, keep, goals, traded), deadline
        )

        def left() -> dict[str, str]:
            out: dict[str, Decimal] = {}
            for _, position in self._open_positions(strategies, symbols):
                qty = _dec(position.quantity)
                if qty > goals.get(position.id, Decimal(0)):
                    signed = qty if position.side == PositionSide.LONG else -qty
                    sym = position.instrument_id.value
                    out[sym] = out.get(sym, Decimal(0)) + signed
            return {k: str(v) for k, v in out.items()}

        remaining = await self._on_engine(left)
        working = await self._on_engine(
            lambda: [o.client_order_id.value for o in self._working(strategies, symbols)]
        )
        data = {
            "cancelled": data["cancelled"],
            "traded": {k: str(v) for k, v in traded.items()},
            "working": working,
            "left": remaining,
        }
        if reached and not working:
            return CommandOutcome(status="succeeded", data=data)
        detail = (
            f"not done within {self.command_timeout_s:g} s: {len(remaining)} positions above "
            f"target, {len(working)} orders working"
        )
        return CommandOutcome(status="partial", detail=detail, data=data)
