"""The engine WebSocket: /ws/engine/v1 (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from controlplane import events, logcontext
from controlplane.commands import delivery, lifecycle
from controlplane.gateway import batches, decoding, session
from controlplane.gateway.ratelimit import TokenBucket
from controlplane.hub import DirectDispatch
from controlplane.ingest.store import COPY_MIN_ROWS
from controlplane.loops import PerLoop
from engine_sdk import protocol as p

log = logging.getLogger(__name__)


# Events waiting for this connection's writer beyond which the socket is not read.
MAX_QUEUED_EVENTS = 4 * p.MAX_EVENTS_PER_FRAME


engine_group = delivery.engine_group

# How a refused hello closes the socket (docs/protocol.md, section 12); any other refusal is a
# protocol violation (4400).
HELLO_REFUSAL_CLOSE = {
    # An engine deactivated since its token was checked: as a bad token.
    "unauthorized": p.CLOSE_UNAUTHORIZED,
    # A live hello its stage forbids: the engine stops until a person acts.
    "stage_forbids_live": p.CLOSE_STAGE_FORBIDS,
}

_RESEND = p.Error(
    code="internal_error",
    message="the control plane could not store an earlier batch on this connection; nothing "
    "after it is stored or acknowledged: reconnect and resend from the last ack",
)


class EngineConsumer(DirectDispatch, AsyncWebsocketConsumer):
    engine_id: int | None = None
    connection_id: uuid.UUID
    greeted = False
    _heartbeat_task: asyncio.Task[None] | None = None
    # Command pushes that arrived while the hello was being answered: sent right after the
    # welcome (the engine applies each command_id once, so a repeat is harmless).
    _early_frames: list[str] | None = None
    _writer: asyncio.Task[None] | None = None
    _hello_timer: asyncio.Task[None] | None = None
    # Set when the server closes the socket: nothing received after that is processed.
    _closing = False
    # The mode the engine said in its hello (live: it may send real orders).
    hello_mode: str | None = None
    # Set when a batch could not be stored: the connection stores no events after it.
    _unsynced = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queued: list[decoding.Decoded] = []
        self._queued_events = 0
        self._written = asyncio.Event()
        # Per connection: one engine's flood costs it its own frames, never another's.
        self._rate = TokenBucket(settings.ENGINE_MAX_FRAMES_PER_S, settings.ENGINE_FRAME_BURST)
        self._refused = 0

    async def connect(self) -> None:
        token = decoding.bearer_token(self.scope.get("headers", []))
        engine = await database_sync_to_async(session.engine_by_token)(token)
        # Accept first: a close code (4401) can only be sent on an accepted socket.
        await self.accept()
        if engine is None:
            await self.close(code=p.CLOSE_UNAUTHORIZED)
            return
        self.engine = engine
        self.engine_id = engine.pk
        # Every log line of this connection (its task and the tasks it starts) names the engine.
        logcontext.engine.set(engine.name)
        self.connection_id = uuid.uuid4()
        self._early_frames = []
        await self.channel_layer.group_add(engine_group(engine.pk), self.channel_name)
        await delivery.listen(engine.pk, self)
        self._hello_timer = asyncio.create_task(self._hello_deadline())

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        # Whatever the engine sent after the server decided to close is left unprocessed: an
        # events frame stored then would be acked past the seqs the close was about. The
        # engine's replay after reconnecting brings everything unacked again, in order.
        self._closing = True
        await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self.engine_id is None:
            return
        delivery.stop_listening(self.engine_id, self)
        await self.channel_layer.group_discard(engine_group(self.engine_id), self.channel_name)
        if self.greeted:
            await database_sync_to_async(session.disconnect)(self.engine_id, self.connection_id)
            events.announce(events.engines_changed, engine_ids=[self.engine_id])

    async def send_frames(self, frames: list[p.ServerFrame]) -> None:
        for frame in frames:
            await self.send(text_data=p.encode(frame).decode())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.engine_id is None or self._closing:
            return
        data = text_data if text_data is not None else (bytes_data or b"")
        if not self._rate.take():
            await self._rate_limited(data)
            return
        decoded = decoding.decode_frame(data)
        if not self.greeted:
            await self._expect_hello(decoded)
            return
        if decoded.events is not None:
            await self._queue_events(decoded)
            return
        frame = decoded.frame
        if frame is None:
            await self.send_frames(decoded.errors)
        elif isinstance(frame, p.Hello):
            await self.send_frames(
                [p.Error(code="invalid_frame", message="hello was already sent", field="type")]
            )
        elif isinstance(frame, p.CommandAck | p.CommandResult):
            _answers().add(self, frame)
        elif isinstance(frame, p.Heartbeat):
            # Not thread-sensitive: a hundred engines' heartbeats are not queued on one thread.
            answer = await database_sync_to_async(session.heartbeat, thread_sensitive=False)(
                self.engine_id, frame
            )
            await self.send_frames(answer)
            if any(isinstance(f, p.Error) and f.code == "unauthorized" for f in answer):
                await self.close(code=p.CLOSE_UNAUTHORIZED)

    async def _rate_limited(self, data: str | bytes) -> None:
        """A frame over this connection's rate: answered rate_limited, and not processed.

        A refused events frame cannot be left behind while the connection goes on, since the
        ack of a later frame would cover its seqs: the socket closes (4429) and the engine,
        reconnecting with backoff, replays from its last ack. A connection that keeps flooding
        is closed too, once it has had as many frames refused as the burst allows.
        """
        self._refused += 1
        close = decoding.frame_type(data) == "events" or self._refused >= self._rate.burst
        limit = f"more than {self._rate.rate:g} frames a second (bursts of {self._rate.burst})"
        then = "closing: reconnect and resend from the last ack" if close else "slow down"
        message = f"{limit}: this frame was not processed; {then}"
        await self.send_frames([p.Error(code="rate_limited", message=message)])
        if close:
            await self.close(code=p.CLOSE_RATE_LIMITED)

    async def _hello_deadline(self) -> None:
        """Close a socket that authenticated but sends no hello: it holds the engine's place in
        the group and in the command hub (and a reader of a web process) for nothing."""
        timeout = settings.ENGINE_HELLO_TIMEOUT_S
        await asyncio.sleep(timeout)
        if self.greeted or self._closing:
            return
        self._closing = True  # a hello arriving from now on is not answered
        message = f"no hello within {timeout:g} s of connecting"
        error = p.Error(code="hello_timeout", message=message, field="type")
        with contextlib.suppress(Exception):  # gone already
            await self.send_frames([error])
            await self.close(code=p.CLOSE_PROTOCOL_VIOLATION)

    # --- events: stored in order, the frames that queue behind a write stored together ----------

    async def _queue_events(self, decoded: decoding.Decoded) -> None:
        """Queue an events frame for this connection's writer.

        One write at a time per engine, in arrival order. Frames that arrive while a write is in
        flight are stored together by the next one, in one transaction with one (cumulative) ack:
        an engine sending small frames faster than single transactions commit gets larger
        transactions instead of a growing backlog. The socket is not read further while more
        than MAX_QUEUED_EVENTS wait, so TCP slows the engine down.
        """
        self._queued.append(decoded)
        self._queued_events += len(decoded.events or ())
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_events())
        while self._queued_events > MAX_QUEUED_EVENTS and not self._writer.done():
            self._written.clear()
            await self._written.wait()

    async def _write_events(self) -> None:
        while self._queued:
            take, count = 0, 0
            for decoded in self._queued:
                size = len(decoded.events or ())
                if take and count + size > p.MAX_EVENTS_PER_FRAME:
                    break
                take, count = take + 1, count + size
            batch, self._queued = self._queued[:take], self._queued[take:]
            self._queued_events -= count
            if self._unsynced:
                # A batch before these was not stored: storing these would ack their higher
                # seqs, and an ack covers every seq below it. The engine resends from its last
                # ack on a new connection (the SDK opens one on internal_error).
                self._written.set()
                await self._send_quietly([_RESEND])
                continue
            merged = (
                batch[0]
                if take == 1
                else decoding.Decoded(
                    None,
                    [event for decoded in batch for event in decoded.events or ()],
                    [error for decoded in batch for error in decoded.errors],
                    # Each event keeps its position in the frame it came in.
                    [
                        i
                        for decoded in batch
                        for i in decoded.positions or range(len(decoded.events or ()))
                    ],
                )
            )
            try:
                frames, result = await _events().store(self.engine_id, merged)
            except Exception:
                # The gateway refuses the events at fault one by one and answers a failure of the
                # database with internal_error: what is left here is the engine row gone, or no
                # thread or connection to store with. Nothing is stored or acked, and the socket
                # stays open (engine input never closes it).
                log.exception("engine %s: a batch could not be stored", self.engine_id)
                frames, result = [*merged.errors, _RESEND], None
            self._written.set()
            if result is not None and result.stored:
                events.announce(events.engines_changed, engine_ids=[self.engine_id])
            if result is None:
                # Nothing more is stored on this connection (see above).
                self._unsynced = True
            if not await self._send_quietly(frames):
                self._queued.clear()
                return

    async def _send_quietly(self, frames: list[p.ServerFrame]) -> bool:
        try:
            await self.send_frames(frames)
        except Exception:  # the engine went away: it replays what was not acked
            log.info("engine %s: answer to an events frame not sent", self.engine_id)
            return False
        return True

    async def _expect_hello(self, decoded: decoding.Decoded) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()  # the first frame came in time, hello or not
        if not isinstance(decoded.frame, p.Hello):
            errors = decoded.errors or [
                p.Error(
                    code="not_hello",
                    message="the first frame on a connection must be hello",
                    field="type",
                )
            ]
            await self.send_frames(errors)
            await self.close(code=p.CLOSE_PROTOCOL_VIOLATION)
            return
        frames = await database_sync_to_async(session.hello)(
            self.engine, decoded.frame, self.connection_id
        )
        await self.send_frames(frames)
        if not isinstance(frames[0], p.Welcome):
            code = frames[0].code if isinstance(frames[0], p.Error) else ""
            await self.close(code=HELLO_REFUSAL_CLOSE.get(code, p.CLOSE_PROTOCOL_VIOLATION))
            return
        self.greeted = True
        self.hello_mode = decoded.frame.mode
        events.announce(events.engines_changed, engine_ids=[self.engine_id])
        early, self._early_frames = self._early_frames or [], None
        for text in early:
            await self.send(text_data=text)
        # The newest connection of an engine wins; older ones close with 4409.
        await self.channel_layer.group_send(
            engine_group(self.engine_id),
            {"type": "engine.replaced", "connection_id": str(self.connection_id)},
        )
        self._heartbeat_task = asyncio.create_task(self._heartbeats())

    async def engine_deactivated(self, message: dict[str, Any]) -> None:
        """The engine was deactivated (delivery.close_sockets): its token holds no more."""
        await self.close(code=p.CLOSE_UNAUTHORIZED, reason="engine deactivated")

    async def engine_live_forbidden(self, message: dict[str, Any]) -> None:
        """The engine was demoted out of the stages that send real orders
        (delivery.close_live_sockets): a live socket closes as a refused live hello would."""
        if self.hello_mode == "live":
            await self.close(code=p.CLOSE_STAGE_FORBIDS, reason="stage forbids live orders")

    async def engine_replaced(self, message: dict[str, Any]) -> None:
        if not self.greeted or message["connection_id"] == str(self.connection_id):
            return
        # The database, not the order in which layer messages arrive, says which is newest.
        current = await database_sync_to_async(session.current_connection)(self.engine_id)
        if current != self.connection_id:
            await self.close(code=p.CLOSE_REPLACED)

    async def push_commands(self, entries: list[tuple[str, str]]) -> list[uuid.UUID]:
        """A command push (controlplane.commands.delivery): send this engine its frames.

        Returns the ids sent, which the push marks delivered; before the hello is answered the
        frames wait and go out right after the welcome (the engine's ack marks them).
        """
        if not self.greeted:
            if self._early_frames is not None:
                self._early_frames.extend(text for _, text in entries)
            return []
        for _, text in entries:
            await self.send(text_data=text)
        return [uuid.UUID(command_id) for command_id, _ in entries]

    async def _heartbeats(self) -> None:
        interval = settings.ENGINE_HEARTBEAT_INTERVAL_S
        # OSError: the engine went away between two heartbeats (its disconnect follows); left on
        # the task, it would be logged as never retrieved and hold this consumer in a cycle.
        with contextlib.suppress(asyncio.CancelledError, OSError):
            while True:
                await asyncio.sleep(interval)
                await self.send_frames([p.ServerHeartbeat(ts=p.utc_now())])


class _EventsWriter:
    """The events frames of every engine socket of this process, those that wait for a
    transaction stored together (batches.events_many): at most CONCURRENT transactions at once,
    each taking the frames waiting when it starts, up to MAX_EVENTS events.

    Engines send small frames, and a small frame's transaction costs PostgreSQL and this process
    mostly per statement: ten engines' frames stored in one transaction cost little more than
    one, where ten transactions queued behind each other for the CPU. Each socket has at most
    one frame here (EngineConsumer._write_events waits for its answer), so an engine's frames
    are stored in order. One transaction lets this process's Python and PostgreSQL take turns
    on the CPUs; two let them overlap.
    """

    CONCURRENT = 2
    MAX_EVENTS = p.MAX_EVENTS_PER_FRAME
    # A frame this large is stored on its own, at once: its statements' fixed costs are already
    # spread over its rows, and large frames of several engines are stored faster side by side
    # (bench/ingest.py: 60,000 events/s grouped, 70,000 alone).
    ALONE_FROM = COPY_MIN_ROWS

    def __init__(self) -> None:
        self._pending: list[tuple[int, decoding.Decoded, asyncio.Future[batches.Outcome]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(
        self, engine_id: int, decoded: decoding.Decoded
    ) -> tuple[list[p.ServerFrame], Any]:
        if len(decoded.events or ()) >= self.ALONE_FROM:
            (outcome,) = await database_sync_to_async(batches.events_many, thread_sensitive=False)(
                [(engine_id, decoded)]
            )
        else:
            outcome = await self._grouped(engine_id, decoded)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _grouped(self, engine_id: int, decoded: decoding.Decoded) -> batches.Outcome:
        future: asyncio.Future[batches.Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((engine_id, decoded, future))
        if self._running < self.CONCURRENT:
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A socket that closes meanwhile cancels only its wait: the group is stored all the same.
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, rest = [], []
                engines: set[int] = set()
                count = 0
                for item in self._pending:
                    size = len(item[1].events or ())
                    # An engine once a group: its two sockets (an old one not closed yet) may
                    # both send the same seqs, which one watermark read would take twice.
                    if item[0] in engines or (batch and count + size > self.MAX_EVENTS):
                        rest.append(item)
                        continue
                    batch.append(item)
                    engines.add(item[0])
                    count += size
                self._pending = rest
                try:
                    outcomes: list[batches.Outcome] = await database_sync_to_async(
                        batches.events_many, thread_sensitive=False
                    )([(engine_id, decoded) for engine_id, decoded, _ in batch])
                except Exception as exc:  # not even tried (no thread, no connection)
                    outcomes = [exc] * len(batch)
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._running -= 1


# One writer per event loop: its tasks belong to the loop that started them.
_events = PerLoop(_EventsWriter).get


class _AnswerWriter:
    """The command_acks and command_results of every engine socket of this process, stored in
    arrival order, those that arrive while a write is in flight together in the next one
    (lifecycle.command_answers).

    A fleet kill brings a hundred acks within milliseconds, then a hundred results: one
    transaction each cost more of the process's CPU than the kill's push, and competed with it.
    An answer that cannot be stored closes its engine's socket (1011), as any failure to store
    what an engine sent does: on reconnecting, the engine is sent its open commands again and
    answers them again (it applies each command once).
    """

    def __init__(self) -> None:
        self._pending: list[tuple[EngineConsumer, p.CommandAck | p.CommandResult]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, consumer: EngineConsumer, frame: p.CommandAck | p.CommandResult) -> None:
        self._pending.append((consumer, frame))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            answers = [(consumer.engine_id, frame) for consumer, frame in batch]
            try:
                failed = await database_sync_to_async(_store_answers, thread_sensitive=False)(
                    answers
                )
            except Exception:  # not even tried (no thread, no connection): none is stored
                log.exception("%d command answers not stored", len(batch))
                failed = {engine_id for engine_id, _ in answers}
            closed: set[int] = set()
            results: list[tuple[int, Any, str]] = []
            for consumer, frame in batch:
                engine_id = consumer.engine_id
                if engine_id in failed:
                    if id(consumer) not in closed:
                        closed.add(id(consumer))
                        with contextlib.suppress(Exception):
                            await consumer.close(code=1011)
                elif isinstance(frame, p.CommandResult):
                    results.append((engine_id, frame.command_id, frame.status))
            if results:
                engine_ids = sorted({engine_id for engine_id, _, _ in results})
                events.announce(events.command_answered, engine_ids=engine_ids, answers=results)


def _store_answers(answers: list[lifecycle.Answer]) -> set[int]:
    """Store the answers; return the engines whose answers could not be stored."""
    try:
        lifecycle.command_answers(answers)
        return set()
    except Exception:
        if len({engine_id for engine_id, _ in answers}) == 1:
            log.exception("engine %s: command answers not stored", answers[0][0])
            return {answers[0][0]}
    # One engine's answer (a result the database refuses, say) must not cost the others theirs.
    failed: set[int] = set()
    by_engine: dict[int, list[lifecycle.Answer]] = {}
    for engine_id, frame in answers:
        by_engine.setdefault(engine_id, []).append((engine_id, frame))
    for engine_id, own in by_engine.items():
        try:
            lifecycle.command_answers(own)
        except Exception:
            log.exception("engine %s: command answers not stored", engine_id)
            failed.add(engine_id)
    return failed


# One writer per event loop: its task belongs to the loop that started it.
_answers = PerLoop(_AnswerWriter).get
