"""One engine never disturbs another: two real engines on one real uvicorn process, over real
WebSockets, against the real PostgreSQL and Redis.

Where a test needs several engines' frames stored together, other engines' transactions are held
on row locks the test takes (the process stores at most two transactions at once): the frames
that arrive meanwhile wait, and are stored as one group once the locks go. A frame of an unknown
type is answered at once, without the database; its error proves that every frame the engine
sent before it was handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from controlplane.models import AuditEvent, Command, Engine, EngineEvent
from engine_sdk import protocol as p
from tests.gateway import factories as f
from tests.servers import UvicornServer, current_database_url

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_S = 15.0
PROBE = '{"type": "probe"}'


class RawEngine:
    """An engine's socket, driven frame by frame."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name

    @classmethod
    async def connect(cls, server: UvicornServer, token: str, name: str) -> RawEngine:
        ws = await connect(
            f"{server.ws_url}/ws/engine/v1",
            additional_headers={"Authorization": f"Bearer {token}"},
            max_size=None,
        )
        return cls(ws, name)

    @classmethod
    async def greeted(cls, server: UvicornServer, token: str, name: str) -> RawEngine:
        engine = await cls.connect(server, token, name)
        welcome = await engine.hello()
        assert welcome["type"] == "welcome", welcome
        return engine

    async def hello(self, last_seq: int = 0) -> dict[str, Any]:
        hello = p.Hello(
            protocol=p.PROTOCOL_VERSION,
            engine_build="t",
            config_hash="t",
            mode="paper",
            broker="sim",
            account="a",
            trading_state="ACTIVE",
            last_seq=last_seq,
        )
        await self.send(p.encode(hello))
        return await self.frame()

    async def send(self, frame: bytes | str) -> None:
        await self.ws.send(frame.decode() if isinstance(frame, bytes) else frame)

    async def frame(self) -> dict[str, Any]:
        """The next frame from the server, its heartbeats aside."""
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = msgspec.json.decode(await self.ws.recv())
                if frame["type"] != "heartbeat":
                    return frame

    async def answer(self) -> list[dict[str, Any]]:
        """The answer to an events frame: its errors up to the ack (or a frame-level error)."""
        frames = []
        while True:
            frame = await self.frame()
            frames.append(frame)
            if frame["type"] == "ack" or (frame["type"] == "error" and frame.get("seq") is None):
                return frames

    async def events(self, *events: p.Event) -> list[dict[str, Any]]:
        await self.send(f.events_frame(*events))
        return await self.answer()

    async def probe(self) -> None:
        """Send a frame of an unknown type and wait for its error: the frames sent before it
        have been handed over (to the writers of the web process)."""
        await self.send(PROBE)
        frame = await self.frame()
        assert frame.get("code") == "unknown_type", frame

    async def closed(self) -> tuple[int | None, list[dict[str, Any]]]:
        """Wait for the server to close the socket: its close code and the frames before it."""
        frames = []
        async with asyncio.timeout(WAIT_S):
            try:
                while True:
                    frame = msgspec.json.decode(await self.ws.recv())
                    if frame["type"] != "heartbeat":
                        frames.append(frame)
            except ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd is not None else None), frames

    async def close(self) -> None:
        await self.ws.close()


@pytest.fixture
def web(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., UvicornServer]]:
    """Starts the web process (uvicorn) with the given settings in its environment."""
    servers: list[UvicornServer] = []

    def start(**env: str) -> UvicornServer:
        server = UvicornServer(
            database_url=current_database_url(),
            redis_url=settings.REDIS_URL,
            log_path=tmp_path / f"uvicorn-{len(servers)}.log",
            env=env,
        )
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()
        print(f"--- uvicorn output ---\n{server.output()[-8000:]}")


@contextlib.asynccontextmanager
async def engines_held(*engines: Engine) -> AsyncIterator[None]:
    """Hold these engines' rows: a transaction storing their frames waits until the block ends."""
    async with await psycopg.AsyncConnection.connect(current_database_url()) as held:
        ids = [engine.pk for engine in engines]
        await held.execute(
            "SELECT id FROM controlplane_engine WHERE id = ANY(%s) FOR UPDATE", [ids]
        )
        try:
            yield
        finally:
            await held.rollback()


async def stored_together(
    server: UvicornServer, blockers: list[tuple[Engine, str]], *senders: Awaitable[None]
) -> None:
    """Run ``senders`` (each sends frames and probes) while the process's two transactions wait
    on the blockers' rows, so that what they sent is stored in one transaction."""
    sockets = [await RawEngine.greeted(server, token, e.name) for e, token in blockers]
    async with engines_held(*(engine for engine, _ in blockers)):
        for ws in sockets:
            await ws.send(f.events_frame(f.metric(1)))
            await ws.probe()
        for sender in senders:
            await sender
    for ws in sockets:
        assert (await ws.answer())[-1]["type"] == "ack"
        await ws.close()


async def db(fn: Callable[[], Any]) -> Any:
    """The ORM from the scenario's event loop: on a thread of its own, as Django wants."""

    def run() -> Any:
        try:
            return fn()
        finally:
            connection.close()

    return await asyncio.to_thread(run)


async def eventually(fn: Callable[[], Any], what: str) -> Any:
    """Poll the database until ``fn`` is true: what another process writes gives no event."""
    deadline = time.monotonic() + WAIT_S
    while not (value := await db(fn)):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {WAIT_S:.0f}s")
        await asyncio.sleep(0.02)
    return value


def invalid_metric(seq: int) -> str:
    """An event refused for good (its name breaks the pattern), its seq readable."""
    return (
        f'{{"kind": "metric", "seq": {seq}, "ts": "2026-11-23T14:00:00Z", "name": "Not A Name", '
        '"value": 1}'
    )


def events_text(*events: p.Event | str) -> str:
    raws = [e if isinstance(e, str) else p.encode_event(e).decode() for e in events]
    return '{"type": "events", "events": [' + ", ".join(raws) + "]}"


def stored_seqs(engine: Engine) -> list[int]:
    return sorted(EngineEvent.objects.filter(engine=engine).values_list("seq", flat=True))


# --- a failure storing one engine's frame --------------------------------------------------------


@pytest.fixture
def alpha_seq_refused(make_engine):
    """alpha, beta and two blockers; PostgreSQL refuses to move alpha's seq watermark (a trigger
    on alpha's row only): alpha's batches cannot be stored, nor its watermark moved alone."""
    alpha, beta = make_engine("alpha"), make_engine("beta")
    blockers = [make_engine("c1"), make_engine("c2")]
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION test_refuse_seq() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'engine % may not move its seq', OLD.id; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_seq BEFORE UPDATE ON controlplane_engine FOR EACH ROW "
            f"WHEN (OLD.id = {alpha[0].pk} AND NEW.last_seq IS DISTINCT FROM OLD.last_seq) "
            "EXECUTE FUNCTION test_refuse_seq()"
        )
    yield alpha, beta, blockers
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER test_refuse_seq ON controlplane_engine")
        cursor.execute("DROP FUNCTION test_refuse_seq()")


def test_a_frame_that_cannot_be_stored_costs_the_engine_stored_with_it_nothing(
    web, alpha_seq_refused
):
    (alpha, alpha_token), (beta, beta_token), blockers = alpha_seq_refused
    server = web()

    async def scenario() -> None:
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        b = await RawEngine.greeted(server, beta_token, "beta")

        async def alpha_sends() -> None:
            await a.send(f.events_frame(f.metric(1)))
            await a.probe()

        async def beta_sends() -> None:
            await b.send(f.events_frame(f.metric(1), f.log(2)))
            await b.probe()

        await stored_together(server, blockers, alpha_sends(), beta_sends())
        assert await b.answer() == [{"type": "ack", "seq": 2}]
        # alpha's frame is not acked: its engine keeps it and sends it again.
        [error] = await a.answer()
        assert error["code"] == "internal_error"
        # beta goes on as if nothing happened.
        assert await b.events(f.metric(3)) == [{"type": "ack", "seq": 3}]
        await b.close()

    asyncio.run(scenario())
    assert stored_seqs(alpha) == []
    assert stored_seqs(beta) == [1, 2, 3]


def test_a_watermark_that_cannot_move_costs_the_engine_stored_with_it_nothing(
    web, alpha_seq_refused
):
    (alpha, alpha_token), (beta, beta_token), blockers = alpha_seq_refused
    server = web()

    async def scenario() -> None:
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        b = await RawEngine.greeted(server, beta_token, "beta")

        # Only refused events: stored, alpha's frame changes nothing, but its ack would move the
        # watermark (the highest seq seen), which PostgreSQL refuses after the group's commit.
        async def alpha_sends() -> None:
            await a.send(events_text(invalid_metric(5)))
            await a.probe()

        async def beta_sends() -> None:
            await b.send(events_text(f.metric(1), invalid_metric(2)))
            await b.probe()

        await stored_together(server, blockers, alpha_sends(), beta_sends())
        [error, ack] = await b.answer()
        assert (error["code"], error["seq"], ack) == ("invalid_event", 2, {"type": "ack", "seq": 2})
        # alpha is acked as far as stored, no further, and keeps its socket.
        [error, ack] = await a.answer()
        assert (error["code"], error["seq"], ack) == ("invalid_event", 5, {"type": "ack", "seq": 0})
        await a.probe()
        assert await b.events(f.metric(3)) == [{"type": "ack", "seq": 3}]
        await a.close()
        await b.close()

    asyncio.run(scenario())
    alpha.refresh_from_db()
    beta.refresh_from_db()
    assert (alpha.last_seq, beta.last_seq) == (0, 3)
    assert stored_seqs(beta) == [1, 3]


# --- the frame size limit counts bytes -----------------------------------------------------------


def test_a_frame_over_the_limit_in_bytes_is_refused_though_its_characters_are_fewer(
    web, make_engine
):
    (alpha, alpha_token), (beta, beta_token) = make_engine("alpha"), make_engine("beta")
    server = web()
    # 600,000 characters of three bytes each: 1.8 MB on the wire, under 1,048,576 characters.
    padding = "\u20ac" * 600_000
    big = f.events_frame(f.metric(1)).decode()[:-1] + f', "padding": "{padding}"}}'
    assert len(big) < p.MAX_FRAME_BYTES < len(big.encode())

    async def scenario() -> None:
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        b = await RawEngine.greeted(server, beta_token, "beta")
        await a.send(big)
        [error] = await a.answer()
        assert error["code"] == "frame_too_large"
        assert f"frame is {len(big.encode())} bytes" in error["message"]
        assert await b.events(f.metric(1)) == [{"type": "ack", "seq": 1}]
        # The frame was dropped, not the socket.
        assert await a.events(f.metric(1)) == [{"type": "ack", "seq": 1}]
        await a.close()
        await b.close()

    asyncio.run(scenario())
    assert stored_seqs(alpha) == stored_seqs(beta) == [1]


# --- a socket without hello ----------------------------------------------------------------------


def test_a_socket_that_sends_no_hello_is_closed_after_the_timeout(web, make_engine):
    (_, alpha_token), (_, beta_token) = make_engine("alpha"), make_engine("beta")
    server = web(ENGINE_HELLO_TIMEOUT_S="1.0")

    async def scenario() -> None:
        b = await RawEngine.greeted(server, beta_token, "beta")
        a = await RawEngine.connect(server, alpha_token, "alpha")
        code, frames = await a.closed()
        assert code == p.CLOSE_PROTOCOL_VIOLATION
        assert [(frame["code"], frame["field"]) for frame in frames] == [("hello_timeout", "type")]
        assert await b.events(f.metric(1)) == [{"type": "ack", "seq": 1}]
        await b.close()

    asyncio.run(scenario())


# --- a flood of frames ---------------------------------------------------------------------------


def test_a_flood_of_frames_is_refused_rate_limited_and_loses_no_event(web, make_engine):
    (alpha, alpha_token), (beta, beta_token) = make_engine("alpha"), make_engine("beta")
    server = web(ENGINE_MAX_FRAMES_PER_S="5", ENGINE_FRAME_BURST="20")
    heartbeat = p.encode(p.Heartbeat(ts=p.utc_now(), trading_state="ACTIVE", last_seq=0))

    async def flood(engine: RawEngine, frames: list[bytes]) -> None:
        with contextlib.suppress(ConnectionClosed):  # closed mid-flood
            for frame in frames:
                await engine.send(frame)

    async def scenario() -> None:
        b = await RawEngine.greeted(server, beta_token, "beta")

        # Heartbeats over the rate are refused one by one, then the flooding socket is closed.
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        await flood(a, [heartbeat] * 200)
        code, frames = await a.closed()
        # As many refused as the burst allows, then closed.
        assert code == p.CLOSE_RATE_LIMITED
        assert [frame["code"] for frame in frames] == ["rate_limited"] * 20
        assert await b.events(f.metric(1)) == [{"type": "ack", "seq": 1}]

        # An events frame over the rate closes the socket at once: acking the frames after it
        # would cover its seqs.
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        await flood(a, [f.events_frame(f.metric(seq)) for seq in range(1, 61)])
        code, frames = await a.closed()
        assert code == p.CLOSE_RATE_LIMITED
        refused = [frame for frame in frames if frame["type"] == "error"]
        assert [error["code"] for error in refused] == ["rate_limited"]
        acked = max((frame["seq"] for frame in frames if frame["type"] == "ack"), default=0)
        assert acked < 60

        # The engine replays what was not acked, and nothing is missing.
        a = await RawEngine.connect(server, alpha_token, "alpha")
        welcome = await a.hello(last_seq=60)
        assert welcome["last_seq"] >= acked
        missing = [f.metric(seq) for seq in range(welcome["last_seq"] + 1, 61)]
        assert await a.events(*missing) == [{"type": "ack", "seq": 60}]
        assert await b.events(f.metric(2)) == [{"type": "ack", "seq": 2}]
        await a.close()
        await b.close()

    asyncio.run(scenario())
    assert stored_seqs(alpha) == list(range(1, 61))
    assert stored_seqs(beta) == [1, 2]


# --- deactivating an engine ----------------------------------------------------------------------


def test_deactivating_an_engine_in_the_admin_closes_its_socket_at_once(
    web, make_engine, admin_user
):
    (alpha, alpha_token), (_, beta_token) = make_engine("alpha"), make_engine("beta")
    server = web()
    client = Client()
    client.force_login(admin_user)

    def deactivate() -> None:
        # The change form, as a person unticks "Is active" and saves.
        response = client.post(
            f"/admin/controlplane/engine/{alpha.pk}/change/",
            {
                "name": alpha.name,
                "mode": alpha.mode,
                "broker": "",
                "account": "",
                "strategy_tags": "",
                "description": "",
                "_save": "Save",
            },
        )
        assert response.status_code == 302, response.content.decode()[:2000]

    async def scenario() -> None:
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        b = await RawEngine.greeted(server, beta_token, "beta")
        await db(deactivate)
        # No heartbeat from alpha, so nothing but the deactivation can close its socket.
        code, _ = await a.closed()
        assert code == p.CLOSE_UNAUTHORIZED
        assert await b.events(f.metric(1)) == [{"type": "ack", "seq": 1}]
        again = await RawEngine.connect(server, alpha_token, "alpha")
        code, _ = await again.closed()
        assert code == p.CLOSE_UNAUTHORIZED
        await b.close()

    asyncio.run(scenario())
    alpha.refresh_from_db()
    assert alpha.is_active is False
    audit = AuditEvent.objects.get(action="engine_deactivate")
    assert (audit.actor, audit.target_id) == (admin_user.username, str(alpha.pk))


# --- command answers -----------------------------------------------------------------------------


def test_an_answer_naming_another_engines_command_drops_none_of_that_engines_answers(
    web, make_engine
):
    (alpha, alpha_token), (beta, beta_token) = make_engine("alpha"), make_engine("beta")
    kill, pause = (
        Command.objects.create(
            engine=alpha, kind=kind, reason="r", issued_by_label="rita", status="delivered"
        )
        for kind in ("kill", "pause")
    )
    server = web()

    def answer(command_id: uuid.UUID, status: str, **kwargs: Any) -> bytes:
        return p.encode(p.CommandResult(command_id=command_id, status=status, **kwargs))

    async def scenario() -> None:
        a = await RawEngine.greeted(server, alpha_token, "alpha")
        b = await RawEngine.greeted(server, beta_token, "beta")
        async with await psycopg.AsyncConnection.connect(current_database_url()) as held:
            # The writer stores alpha's ack of the pause, and waits on its row meanwhile:
            # what comes next is stored in one batch, beta's answers first.
            await held.execute(
                "SELECT id FROM controlplane_command WHERE id = %s FOR UPDATE", [pause.pk]
            )
            await a.send(p.encode(p.CommandAck(command_id=pause.pk)))
            await a.probe()
            await b.send(p.encode(p.CommandAck(command_id=kill.pk)))
            await b.send(answer(kill.pk, "failed", detail="beta's"))
            await b.probe()
            await a.send(p.encode(p.CommandAck(command_id=kill.pk)))
            await a.send(
                answer(
                    kill.pk,
                    "succeeded",
                    detail="alpha's",
                    data={"cancelled": 2},
                    trading_state="HALTED",
                )
            )
            await a.probe()
            await held.rollback()
        await eventually(
            lambda: Command.objects.get(pk=kill.pk).status not in Command.OPEN, "kill completed"
        )
        await a.close()
        await b.close()

    asyncio.run(scenario())
    kill.refresh_from_db()
    assert (kill.status, kill.detail, kill.result, kill.state_after) == (
        "succeeded",
        "alpha's",
        {"cancelled": 2},
        "HALTED",
    )
    assert kill.acknowledged_at is not None
    [audit] = AuditEvent.objects.filter(action="command_kill_result")
    assert (audit.actor, audit.outcome) == ("engine:alpha", "succeeded")
    assert Engine.objects.get(pk=alpha.pk).reported_state == "HALTED"
    assert Engine.objects.get(pk=beta.pk).reported_state == "ACTIVE"
