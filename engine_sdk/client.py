"""The engine side of protocol v1: a reconnecting WebSocket client with a local journal.

An engine creates one EngineClient, calls ``await start()``, then ``emit()``s events as things
happen. ``emit`` is cheap and never touches the network: it assigns the next seq, encodes the
event and queues it. A writer task appends queued events to the journal in batches (one fsync
per batch); only journaled events are sent, so a seq the server has seen can never be handed out
again after a crash. The server's ``ack`` tells which events may be forgotten; everything not yet
acked is sent again after a reconnect.

Everything here must run on one asyncio event loop; ``emit`` is not thread-safe (from another
thread, use ``loop.call_soon_threadsafe(client.emit, event)``).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import inspect
import itertools
import logging
import os
import random
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine_sdk import __version__, protocol
from engine_sdk.gate import OrderRejected, StateChange, TradingGate
from engine_sdk.journal import CommandStore, Journal, _write_atomically, trim_acked
from engine_sdk.limits import LimitRejected, PreTradeLimits
from engine_sdk.protocol import (
    Command,
    CommandResult,
    CommandResultStatus,
    Event,
    Mode,
    Side,
    TradingState,
    Welcome,
    utc_now,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "BackpressureError",
    "CommandHandler",
    "CommandOutcome",
    "EngineClient",
    "EngineClientError",
    "EngineReplaced",
    "HelloInfo",
    "LimitRejected",
    "OrderRejected",
    "Unauthorized",
]

log = logging.getLogger(__name__)

# One event may not take more than this once encoded, so a frame of at least one event always fits.
MAX_EVENT_BYTES: Final = 256 * 1024
_FRAME_HEAD: Final = b'{"type":"events","events":['
_FRAME_TAIL: Final = b"]}"
_FRAME_BUDGET: Final = protocol.MAX_FRAME_BYTES - len(_FRAME_HEAD) - len(_FRAME_TAIL)
STATE_FILE: Final = "state.json"
LIMITS_FILE: Final = "limits.json"


class EngineClientError(Exception):
    pass


class Unauthorized(EngineClientError):
    """The server refused the token (close code 4401 or HTTP 401); retrying would not help."""


class EngineReplaced(EngineClientError):
    """Another connection with this engine's token took over (close code 4409).

    Two processes are running as the same engine; they would hand out the same seqs, so this one
    stops rather than fight for the connection.
    """


class _ServerTrouble(EngineClientError):
    """The server could not store what it was sent; reconnect (with backoff) and resend."""


class BackpressureError(EngineClientError):
    """Too many events are waiting for the server; use ``emit_wait`` to wait for room instead."""


# One thread writes the trading state of every client in the process, in the order the writes
# are handed to it, so each client's writes keep their order. A thread of each client's own
# cost far more when a process runs many clients: after every system call of every write, the
# threads and the event loop woke each other for the GIL. bench/sdk_kill.py (100 clients, a bare
# local server): the last client of a round halted 18 to 21 ms after the kill at the median
# with a thread each, 10 to 13 ms with this one.
_state_writer_lock = threading.Lock()
_state_writer: tuple[int, ThreadPoolExecutor] | None = None


def _shared_state_writer() -> ThreadPoolExecutor:
    global _state_writer
    with _state_writer_lock:
        if _state_writer is None or _state_writer[0] != os.getpid():
            # A forked child has no copy of its parent's thread: it starts one of its own.
            _state_writer = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-state"),
            )
        return _state_writer[1]


@dataclass(frozen=True)
class HelloInfo:
    engine_build: str
    config_hash: str
    mode: Mode
    broker: str
    account: str


@dataclass
class CommandOutcome:
    """What the engine's command handler did.

    ``trading_state``, when set, becomes the client's trading state (the engine decides what a
    command does to it). For PAUSED, ``paused_until`` sets the automatic resume; when it is left
    out and the command is a pause with a ``duration`` (seconds) parameter, that is used.
    """

    status: CommandResultStatus
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    trading_state: TradingState | None = None
    paused_until: datetime | None = None


CommandHandler = Callable[[Command], Awaitable[CommandOutcome]]


class _PersistedState(msgspec.Struct, kw_only=True):
    trading_state: TradingState = "ACTIVE"
    paused_until: datetime | None = None
    dead_man: bool = False
    # When the newest kill this engine obeyed was issued: a resume issued before it is stale.
    halted_at: datetime | None = None


class _CommandProbe(msgspec.Struct, forbid_unknown_fields=False):
    type: Any = None
    command_id: uuid.UUID | None = None
    kind: Any = None


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
        batch_max_events: int = 1000,
        batch_interval_s: float = 0.02,
        heartbeat_interval_s: float = 5.0,
        dead_man_after_s: float = 15.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        max_unacked_events: int = 200_000,
        welcome_timeout_s: float = 10.0,
        fsync: bool = True,
        rng: random.Random | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not 1 <= batch_max_events <= protocol.MAX_EVENTS_PER_FRAME:
            raise ValueError(f"batch_max_events must be 1..{protocol.MAX_EVENTS_PER_FRAME}")
        self.url = url
        self._token = token
        self.hello = hello
        self.on_command = on_command
        self.on_dead_man = on_dead_man
        self.on_welcome = on_welcome
        self.on_error = on_error
        self.batch_max_events = batch_max_events
        self.batch_interval_s = batch_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.dead_man_after_s = dead_man_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.max_unacked_events = max_unacked_events
        self.welcome_timeout_s = welcome_timeout_s
        self._rng = rng or random.Random()
        self._connect_kwargs = dict(connect_kwargs or {})

        self.journal_dir = Path(journal_dir)
        self._journal = Journal(self.journal_dir, fsync=fsync)
        self._commands = CommandStore(self.journal_dir, fsync=fsync)
        self._fsync = fsync

        self._next_seq = self._journal.last_seq + 1
        self._acked_seq = self._journal.acked_seq
        # This run's client order ids (new_order_id) start with a random prefix of its own, not
        # with anything kept on disk: a restart, with its journal or without, never reuses one.
        # Not from ``rng``, which a test or a replay may seed.
        self.order_id_prefix = secrets.token_hex(6)
        self._order_numbers = itertools.count(1)
        # Assigned a seq but not yet in the journal; only the writer task empties it.
        self._pending: list[tuple[int, bytes]] = []
        # Journaled and not yet acked, in seq order (seqs are contiguous); entries before
        # _head are acked and trimmed lazily.
        self._unacked: list[tuple[int, bytes]] = list(self._journal.unacked)
        self._head = 0
        # Highest seq sent on the current connection.
        self._sent_seq = 0
        # How far renumbering has moved seqs up (see _renumber_after).
        self._seq_shift = 0

        # The trading state is written to disk in order by the process's state writer thread
        # (_save_state); once close has begun, on the caller's thread.
        self._state_saved: Future[None] | None = None
        self._state_sync = False
        persisted = self._load_state()
        self._dead_man_paused = persisted.dead_man
        self._halted_at = persisted.halted_at
        self.gate = TradingGate(
            persisted.trading_state,
            paused_until=persisted.paused_until,
            on_change=self._on_state_change,
        )

        self.engine_id: int | None = None
        self.engine_name: str | None = None
        self.desired_state: TradingState | None = None
        self.limits_version: int | None = None
        self.limits: list[dict[str, Any]] = []
        # The pre-trade limits enforced by check_order: the last ones received, kept on disk so
        # that a restarted engine enforces them before it reaches the server.
        self.pretrade: PreTradeLimits | None = None
        # Why the limits are unknown (limits.json unreadable): new orders are refused until the
        # server sends limits.
        self._limits_unknown: str | None = None
        self._saved_limits: bytes | None = None
        self._load_limits()

        self._ws: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake_writer = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self._progress = asyncio.Event()
        self._journal_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._command_queue: asyncio.Queue[Command] = asyncio.Queue()
        self._commands_in_flight: set[uuid.UUID] = set()
        self._unsent_results: list[CommandResult] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._closed_event = asyncio.Event()
        # Why the engine is shutting down on purpose (shutdown), once it is: no new orders.
        self._stopping: str | None = None
        self._shutdown_task: asyncio.Future[None] | None = None
        self._on_signal: Callable[[int], Any] | None = None
        self._signal_timeout = 10.0
        self._error: BaseException | None = None
        self._last_rx = 0.0
        self._dead_man_tripped = False
        self._welcomed = False

    # --- public surface ------------------------------------------------------------------------

    @property
    def trading_state(self) -> TradingState:
        return self.gate.state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    @property
    def last_seq(self) -> int:
        """The highest seq handed out so far."""
        return self._next_seq - 1

    @property
    def error(self) -> BaseException | None:
        """Why the client stopped for good (Unauthorized, EngineReplaced), if it did."""
        return self._error

    @property
    def backlog(self) -> int:
        """Events emitted and not yet acked."""
        return len(self._pending) + len(self._unacked) - self._head

    def new_order_id(self) -> str:
        """A client_order_id no other order of this engine has had or will have: this run's
        random 48-bit prefix and a counter, such as ``"3f9c0a1b2d4e-17"``.

        The control plane refuses an id reused for another order, and a fill_id reused for
        another fill, with ``duplicate_id`` (docs/protocol.md, "Ids"). An engine that makes its
        own ids must keep them unique for ever itself, across restarts and a lost disk; a fill
        is best named by the broker's execution id, or by its order's id and a count.
        """
        return f"{self.order_id_prefix}-{next(self._order_numbers)}"

    async def start(self) -> None:
        """Start the background tasks; returns at once (see ``wait_connected``)."""
        if self._tasks:
            raise EngineClientError("already started")
        loop = asyncio.get_running_loop()
        self._last_rx = loop.time()
        self._writer_task = asyncio.create_task(self._writer(), name="engine-sdk-writer")
        self._tasks = [
            asyncio.create_task(self._connection_loop(), name="engine-sdk-connection"),
            asyncio.create_task(self._command_worker(), name="engine-sdk-commands"),
            asyncio.create_task(self._housekeeping(), name="engine-sdk-housekeeping"),
        ]
        if self._pending:
            self._wake_writer.set()

    # A timeout argument reads better than asyncio.timeout() in an engine's startup code.
    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server has welcomed this engine; raise if the client stopped for good."""
        async with asyncio.timeout(timeout):
            stopped = asyncio.ensure_future(self._stopped.wait())
            connected = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({stopped, connected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                connected.cancel()
        if self._error is not None:
            raise self._error
        if not self._connected.is_set():
            raise EngineClientError("client is closed")

    def emit(self, event: Event) -> int:
        """Queue an event and return the seq given to it (any seq already on it is replaced).

        Raises BackpressureError when ``max_unacked_events`` are already waiting for the server,
        and ValueError naming the field when the event is outside the protocol's bounds
        (docs/protocol.md): the event then takes no seq and is not sent.
        """
        if self._closed:
            raise EngineClientError("client is closed")
        if self.backlog >= self.max_unacked_events:
            raise BackpressureError(
                f"{self.backlog} events are waiting for the server (max {self.max_unacked_events})"
            )
        seq = self._next_seq
        raw = protocol.encode_event(msgspec.structs.replace(event, seq=seq))
        if len(raw) > MAX_EVENT_BYTES:
            raise ValueError(f"event is {len(raw)} bytes encoded, at most {MAX_EVENT_BYTES}")
        # Checked as the server will decode it, before it takes a seq or reaches the journal: an
        # event the server would refuse is refused here, with the field, where it was made.
        protocol.check_encoded_event(raw)
        self._next_seq = seq + 1
        pending = self._pending
        pending.append((seq, raw))
        # Waking the writer once per batch, not per event, keeps emit cheap.
        if len(pending) == 1 or len(pending) >= self.batch_max_events:
            self._wake_writer.set()
        return seq

    async def emit_wait(self, event: Event, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Like ``emit``, but wait for room instead of raising BackpressureError."""
        async with asyncio.timeout(timeout):
            while self.backlog >= self.max_unacked_events:
                await self._wait_progress()
        return self.emit(event)

    async def flush(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the server has acked every event emitted so far."""
        # Seqs move up together if the journal is renumbered meanwhile; the shift follows them.
        target = self.last_seq - self._seq_shift
        async with asyncio.timeout(timeout):
            while self._acked_seq < target + self._seq_shift:
                if self._error is not None:
                    raise self._error
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
        """
        if self._stopping is not None and not liquidating:
            raise OrderRejected(f"engine shutting down ({self._stopping}): no new orders")
        self.gate.check_order(symbol, side, quantity, current_position, liquidating=liquidating)
        if liquidating:
            return
        if self._limits_unknown is not None:
            raise LimitRejected(self._limits_unknown, limit_id=None, limit_kind="limits_unknown")
        pretrade = self.pretrade
        if pretrade is None:
            return
        now = time.monotonic()
        pretrade.check(symbol, side, quantity, price, reference_price, sector, now)
        pretrade.record(symbol, side, quantity, price, sector, now)

    async def close(self, *, flush_timeout: float | None = None) -> None:
        """Stop; optionally wait up to ``flush_timeout`` s for the server to ack everything.

        Whatever is not acked stays in the journal and is sent by the next client on it.
        """
        if self._closed:
            return
        if flush_timeout and self._connected.is_set():
            with contextlib.suppress(TimeoutError, EngineClientError):
                await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._writer_task is not None:
            # The writer is stopped by a flag rather than cancelled: a cancelled task would let
            # go of the journal while its thread is still writing.
            self._wake_writer.set()
            try:
                await self._writer_task
            except Exception:
                log.exception("engine journal writer failed")
        # Whatever was emitted while shutting down (a last state event, say) is kept too.
        if self._pending or self._acked_seq > self._journal.acked_seq:
            self._write_batch(self._take_pending(), self._acked_seq)
        self._journal.close()
        # Every state change is on disk once close returns: the next client on this journal
        # reads it. Changes from now on are written before they return.
        self._state_sync = True
        await self._state_written()
        self._closed = True
        self._connected.clear()
        self._stopped.set()
        self._closed_event.set()
        _forget_signal_client(self)
        self._pulse()

    @property
    def stopping(self) -> bool:
        """True once ``shutdown`` has begun: ``check_order`` refuses every new order."""
        return self._stopping is not None

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
        self._stopping = reason[:200]
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
        cancelled = await self._cancel_working(timeout)
        # The trading state as it is, on disk before anything else can go wrong.
        self._save_state(self.gate.state, self.gate.paused_until)
        await self._state_written()
        summary = f"shutdown ({reason}): {cancelled}; trading state {self.gate.state}"
        with contextlib.suppress(BackpressureError, EngineClientError):
            self.emit(
                protocol.StateEvent(
                    ts=utc_now(), trading_state=self.gate.state, reason=summary[:1024]
                )
            )
        await self._say_goodbye(timeout)
        await self.close()
        log.info("engine stopped: %s", summary)

    async def _cancel_working(self, timeout: float) -> str:  # noqa: ASYNC109
        """Cancel the working orders through the engine's handler; say what happened."""
        handler = self.on_command
        if handler is None:
            return "no engine command handler: working orders left as they are"
        command = Command(
            command_id=uuid.uuid4(), kind="cancel_all", issued_by="engine shutdown",
            reason=f"engine shutdown ({self._stopping})", issued_at=utc_now(),
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                outcome = await handler(command)
        except TimeoutError:
            return f"cancelling working orders did not finish within {timeout:g} s"
        except Exception as exc:
            log.exception("engine: cancelling working orders at shutdown failed")
            return f"cancelling working orders failed: {exc!r}"
        cancelled, working = outcome.data.get("cancelled"), outcome.data.get("working")
        if isinstance(cancelled, list) and isinstance(working, list):
            said = f"{len(cancelled)} working orders cancelled, {len(working)} still working"
            return f"{said} ({', '.join(map(str, working[:20]))})" if working else said
        return f"cancel_all {outcome.status}" + (f": {outcome.detail}" if outcome.detail else "")

    async def _say_goodbye(self, timeout: float) -> None:  # noqa: ASYNC109
        """Once everything is acked, the last heartbeat says the engine stops on purpose."""
        if not self._connected.is_set():
            log.warning("engine: not connected; the control plane will see it go silent")
            return
        try:
            await self.flush(timeout)
            ws = self._ws
            if ws is None:
                return
            frame = protocol.Heartbeat(
                ts=utc_now(),
                trading_state=self.gate.state,
                last_seq=self.last_seq,
                limits_version=self.pretrade.version if self.pretrade is not None else None,
                stopping=True,
            )
            await self._send(ws, protocol.encode(frame))
        except (TimeoutError, EngineClientError, ConnectionClosed) as exc:
            log.warning("engine: could not tell the control plane it stops: %r", exc)

    async def __aenter__(self) -> EngineClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- journal writer ------------------------------------------------------------------------

    def _take_pending(self) -> list[tuple[int, bytes]]:
        batch, self._pending = self._pending, []
        return batch

    def _write_batch(self, batch: list[tuple[int, bytes]], ack: int) -> None:
        self._journal.append(batch, ack=ack if ack > self._journal.acked_seq else None)

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            # Linger a little so that a burst becomes one write and one fsync.
            deadline = loop.time() + self.batch_interval_s
            while (
                0 < len(self._pending) < self.batch_max_events
                and not self._closing
                and (remaining := deadline - loop.time()) > 0
            ):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake_writer.wait()
                self._wake_writer.clear()
            async with self._journal_lock:
                batch = self._take_pending()
                try:
                    await asyncio.to_thread(self._write_batch, batch, self._acked_seq)
                except OSError:
                    log.exception("engine journal: write failed; will retry")
                    self._pending[:0] = batch
                    if not self._closing:
                        await asyncio.sleep(1.0)
                        self._wake_writer.set()
                        continue
                    return
                if batch:
                    self._unacked.extend(batch)
                    self._wake_sender.set()
            if self._closing and not self._pending:
                return

    # --- connection ----------------------------------------------------------------------------

    def _backoff_delay(self, attempt: int) -> float:
        # Full jitter: engines that lost the server together do not come back together.
        cap = min(self.backoff_max_s, self.backoff_initial_s * (2**attempt))
        return self._rng.uniform(0, cap)

    async def _connection_loop(self) -> None:
        attempt = 0
        while not self._closing:
            self._welcomed = False
            trouble = False
            try:
                await self._connect_once()
            except Unauthorized as exc:
                self._stop_for_good(exc)
                return
            except EngineReplaced as exc:
                self._stop_for_good(exc)
                return
            except asyncio.CancelledError:
                raise
            except _ServerTrouble as exc:
                trouble = True
                log.warning("engine connection to %s: %s", self.url, exc)
            except Exception as exc:
                log.warning("engine connection to %s failed: %s", self.url, exc)
            finally:
                self._connected.clear()
                self._ws = None
            # A server that keeps failing to store does not count as a good connection: the
            # backoff keeps growing instead of hammering it.
            if self._welcomed and not trouble:
                attempt = 0
            delay = self._backoff_delay(attempt)
            attempt += 1
            log.info("engine reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    def _stop_for_good(self, exc: EngineClientError) -> None:
        log.error("engine client stopped: %s", exc)
        self._error = exc
        self._stopped.set()
        self._pulse()

    async def _connect_once(self) -> None:
        """One connection's life, from the handshake to its end."""
        kwargs: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {self._token}"},
            "max_size": 16 * 1024 * 1024,
            "open_timeout": self.welcome_timeout_s,
            # Closing must not hang on a server that is gone; the socket is dropped either way.
            "close_timeout": 2.0,
            "user_agent_header": f"engine-sdk/{__version__} websockets/{websockets.__version__}",
        }
        kwargs.update(self._connect_kwargs)
        try:
            ws = await connect(self.url, **kwargs)
        except InvalidStatus as exc:
            if exc.response.status_code == 401:
                raise Unauthorized(
                    f"server refused the engine token (HTTP 401) at {self.url}"
                ) from exc
            raise
        self._ws = ws
        try:
            await self._session(ws)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            if code == protocol.CLOSE_UNAUTHORIZED:
                raise Unauthorized(f"server refused the engine token: {reason or code}") from exc
            if code == protocol.CLOSE_REPLACED:
                raise EngineReplaced(
                    f"another connection took over this engine: {reason or code}"
                ) from exc
            if code == protocol.CLOSE_RATE_LIMITED:
                # The backoff keeps growing: reconnecting at once would flood it again.
                raise _ServerTrouble(f"server closed: frames over its rate ({code})") from exc
            raise
        finally:
            await ws.close()

    async def _session(self, ws: ClientConnection) -> None:
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            engine_build=self.hello.engine_build,
            config_hash=self.hello.config_hash,
            mode=self.hello.mode,
            broker=self.hello.broker,
            account=self.hello.account,
            trading_state=self.gate.state,
            last_seq=self.last_seq,
            limits_version=self.pretrade.version if self.pretrade is not None else None,
            sdk_version=__version__,
        )
        await ws.send(protocol.encode(hello), text=True)
        async with asyncio.timeout(self.welcome_timeout_s):
            while True:
                frame = self._decode(await ws.recv())
                if isinstance(frame, Welcome):
                    break
                if isinstance(frame, protocol.Error):
                    self._report_error(frame)
                    raise EngineClientError(f"server refused hello: {frame.code}: {frame.message}")
        await self._on_welcome(frame)
        self._welcomed = True
        self._connected.set()
        self._pulse()
        log.info("engine connected as %s (id %s)", frame.engine_name, frame.engine_id)

        # Results the server has not seen yet go first, then the events it lacks. A command the
        # server sends again is answered from the command store below instead.
        resent = {command.command_id for command in frame.commands}
        unsent, self._unsent_results = self._unsent_results, []
        for result in unsent:
            if result.command_id not in resent:
                await self._send(ws, protocol.encode(result))
        for command in frame.commands:
            await self._receive_command(ws, command)

        tasks = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._sender(ws)),
            asyncio.create_task(self._heartbeat(ws)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc

    async def _on_welcome(self, welcome: Welcome) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        self._dead_man_tripped = False
        self.engine_id = welcome.engine_id
        self.engine_name = welcome.engine_name
        self.desired_state = welcome.desired_state
        self.limits_version = welcome.limits_version
        self.limits = list(welcome.limits)
        # The server's limits replace whatever this engine had, older version or not.
        self._enforce_limits(PreTradeLimits(welcome.limits_version, self.limits), self.limits)
        self.heartbeat_interval_s = welcome.heartbeat_interval_s
        if welcome.last_seq > self.last_seq:
            await self._renumber_after(welcome.last_seq)
        self._on_ack(welcome.last_seq)
        self._sent_seq = welcome.last_seq
        self._wake_sender.set()
        if self._dead_man_paused and welcome.desired_state == "ACTIVE":
            self._lift_dead_man_pause()
        if welcome.desired_state == "HALTED" and self.gate.state != "HALTED":
            # Latched on the server: stop at once; the kill that comes with the welcome then
            # cancels and flattens.
            self._dead_man_paused = False
            self.gate.halt(reason="the control plane holds this engine HALTED")
        if welcome.last_seq < self._acked_seq:
            log.error(
                "server reports seq %d but acked %d before: it lost events this engine can no "
                "longer resend",
                welcome.last_seq,
                self._acked_seq,
            )
        if self.on_welcome is not None:
            try:
                await _call(self.on_welcome, welcome)
            except Exception:
                log.exception("engine: on_welcome callback failed")

    async def _renumber_after(self, server_seq: int) -> None:
        # The server holds seqs above anything this journal remembers: the journal was lost or
        # reset. Our unacked events would be taken for replays of the server's and dropped, so
        # they move above the server's seq.
        log.warning(
            "server has seq %d but the journal only reached %d; renumbering %d unacked events",
            server_seq,
            self.last_seq,
            self.backlog,
        )
        async with self._journal_lock:
            self._write_batch(self._take_pending(), self._acked_seq)
            if len(self._journal):
                self._seq_shift += server_seq + 1 - self._journal.unacked[0][0]
            renumbered = self._journal.renumber(server_seq + 1)
            self._unacked = list(renumbered)
            self._head = 0
            self._next_seq = self._journal.last_seq + 1

    async def _send(self, ws: ClientConnection, data: bytes) -> None:
        async with self._send_lock:
            await ws.send(data, text=True)

    def _decode(self, message: str | bytes) -> protocol.ServerFrame | None:
        try:
            return protocol.decode_server_frame(message)
        except msgspec.MsgspecError as exc:
            log.warning("engine: ignoring a server frame it cannot read: %s", exc)
            return None

    async def _reader(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        async for message in ws:
            self._last_rx = loop.time()
            if self._dead_man_tripped:
                self._dead_man_tripped = False
                if self._dead_man_paused and self.desired_state == "ACTIVE":
                    self._lift_dead_man_pause()
            try:
                frame = protocol.decode_server_frame(message)
            except msgspec.MsgspecError as exc:
                await self._unreadable_frame(ws, message, exc)
                continue
            if isinstance(frame, protocol.Ack):
                self._on_ack(frame.seq)
            elif isinstance(frame, Command):
                await self._receive_command(ws, frame)
            elif isinstance(frame, protocol.Error):
                self._report_error(frame)
                if frame.code == "internal_error":
                    # Nothing in that frame was acked and this connection will not retry it;
                    # a new connection replays from the server's last_seq.
                    raise _ServerTrouble(f"server could not store events: {frame.message}")
            elif isinstance(frame, Welcome):
                log.warning("engine: unexpected welcome in the middle of a session")

    async def _unreadable_frame(
        self, ws: ClientConnection, message: str | bytes, exc: Exception
    ) -> None:
        # A command this SDK cannot read (a kind added later, say) still gets an answer, or it
        # would be delivered again forever.
        try:
            probe = msgspec.json.decode(message, type=_CommandProbe)
        except msgspec.MsgspecError:
            probe = None
        if probe is None or probe.type != "command" or probe.command_id is None:
            log.warning("engine: ignoring a server frame it cannot read: %s", exc)
            return
        await self._send(ws, protocol.encode(protocol.CommandAck(command_id=probe.command_id)))
        result = CommandResult(
            command_id=probe.command_id,
            status="failed",
            detail=f"command not understood by this engine: {exc}",
            trading_state=self.gate.state,
        )
        await self._send(ws, protocol.encode(result))

    def _report_error(self, error: protocol.Error) -> None:
        log.warning(
            "server error %s: %s (field %s, seq %s)",
            error.code,
            error.message,
            error.field,
            error.seq,
        )
        if self.on_error is not None:
            try:
                self.on_error(error)
            except Exception:
                log.exception("engine: on_error callback failed")

    def _on_ack(self, seq: int) -> None:
        seq = min(seq, self.last_seq)
        if seq <= self._acked_seq:
            return
        self._acked_seq = seq
        self._head = trim_acked(self._unacked, self._head, seq)
        # The ack marker rides along with the next batch; a lost marker only costs a resend.
        self._wake_writer.set()
        self._pulse()

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            while True:
                frame, last = self._next_frame()
                if frame is None:
                    break
                await self._send(ws, frame)
                self._sent_seq = last

    def _next_frame(self) -> tuple[bytes | None, int]:
        unacked = self._unacked
        start = bisect.bisect_right(unacked, self._sent_seq, lo=self._head, key=_seq_of)
        if start >= len(unacked):
            return None, 0
        end = min(len(unacked), start + self.batch_max_events)
        raws: list[bytes] = []
        size = 0
        for i in range(start, end):
            raw = unacked[i][1]
            if raws and size + len(raw) + 1 > _FRAME_BUDGET:
                end = i
                break
            raws.append(raw)
            size += len(raw) + 1
        return _FRAME_HEAD + b",".join(raws) + _FRAME_TAIL, unacked[end - 1][0]

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            frame = protocol.Heartbeat(
                ts=utc_now(),
                trading_state=self.gate.state,
                last_seq=self.last_seq,
                limits_version=self.pretrade.version if self.pretrade is not None else None,
            )
            await self._send(ws, protocol.encode(frame))

    # --- commands ------------------------------------------------------------------------------

    async def _receive_command(self, ws: ClientConnection, command: Command) -> None:
        ack = protocol.encode(protocol.CommandAck(command_id=command.command_id))
        if command.command_id in self._commands_in_flight:
            await self._send(ws, ack)
            return
        done = self._commands.result(command.command_id)
        if done is not None:
            # Handled before (perhaps before a restart); the server may have missed the result.
            await self._send(ws, ack)
            await self._send(ws, protocol.encode(done))
            return
        if command.kind == "kill" and not self._expired(command):
            # A kill stops new orders before it is even acknowledged: no order passes the gate
            # once the server has the ack, and a restart after it comes back HALTED.
            # Cancelling and flattening follow in the handler.
            self._halt(command)
            await self._state_written()
        await self._send(ws, ack)
        self._commands_in_flight.add(command.command_id)
        self._command_queue.put_nowait(command)

    @staticmethod
    def _expired(command: Command) -> bool:
        return command.expires_at is not None and utc_now() >= command.expires_at

    def _halt(self, command: Command) -> None:
        if self._halted_at is None or command.issued_at > self._halted_at:
            self._halted_at = command.issued_at
        self._dead_man_paused = False
        reason = f"kill by {command.issued_by}: {command.reason}".rstrip(": ")
        if not self.gate.halt(reason=reason[:1024]):
            self._save_state(self.gate.state, self.gate.paused_until)

    def _refuse_resume(self, command: Command) -> str | None:
        """Why a resume may not lift a kill, or None. Checked here, whatever the handler says."""
        if command.kind != "resume" or self.gate.state != "HALTED":
            return None
        if self._halted_at is not None and command.issued_at < self._halted_at:
            return "stale resume: issued before the kill that halted this engine"
        if not command.params.get("approved_by"):
            return "a resume out of HALTED needs a second person's approval (approved_by)"
        return None

    async def _command_worker(self) -> None:
        # One at a time, in arrival order: a pause followed by a resume must end up resumed.
        while True:
            command = await self._command_queue.get()
            try:
                result = await self._run_command(command)
            except Exception:
                log.exception("engine: command %s could not be completed", command.command_id)
                self._commands_in_flight.discard(command.command_id)
                continue
            try:
                # Shielded: close cancels this worker, and a record still waiting for a thread
                # would be dropped with it; a restart would then handle the command again.
                await asyncio.shield(asyncio.to_thread(self._commands.record, result))
            except OSError:
                # Still answer: a command handled twice after a restart beats one never answered.
                log.exception("engine: could not record command %s", command.command_id)
            self._commands_in_flight.discard(command.command_id)
            await self._deliver_result(result)

    async def _run_command(self, command: Command) -> CommandResult:
        refusal = self._refuse_resume(command) or self._refuse_limits(command)
        if self._expired(command):
            outcome = CommandOutcome(status="failed", detail="expired before it was handled")
        elif refusal is not None:
            log.warning("engine: refused %s %s: %s", command.kind, command.command_id, refusal)
            outcome = CommandOutcome(status="failed", detail=refusal)
        else:
            handler = self.on_command or self._default_command_handler
            try:
                outcome = await handler(command)
            except Exception as exc:
                log.exception("engine: command handler failed on %s", command.kind)
                outcome = CommandOutcome(status="failed", detail=f"handler error: {exc!r}")
        if command.kind == "set_limits" and outcome.status != "failed":
            version, note = self._apply_limits(command.params)
            detail = "; ".join(text for text in (outcome.detail, note) if text)
            data = {**outcome.data, "limits_version": version}
            outcome = dataclasses.replace(outcome, detail=detail, data=data)
        if outcome.trading_state is not None:
            until = outcome.paused_until
            duration = command.params.get("duration")
            if (
                until is None
                and outcome.trading_state == "PAUSED"
                and isinstance(duration, int | float)
                and duration > 0
            ):
                until = utc_now() + timedelta(seconds=duration)
            reason = f"{command.kind} by {command.issued_by}: {command.reason}".rstrip(": ")
            self._dead_man_paused = False
            self.gate.set_state(outcome.trading_state, reason=reason[:1024], until=until)
        return self._result_frame(command, outcome)

    def _result_frame(self, command: Command, outcome: CommandOutcome) -> CommandResult:
        """The result as the protocol bounds it (docs/protocol.md, section 2).

        A result the server would refuse would leave the command open, and sent again on every
        reconnection, for ever: U+0000 in the detail is replaced, and data out of bounds is
        dropped with the reason in the detail.
        """
        detail = outcome.detail.replace("\x00", "\ufffd")
        try:
            result = CommandResult(
                command_id=command.command_id, status=outcome.status, detail=detail[:8192],
                data=outcome.data, trading_state=self.gate.state,
            )  # fmt: skip
            protocol.decode_engine_frame(protocol.encode(result))
        except (ValueError, TypeError, msgspec.MsgspecError) as exc:
            text, field = protocol.error_field(str(exc))
            log.warning("engine: %s result data dropped: %s (%s)", command.kind, text, field)
            note = f"result data dropped: {text} ({field or 'data'})"
            result = CommandResult(
                command_id=command.command_id, status=outcome.status,
                detail="; ".join(t for t in (detail, note) if t)[:8192], data={},
                trading_state=self.gate.state,
            )  # fmt: skip
        return result

    @staticmethod
    def _refuse_limits(command: Command) -> str | None:
        """Why a set_limits cannot be applied at all, or None (single bad limits are skipped)."""
        if command.kind != "set_limits":
            return None
        try:
            PreTradeLimits.from_wire(command.params)
        except ValueError as exc:
            return f"set_limits not applied: {exc}"
        return None

    def _apply_limits(self, params: Mapping[str, Any]) -> tuple[int, str]:
        """Enforce the limits of a set_limits; return the version enforced and a note."""
        limits = PreTradeLimits.from_wire(params)
        current = self.pretrade
        if current is not None and limits.version < current.version:
            # A set_limits delivered late (say, pending across a reconnect whose welcome already
            # carried a newer version) must not roll the limits back.
            note = f"limits version {limits.version} is older than {current.version}; not applied"
            log.warning("engine: %s", note)
            return current.version, note
        self.limits_version = limits.version
        self.limits = list(params["limits"])
        self._enforce_limits(limits, self.limits)
        return limits.version, ""

    def _enforce_limits(self, limits: PreTradeLimits, raw: list[Any]) -> None:
        if self.pretrade is not None:
            limits.take_history_from(self.pretrade)
        self.pretrade = limits
        if self._limits_unknown is not None:
            log.info("engine: pre-trade limits version %d received", limits.version)
            self._limits_unknown = None
        self._save_limits(limits.version, raw)
        log.info(
            "engine: enforcing pre-trade limits version %d (%d limits)", limits.version, len(limits)
        )

    def _load_limits(self) -> None:
        path = self.journal_dir / LIMITS_FILE
        try:
            data = path.read_bytes()
            saved = msgspec.json.decode(data)
            self.pretrade = PreTradeLimits.from_wire(saved)
        except FileNotFoundError:
            return
        except (OSError, msgspec.MsgspecError, ValueError) as exc:
            # Fail closed: trading on no limits when there were some would defeat them.
            self._limits_unknown = (
                f"pre-trade limits unknown ({LIMITS_FILE} unreadable: {exc}); new orders are "
                "refused until the control plane sends limits"
            )
            log.error("engine: %s", self._limits_unknown)
            return
        self.limits_version = self.pretrade.version
        self.limits = list(saved["limits"])
        self._saved_limits = data

    def _save_limits(self, version: int, raw: list[Any]) -> None:
        try:
            data = msgspec.json.encode({"limits_version": version, "limits": raw})
        except (msgspec.EncodeError, TypeError) as exc:
            log.error("engine: cannot keep pre-trade limits in %s: %s", LIMITS_FILE, exc)
            return
        if data == self._saved_limits:
            return
        try:
            _write_atomically(self.journal_dir / LIMITS_FILE, [data], fsync=self._fsync)
        except OSError:
            log.exception("engine: could not write %s", LIMITS_FILE)
            return
        self._saved_limits = data

    async def _default_command_handler(self, command: Command) -> CommandOutcome:
        # Without an engine handler the SDK can change the trading state but cannot touch orders
        # or positions, and says so rather than pretend.
        untouched = "no engine command handler: trading state changed, orders untouched"
        match command.kind:
            case "pause":
                return CommandOutcome(status="succeeded", trading_state="PAUSED")
            case "resume":
                return CommandOutcome(status="succeeded", trading_state="ACTIVE")
            case "set_limits":
                return CommandOutcome(status="succeeded")
            case "kill":
                return CommandOutcome(status="partial", detail=untouched, trading_state="HALTED")
            case "reduce" | "flatten":
                return CommandOutcome(status="partial", detail=untouched, trading_state="REDUCING")
            case _:
                return CommandOutcome(status="failed", detail="no engine command handler")

    async def _deliver_result(self, result: CommandResult) -> None:
        ws = self._ws
        if ws is not None and self._connected.is_set():
            try:
                await self._send(ws, protocol.encode(result))
                return
            except ConnectionClosed:
                pass
        self._unsent_results.append(result)

    # --- trading state, dead-man ---------------------------------------------------------------

    def _on_state_change(self, change: StateChange) -> None:
        self._save_state(change.new, change.paused_until)
        if self._closed:
            return
        with contextlib.suppress(BackpressureError):
            self.emit(
                protocol.StateEvent(
                    ts=change.at, trading_state=change.new, reason=change.reason[:1024]
                )
            )

    def _load_state(self) -> _PersistedState:
        # The trading state survives a restart: a killed engine must not come back ACTIVE before
        # it has even reached the server.
        try:
            return msgspec.json.decode(
                (self.journal_dir / STATE_FILE).read_bytes(), type=_PersistedState
            )
        except FileNotFoundError:
            return _PersistedState()
        except msgspec.MsgspecError:
            log.warning("engine: unreadable %s; starting PAUSED", STATE_FILE)
            return _PersistedState(trading_state="PAUSED")

    def _save_state(self, trading_state: TradingState, paused_until: datetime | None) -> None:
        """Write the trading state to disk, on the process's state writer thread, in the order of
        the changes. Not on the event loop: its fsync would stall everything else the loop runs (the
        engine's market data, its orders, other engines sharing the process). A kill's ack waits
        for the write (_state_written); ``close`` waits for every write."""
        state = _PersistedState(
            trading_state=trading_state,
            paused_until=paused_until,
            dead_man=self._dead_man_paused,
            halted_at=self._halted_at,
        )
        data = [msgspec.json.encode(state)]
        path = self.journal_dir / STATE_FILE
        if self._state_sync:
            _write_atomically(path, data, fsync=self._fsync)
            return
        try:
            self._state_saved = _shared_state_writer().submit(
                _write_atomically, path, data, fsync=self._fsync
            )
        except RuntimeError:  # the interpreter is shutting down: no thread to hand it to
            _write_atomically(path, data, fsync=self._fsync)

    async def _state_written(self) -> None:
        """Wait until the last trading state handed to the state writer is on disk."""
        saved = self._state_saved
        if saved is None:
            return
        try:
            # Shielded: a waiter that is cancelled (the reader, when the connection drops) must
            # not cancel the write itself, which it would while the write waits its turn.
            await asyncio.shield(asyncio.wrap_future(saved))
        except OSError:
            # The engine stays in the state it is in; only a restart would not know it.
            log.exception("engine: could not write %s", STATE_FILE)

    async def _housekeeping(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Reading the state ends a timed pause that is due (and reports it).
            _ = self.gate.state
            now = loop.time()
            silent_for = now - self._last_rx
            if silent_for >= self.dead_man_after_s and not self._dead_man_tripped:
                self._dead_man_tripped = True
                await self._trip_dead_man(silent_for)
            wait = 1.0
            if not self._dead_man_tripped:
                wait = min(wait, self._last_rx + self.dead_man_after_s - now)
            until = self.gate.paused_until
            if until is not None:
                wait = min(wait, (until - utc_now()).total_seconds())
            await asyncio.sleep(max(wait, 0.005))

    def _lift_dead_man_pause(self) -> None:
        # Only a pause the dead-man itself put in place is lifted, and only when the server wants
        # the engine ACTIVE; any command since then has cleared the flag.
        self._dead_man_paused = False
        if self.gate.state == "PAUSED":
            self.gate.resume(reason="dead-man: server is back")
        else:
            self._save_state(self.gate.state, self.gate.paused_until)

    async def _trip_dead_man(self, silent_for: float) -> None:
        log.error("engine dead-man: nothing from the server for %.1f s; pausing", silent_for)
        if self.gate.state == "ACTIVE":
            self._dead_man_paused = True
            self.gate.pause(reason=f"dead-man: no server for {self.dead_man_after_s:g} s")
        if self.on_dead_man is not None:
            try:
                await _call(self.on_dead_man)
            except Exception:
                log.exception("engine: on_dead_man callback failed")

    # --- helpers -------------------------------------------------------------------------------

    def _pulse(self) -> None:
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


def _seq_of(entry: tuple[int, bytes]) -> int:
    return entry[0]


async def _call(callback: Callable[..., Any], *args: Any) -> Any:
    result = callback(*args)
    if inspect.isawaitable(result):
        return await result
    return result
