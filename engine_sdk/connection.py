"""The connection to the control plane: session, sender, heartbeats, reconnects, dead-man.

One connection at a time: ``hello``, the server's ``welcome``, then a reader (acks, commands,
errors), a sender (the journaled events the server lacks) and heartbeats, until the socket drops;
then a reconnect after a backoff with full jitter. A refused token or another connection taking
over stops it for good. With no frame from the server for ``dead_man_after_s``, an ACTIVE engine
is paused until the server is back.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import logging
import random
import uuid
from collections.abc import Callable
from typing import Any, Final

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from engine_sdk import __version__, protocol
from engine_sdk.commands import CommandRunner
from engine_sdk.config import ClientConfig, HelloInfo
from engine_sdk.errors import (
    EngineClientError,
    EngineReplaced,
    ServerTrouble,
    StageForbidsLive,
    Unauthorized,
)
from engine_sdk.journal import JournalWriter
from engine_sdk.protocol import Command, CommandResult, Welcome, utc_now
from engine_sdk.state import StateStore

__all__ = ["Connection"]

log = logging.getLogger(__name__)

_FRAME_HEAD: Final = b'{"type":"events","events":['
_FRAME_TAIL: Final = b"]}"
_FRAME_BUDGET: Final = protocol.MAX_FRAME_BYTES - len(_FRAME_HEAD) - len(_FRAME_TAIL)


class _CommandProbe(msgspec.Struct, forbid_unknown_fields=False):
    type: Any = None
    command_id: uuid.UUID | None = None
    kind: Any = None


class Connection:
    def __init__(
        self,
        url: str,
        token: str,
        hello: HelloInfo,
        config: ClientConfig,
        *,
        writer: JournalWriter,
        state: StateStore,
        runner: CommandRunner,
        on_progress: Callable[[], None],
        on_welcome: Callable[[Welcome], Any] | None = None,
        on_error: Callable[[protocol.Error], None] | None = None,
        on_dead_man: Callable[[], Any] | None = None,
    ) -> None:
        self.url = url
        self._token = token
        self.hello = hello
        self.config = config
        self.writer = writer
        self.state = state
        self.runner = runner
        self.on_welcome = on_welcome
        self.on_error = on_error
        self.on_dead_man = on_dead_man
        self._on_progress = on_progress
        self._rng = config.rng or random.Random()
        # The server's welcome sets the interval the engine keeps.
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self.engine_id: int | None = None
        self.engine_name: str | None = None
        # The engine's stage on the way to real money, from the welcome (None before it, or from
        # a server that predates stages).
        self.stage: protocol.Stage | None = None

        self.ws: ClientConnection | None = None
        self.connected = asyncio.Event()
        # Set when the connection stops for good (error says why) or the client closes.
        self.stopped = asyncio.Event()
        self.error: BaseException | None = None
        self.closing = False
        self._wake_sender = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._unsent_results: list[CommandResult] = []
        # Highest seq sent on the current connection.
        self._sent_seq = 0
        self._welcomed = False
        self._last_rx = 0.0
        self._dead_man_tripped = False

    def start(self) -> None:
        """Count the dead-man's silence from now."""
        self._last_rx = asyncio.get_running_loop().time()

    def events_written(self) -> None:
        """New events are in the journal: the sender has something to send."""
        self._wake_sender.set()

    # --- reconnecting ----------------------------------------------------------------------

    def backoff_delay(self, attempt: int) -> float:
        # Full jitter: engines that lost the server together do not come back together.
        cap = min(self.config.backoff_max_s, self.config.backoff_initial_s * (2**attempt))
        return self._rng.uniform(0, cap)

    async def run(self) -> None:
        attempt = 0
        while not self.closing:
            self._welcomed = False
            trouble = False
            try:
                await self._connect_once()
            except Unauthorized as exc:
                self._stop_for_good(exc)
                return
            except (EngineReplaced, StageForbidsLive) as exc:
                self._stop_for_good(exc)
                return
            except asyncio.CancelledError:
                raise
            except ServerTrouble as exc:
                trouble = True
                log.warning("engine connection to %s: %s", self.url, exc)
            except Exception as exc:
                log.warning("engine connection to %s failed: %s", self.url, exc)
            finally:
                self.connected.clear()
                self.ws = None
            # A server that keeps failing to store does not count as a good connection: the
            # backoff keeps growing instead of hammering it.
            if self._welcomed and not trouble:
                attempt = 0
            delay = self.backoff_delay(attempt)
            attempt += 1
            log.info("engine reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    def _stop_for_good(self, exc: EngineClientError) -> None:
        log.error("engine client stopped: %s", exc)
        self.error = exc
        self.stopped.set()
        self._on_progress()

    async def _connect_once(self) -> None:
        """One connection's life, from the handshake to its end."""
        kwargs: dict[str, Any] = {
            "additional_headers": {"Authorization": f"Bearer {self._token}"},
            "max_size": 16 * 1024 * 1024,
            "open_timeout": self.config.welcome_timeout_s,
            # Closing must not hang on a server that is gone; the socket is dropped either way.
            "close_timeout": 2.0,
            "user_agent_header": f"engine-sdk/{__version__} websockets/{websockets.__version__}",
        }
        kwargs.update(self.config.connect_kwargs)
        try:
            ws = await connect(self.url, **kwargs)
        except InvalidStatus as exc:
            if exc.response.status_code == 401:
                raise Unauthorized(
                    f"server refused the engine token (HTTP 401) at {self.url}"
                ) from exc
            raise
        self.ws = ws
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
            if code == protocol.CLOSE_STAGE_FORBIDS:
                raise StageForbidsLive(
                    f"server refused the engine's mode: {reason or code}"
                ) from exc
            if code == protocol.CLOSE_RATE_LIMITED:
                # The backoff keeps growing: reconnecting at once would flood it again.
                raise ServerTrouble(f"server closed: frames over its rate ({code})") from exc
            raise
        finally:
            await ws.close()

    # --- one session -----------------------------------------------------------------------

    async def _session(self, ws: ClientConnection) -> None:
        hello = protocol.Hello(
            protocol=protocol.PROTOCOL_VERSION,
            engine_build=self.hello.engine_build,
            config_hash=self.hello.config_hash,
            mode=self.hello.mode,
            broker=self.hello.broker,
            account=self.hello.account,
            trading_state=self.state.state,
            last_seq=self.writer.last_seq,
            limits_version=self.state.limits_version_enforced,
            sdk_version=__version__,
            run_id=self.hello.run_id,
            capabilities=self.hello.capabilities,
        )
        await ws.send(protocol.encode(hello), text=True)
        async with asyncio.timeout(self.config.welcome_timeout_s):
            while True:
                frame = self._decode(await ws.recv())
                if isinstance(frame, Welcome):
                    break
                if isinstance(frame, protocol.Error):
                    self._report_error(frame)
                    if frame.code == "stage_forbids_live":
                        raise StageForbidsLive(frame.message)
                    raise EngineClientError(f"server refused hello: {frame.code}: {frame.message}")
        await self._take_welcome(frame)
        self._welcomed = True
        self.connected.set()
        self._on_progress()
        log.info("engine connected as %s (id %s)", frame.engine_name, frame.engine_id)

        # Results the server has not seen yet go first, then the events it lacks. A command the
        # server sends again is answered from the command store instead.
        resent = {command.command_id for command in frame.commands}
        unsent, self._unsent_results = self._unsent_results, []
        for result in unsent:
            if result.command_id not in resent:
                await self.send(ws, protocol.encode(result))
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

    async def _take_welcome(self, welcome: Welcome) -> None:
        self._last_rx = asyncio.get_running_loop().time()
        self._dead_man_tripped = False
        self.engine_id = welcome.engine_id
        self.engine_name = welcome.engine_name
        self.stage = welcome.stage
        self.state.take_welcome(welcome)
        self.heartbeat_interval_s = welcome.heartbeat_interval_s
        writer = self.writer
        if welcome.last_seq > writer.last_seq:
            await writer.renumber_after(welcome.last_seq)
        writer.on_ack(welcome.last_seq)
        self._sent_seq = welcome.last_seq
        self._wake_sender.set()
        self.state.follow_welcome(welcome)
        if welcome.last_seq < writer.acked_seq:
            log.error(
                "server reports seq %d but acked %d before: it lost events this engine can no "
                "longer resend",
                welcome.last_seq,
                writer.acked_seq,
            )
        if self.on_welcome is not None:
            try:
                await _call(self.on_welcome, welcome)
            except Exception:
                log.exception("engine: on_welcome callback failed")

    async def send(self, ws: ClientConnection, data: bytes) -> None:
        """Send one frame; frames never interleave."""
        async with self._send_lock:
            await ws.send(data, text=True)

    def _decode(self, message: str | bytes) -> protocol.ServerFrame | None:
        try:
            return protocol.decode_server_frame(message)
        except msgspec.MsgspecError as exc:
            log.warning("engine: ignoring a server frame it cannot read: %s", exc)
            return None

    async def _receive_command(self, ws: ClientConnection, command: Command) -> None:
        async def send(data: bytes) -> None:
            await self.send(ws, data)

        await self.runner.receive(command, send)

    async def _reader(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        async for message in ws:
            self._last_rx = loop.time()
            if self._dead_man_tripped:
                self._dead_man_tripped = False
                self.state.server_back()
            try:
                frame = protocol.decode_server_frame(message)
            except msgspec.MsgspecError as exc:
                await self._unreadable_frame(ws, message, exc)
                continue
            if isinstance(frame, protocol.Ack):
                self.writer.on_ack(frame.seq)
            elif isinstance(frame, Command):
                await self._receive_command(ws, frame)
            elif isinstance(frame, protocol.Error):
                self._report_error(frame)
                if frame.code == "internal_error":
                    # Nothing in that frame was acked and this connection will not retry it;
                    # a new connection replays from the server's last_seq.
                    raise ServerTrouble(f"server could not store events: {frame.message}")
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
        await self.send(ws, protocol.encode(protocol.CommandAck(command_id=probe.command_id)))
        result = CommandResult(
            command_id=probe.command_id,
            status="failed",
            detail=f"command not understood by this engine: {exc}",
            trading_state=self.state.state,
        )
        await self.send(ws, protocol.encode(result))

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

    async def _sender(self, ws: ClientConnection) -> None:
        while True:
            await self._wake_sender.wait()
            self._wake_sender.clear()
            while True:
                frame, last = self._next_frame()
                if frame is None:
                    break
                await self.send(ws, frame)
                self._sent_seq = last

    def _next_frame(self) -> tuple[bytes | None, int]:
        unacked = self.writer.unacked
        start = bisect.bisect_right(unacked, self._sent_seq, lo=self.writer.head, key=_seq_of)
        if start >= len(unacked):
            return None, 0
        end = min(len(unacked), start + self.config.batch_max_events)
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

    def _heartbeat_frame(self, *, stopping: bool = False) -> bytes:
        frame = protocol.Heartbeat(
            ts=utc_now(),
            trading_state=self.state.state,
            last_seq=self.writer.last_seq,
            limits_version=self.state.limits_version_enforced,
            stopping=stopping,
        )
        return protocol.encode(frame)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self.send(ws, self._heartbeat_frame())

    async def deliver_result(self, result: CommandResult) -> None:
        """Send a command's result now, or with the next connection."""
        ws = self.ws
        if ws is not None and self.connected.is_set():
            try:
                await self.send(ws, protocol.encode(result))
                return
            except ConnectionClosed:
                pass
        self._unsent_results.append(result)

    async def say_stopping(self) -> None:
        """The last heartbeat, which says the engine stops on purpose."""
        ws = self.ws
        if ws is None:
            return
        await self.send(ws, self._heartbeat_frame(stopping=True))

    # --- dead-man --------------------------------------------------------------------------

    async def watch(self) -> None:
        """Notice the end of a timed pause and a silent server, whichever comes first."""
        loop = asyncio.get_running_loop()
        dead_man_after_s = self.config.dead_man_after_s
        while True:
            # Reading the state ends a timed pause that is due (and reports it).
            _ = self.state.state
            now = loop.time()
            silent_for = now - self._last_rx
            if silent_for >= dead_man_after_s and not self._dead_man_tripped:
                self._dead_man_tripped = True
                await self._trip_dead_man(silent_for)
            wait = 1.0
            if not self._dead_man_tripped:
                wait = min(wait, self._last_rx + dead_man_after_s - now)
            until = self.state.gate.paused_until
            if until is not None:
                wait = min(wait, (until - utc_now()).total_seconds())
            await asyncio.sleep(max(wait, 0.005))

    async def _trip_dead_man(self, silent_for: float) -> None:
        log.error("engine dead-man: nothing from the server for %.1f s; pausing", silent_for)
        self.state.dead_man_pause(self.config.dead_man_after_s)
        if self.on_dead_man is not None:
            try:
                await _call(self.on_dead_man)
            except Exception:
                log.exception("engine: on_dead_man callback failed")


def _seq_of(entry: tuple[int, bytes]) -> int:
    return entry[0]


async def _call(callback: Callable[..., Any], *args: Any) -> Any:
    result = callback(*args)
    if inspect.isawaitable(result):
        return await result
    return result
