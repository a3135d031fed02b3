"""The engine side of protocol v1: a reconnecting WebSocket client with a local journal.

An engine creates one EngineClient, calls ``await start()``, then ``emit()``s events as things
happen. ``emit`` is cheap and never touches the network: it assigns the next seq, encodes the
event and queues it. A writer task appends queued events to the journal in batches (one fsync
per batch); only journaled events are sent, so a seq the server has seen can never be handed out
again after a crash. The server's ``ack`` tells which events may be forgotten; everything not yet
acked is sent again after a reconnect.

The client is a composition of parts, each in its own module:

- ``config.ClientConfig``: the tunables, frozen (``HelloInfo``: what the engine says it is);
- ``journal.JournalWriter``: seqs, the journal, what the server has not acked yet;
- ``connection.Connection``: hello and welcome, the sender, heartbeats, reconnects, dead-man;
- ``commands.CommandRunner``: each command acknowledged, handled once, answered;
- ``state.StateStore``: the trading gate, pre-trade limits, and their files.

The client runs on one asyncio event loop, but ``emit`` and ``check_order`` may also be called
from an engine's own threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from engine_sdk import protocol
from engine_sdk.commands import CommandHandler, CommandOutcome, CommandRunner
from engine_sdk.config import ClientConfig, HelloInfo
from engine_sdk.connection import Connection
from engine_sdk.errors import (
    BackpressureError,
    EngineClientError,
    EngineReplaced,
    StageForbidsLive,
    Unauthorized,
)
from engine_sdk.gate import OrderRejected, StateChange, TradingGate
from engine_sdk.journal import MAX_EVENT_BYTES, JournalWriter
from engine_sdk.limits import LimitRejected, PreTradeLimits
from engine_sdk.protocol import (
    AssetClass,
    Event,
    InstrumentEvent,
    PositionEvent,
    Side,
    Stage,
    TradingState,
    Welcome,
    utc_now,
)
from engine_sdk.state import StateStore

__all__ = [
    "MAX_EVENT_BYTES",
    "BackpressureError",
    "ClientConfig",
    "CommandHandler",
    "CommandOutcome",
    "EngineClient",
    "EngineClientError",
    "EngineReplaced",
    "HelloInfo",
    "LimitRejected",
    "OrderRejected",
    "StageForbidsLive",
    "StateChange",
    "Unauthorized",
]

log = logging.getLogger(__name__)


class EngineClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        journal_dir: str | os.PathLike[str],
        hello: HelloInfo,
        on_command: CommandHandler | None = None,
        on_dead_man: Callable[[], Any] | None = None,
        on_welcome: Callable[[Welcome], Any] | None = None,
        on_error: Callable[[protocol.Error], None] | None = None,
        config: ClientConfig | None = None,
        enforces_limits: bool = True,
    ) -> None:
        """``enforces_limits=False`` says that this engine's orders do not go through
        ``check_order``: the client then answers every ``set_limits`` ``failed``, saying why,
        rather than let the control plane believe the limits are in force."""
        config = config or ClientConfig()
        self.config = config
        self.url = url
        self.hello = hello
        self.journal_dir = Path(journal_dir)
        self._progress = asyncio.Event()

        self.writer = JournalWriter(
            self.journal_dir,
            fsync=config.fsync,
            batch_max_events=config.batch_max_events,
            batch_interval_s=config.batch_interval_s,
            max_unacked_events=config.max_unacked_events,
            on_written=self._events_written,
            on_acked=self._pulse,
        )
        self.state = StateStore(self.journal_dir, fsync=config.fsync, emit=self.emit)
        self.runner = CommandRunner(
            self.journal_dir,
            fsync=config.fsync,
            state=self.state,
            handler=on_command,
            deliver=self._deliver_result,
            enforces_limits=enforces_limits,
        )
        self.connection = Connection(
            url,
            token,
            hello,
            config,
            writer=self.writer,
            state=self.state,
            runner=self.runner,
            on_progress=self._pulse,
            on_welcome=on_welcome,
            on_error=on_error,
            on_dead_man=on_dead_man,
        )

        # This run's client order ids (new_order_id) start with a random prefix of its own, not
        # with anything kept on disk: a restart, with its journal or without, never reuses one.
        # Not from the config's rng, which a test or a replay may seed.
        self.order_id_prefix = secrets.token_hex(6)
        self._order_numbers = itertools.count(1)

        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False
        self._closed_event = asyncio.Event()
        self._shutdown_task: asyncio.Future[None] | None = None
        self._on_signal: Callable[[int], Any] | None = None
        self._signal_timeout = 10.0

    # --- public surface ------------------------------------------------------------------------

    @property
    def gate(self) -> TradingGate:
        """The TradingGate behind ``trading_state`` and ``check_order``."""
        return self.state.gate

    @property
    def trading_state(self) -> TradingState:
        return self.state.state

    @property
    def connected(self) -> bool:
        return self.connection.connected.is_set()

    @property
    def acked_seq(self) -> int:
        return self.writer.acked_seq

    @property
    def last_seq(self) -> int:
        """The highest seq handed out so far."""
        return self.writer.last_seq

    @property
    def error(self) -> BaseException | None:
        """Why the client stopped for good (Unauthorized, EngineReplaced,
        StageForbidsLive), if it did."""
        return self.connection.error

    @property
    def backlog(self) -> int:
        """Events emitted and not yet acked."""
        return self.writer.backlog

    @property
    def on_command(self) -> CommandHandler | None:
        return self.runner.handler

    @on_command.setter
    def on_command(self, handler: CommandHandler | None) -> None:
        self.runner.handler = handler

    @property
    def engine_id(self) -> int | None:
        return self.connection.engine_id

    @property
    def engine_name(self) -> str | None:
        return self.connection.engine_name

    @property
    def stage(self) -> Stage | None:
        """The engine's stage, as the control plane last said it (welcome, set_limits;
        docs/going-live.md)."""
        return self.state.stage

    @property
    def capital_ceiling(self) -> Decimal | None:
        """The most the engine may hold, gross, in its account currency: ``check_order`` refuses
        an order that would take the exposure above it (engine_sdk.ceiling). None when the
        engine's stage sets no ceiling."""
        return self.state.capital_ceiling

    @property
    def gross_exposure(self) -> Decimal:
        """The gross exposure the ceiling is measured on: the positions the engine emitted or
        passed to ``check_order``, at their latest known prices."""
        return self.state.capital.exposure()

    @property
    def desired_state(self) -> TradingState | None:
        return self.state.desired_state

    @property
    def limits_version(self) -> int | None:
        return self.state.limits_version

    @property
    def limits(self) -> list[dict[str, Any]]:
        return self.state.limits

    @property
    def enforces_limits(self) -> bool:
        """Whether this engine enforces pre-trade limits (``check_order``); see ``__init__``."""
        return self.runner.enforces_limits

    @property
    def pretrade(self) -> PreTradeLimits | None:
        """The pre-trade limits ``check_order`` enforces, or None before any were received."""
        return self.state.pretrade

    @property
    def heartbeat_interval_s(self) -> float:
        """The interval of the engine's heartbeats, as the latest welcome set it."""
        return self.connection.heartbeat_interval_s

    def on_state_change(self, callback: Callable[[StateChange], Any]) -> Callable[[], None]:
        """Call ``callback(change)`` after every change of the trading state; return a remover.

        ``change`` is a ``gate.StateChange``: ``old``, ``new``, ``reason`` (the command and who
        issued it, "pause ended", "dead-man: ..."), ``at`` and ``paused_until``. By then the change
        is handed to the state file's writer and its state event is queued. It runs on the thread
        that made the change (the client's event loop, or an engine thread whose ``check_order``
        noticed the end of a timed pause), in the order of the changes; keep it quick, and do not
        wait in it for a thread that calls ``check_order``. An exception in it is logged and
        ignored.
        """
        return self.state.add_listener(callback)

    def new_order_id(self) -> str:
        """A client_order_id no other order of this engine has had or will have: this run's
        random 48-bit prefix and a counter, such as ``"3f9c0a1b2d4e-17"``.

        The control plane refuses an id reused for another order, and a fill_id reused for
        another fill, with ``duplicate_id`` (docs/protocol.md, "Ids"). An engine that makes its
        own ids must keep them unique for ever itself, across restarts and a lost disk; a fill
        is best named by the broker's execution id, or by its order's id and a count.
        """
        # next() on itertools.count is atomic: ids stay unique across threads too.
        return f"{self.order_id_prefix}-{next(self._order_numbers)}"

    async def start(self) -> None:
        """Start the background tasks; returns at once (see ``wait_connected``)."""
        if self._tasks:
            raise EngineClientError("already started")
        self.connection.start()
        self.writer.start()
        self._tasks = [
            asyncio.create_task(self.connection.run(), name="engine-sdk-connection"),
            asyncio.create_task(self.runner.run(), name="engine-sdk-commands"),
            asyncio.create_task(self.connection.watch(), name="engine-sdk-housekeeping"),
        ]

    # A timeout argument reads better than asyncio.timeout() in an engine's startup code.
    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server has welcomed this engine; raise if the client stopped for good."""
        async with asyncio.timeout(timeout):
            stopped = asyncio.ensure_future(self.connection.stopped.wait())
            connected = asyncio.ensure_future(self.connection.connected.wait())
            try:
                await asyncio.wait({stopped, connected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                connected.cancel()
        if self.error is not None:
            raise self.error
        if not self.connected:
            raise EngineClientError("client is closed")

    def emit(self, event: Event) -> int:
        """Queue an event and return the seq given to it (any seq already on it is replaced).

        Raises BackpressureError when ``max_unacked_events`` are already waiting for the server,
        and ValueError naming the field when the event is outside the protocol's bounds
        (docs/protocol.md): the event then takes no seq and is not sent. Safe to call from any
        thread: seqs follow the order of the calls.
        """
        seq = self.writer.emit(event)
        if type(event) is PositionEvent:
            # The capital ceiling is measured on the positions the engine reports.
            self.state.capital.track_position(event.symbol, event.quantity, event.avg_price)
        return seq

    def declare_instrument(
        self,
        symbol: str,
        *,
        asset_class: AssetClass | None = None,
        multiplier: Decimal | int | None = None,
        currency: str | None = None,
        tick_size: Decimal | None = None,
        sector: str | None = None,
    ) -> int:
        """Tell the control plane what ``symbol`` is: its exposure, limits and P&L use the
        multiplier and convert the currency (at the rates an account event's ``fx_rates``
        reports). Declare before trading the symbol; a field left out is left as stored. A
        declaration that contradicts what is stored is refused by the server
        (``instrument_conflict``, docs/protocol.md). Returns the event's seq; raises ValueError
        naming a field outside the protocol's bounds, as ``emit`` does."""
        return self.emit(
            InstrumentEvent(
                ts=utc_now(),
                symbol=symbol,
                asset_class=asset_class,
                multiplier=Decimal(multiplier) if multiplier is not None else None,
                currency=currency,
                tick_size=tick_size,
                sector=sector,
            )
        )

    async def emit_wait(self, event: Event, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Like ``emit``, but wait for room instead of raising BackpressureError."""
        async with asyncio.timeout(timeout):
            while self.backlog >= self.config.max_unacked_events:
                await self._wait_progress()
        return self.emit(event)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server has acked every event emitted so far."""
        writer = self.writer
        # Seqs move up together if the journal is renumbered meanwhile; the shift follows them.
        target = writer.last_seq - writer.seq_shift
        async with asyncio.timeout(timeout):
            while writer.acked_seq < target + writer.seq_shift:
                if self.error is not None:
                    raise self.error
                if self._closed:
                    raise EngineClientError("client is closed")
                await self._wait_progress()

    def check_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        *,
        price: Decimal | int | None = None,
        reference_price: Decimal | int | None = None,
        sector: str | None = None,
        liquidating: bool = False,
    ) -> None:
        """Raise OrderRejected unless this new order is allowed now.

        First the trading-state gate, then (unless ``liquidating``) the pre-trade limits, which
        raise LimitRejected (a subclass) naming the limit. An order that passes is counted in the
        limits' rate and duplicate windows, so call this once per order actually sent.

        ``price`` is the order's limit price (None for a market order), ``reference_price`` the
        symbol's last or reference price, ``sector`` the sector sector-scoped limits match.
        ``liquidating`` is for the orders a kill or flatten command itself sends to close
        positions: HALTED lets those through (and only those), and limits do not stop them.
        Safe to call from any thread.
        """
        self.state.check_order(
            symbol,
            side,
            quantity,
            current_position,
            price=price,
            reference_price=reference_price,
            sector=sector,
            liquidating=liquidating,
        )

    async def close(self, *, flush_timeout: float | None = None) -> None:
        """Stop; optionally wait up to ``flush_timeout`` s for the server to ack everything.

        Whatever is not acked stays in the journal and is sent by the next client on it.
        """
        if self._closed:
            return
        if flush_timeout and self.connected:
            with contextlib.suppress(TimeoutError, EngineClientError):
                await self.flush(flush_timeout)
        self.connection.closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self.writer.stop()
        # Whatever was emitted while shutting down (a last state event, say) is kept too.
        self.writer.close()
        # Every state change is on disk once close returns: the next client on this journal
        # reads it. Changes from now on are written before they return.
        self.state.sync_writes = True
        await self.state.written()
        self._closed = True
        self.state.reporting = False
        self.connection.connected.clear()
        self.connection.stopped.set()
        self._closed_event.set()
        _forget_signal_client(self)
        self._pulse()

    @property
    def stopping(self) -> bool:
        """True once ``shutdown`` has begun: ``check_order`` refuses every new order."""
        return self.state.stopping is not None

    async def wait_closed(self) -> None:
        """Wait until the client is closed (by ``close``, or ``shutdown`` after a signal)."""
        await self._closed_event.wait()

    async def shutdown(self, reason: str = "shutdown", *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop on purpose, so the control plane shows the engine stopped, not down.

        In order: new orders are refused (``check_order``); the working orders are cancelled
        through the engine's command handler, called with a local ``cancel_all`` command (not
        one the server sent: it gets no ``command_result``); the trading state is saved; a
        final ``state`` event says what was done; once the server has acked everything (at most
        ``timeout`` s per step), a last ``heartbeat`` with ``stopping`` tells it the engine
        stops; then the client closes (close code 1000). Called twice, it stops once.
        """
        if self._shutdown_task is None:
            self._begin_shutdown(reason, timeout)
        assert self._shutdown_task is not None
        await asyncio.shield(self._shutdown_task)

    def _begin_shutdown(self, reason: str, timeout: float) -> None:
        # New orders are refused from this moment, not from when the task first runs.
        self.state.stopping = reason[:200]
        self._shutdown_task = asyncio.ensure_future(self._shut_down(reason, timeout))

    def install_signal_handlers(
        self,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
        *,
        on_signal: Callable[[int], Any] | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Opt in: on SIGTERM or SIGINT, ``shutdown`` (once) instead of dying with orders working.

        For engines that own their process; one embedded in another program leaves its
        signals alone and calls ``shutdown`` itself. Several clients of one event loop may
        install them: a signal shuts them all down. ``on_signal(signum)`` is then called too,
        for the engine to stop its own loop; ``await wait_closed()`` waits for the end. Unix
        only (asyncio's ``add_signal_handler``); removed when the last such client closes.
        """
        loop = asyncio.get_running_loop()
        self._on_signal = on_signal
        self._signal_timeout = timeout
        clients = _signal_clients.setdefault(loop, [])
        if self not in clients:
            clients.append(self)
        installed = _signal_numbers.setdefault(loop, set())
        for signum in signals:
            if signum not in installed:
                loop.add_signal_handler(signum, _deliver_signal, loop, signum)
                installed.add(signum)

    def _signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._shutdown_task is None and not self._closed:
            log.warning("engine: %s received; shutting down", name)
            self._begin_shutdown(name, self._signal_timeout)
        if self._on_signal is not None:
            try:
                self._on_signal(signum)
            except Exception:
                log.exception("engine: on_signal callback failed")

    async def _shut_down(self, reason: str, timeout: float) -> None:  # noqa: ASYNC109
        if self._closed:
            return
        log.warning("engine shutting down (%s): new orders refused", reason)
        cancelled = await self.runner.cancel_working(timeout, self.state.stopping)
        # The trading state as it is, on disk before anything else can go wrong.
        self.state.save_current()
        await self.state.written()
        summary = f"shutdown ({reason}): {cancelled}; trading state {self.trading_state}"
        final = protocol.StateEvent(
            ts=utc_now(), trading_state=self.trading_state, reason=summary[:1024]
        )
        with contextlib.suppress(EngineClientError):
            self.emit(final)
        await self._say_goodbye(timeout)
        await self.close()
        log.info("engine stopped: %s", summary)

    async def _say_goodbye(self, timeout: float) -> None:  # noqa: ASYNC109
        """Once everything is acked, the last heartbeat says the engine stops on purpose."""
        if not self.connected:
            log.warning("engine: not connected; the control plane will see it go silent")
            return
        try:
            await self.flush(timeout)
            await self.connection.say_stopping()
        except (TimeoutError, EngineClientError, ConnectionClosed) as exc:
            log.warning("engine: could not tell the control plane it stops: %r", exc)

    async def __aenter__(self) -> EngineClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- wiring --------------------------------------------------------------------------------

    def _events_written(self) -> None:
        self.connection.events_written()

    async def _deliver_result(self, result: protocol.CommandResult) -> None:
        await self.connection.deliver_result(result)

    def _pulse(self) -> None:
        # Wakes whoever waits for progress (flush, emit_wait): an ack, a connection, a stop.
        self._progress.set()
        self._progress = asyncio.Event()

    async def _wait_progress(self) -> None:
        await self._progress.wait()


# The clients that installed signal handlers, per event loop, and the signals handled there.
_signal_clients: dict[asyncio.AbstractEventLoop, list[EngineClient]] = {}
_signal_numbers: dict[asyncio.AbstractEventLoop, set[int]] = {}


def _deliver_signal(loop: asyncio.AbstractEventLoop, signum: int) -> None:
    for client in list(_signal_clients.get(loop, ())):
        client._signalled(signum)


def _forget_signal_client(client: EngineClient) -> None:
    for loop, clients in list(_signal_clients.items()):
        if client not in clients:
            continue
        clients.remove(client)
        if not clients:
            # The last one: the process's signals get their default behaviour back.
            for signum in _signal_numbers.pop(loop, set()):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            del _signal_clients[loop]
