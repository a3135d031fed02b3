"""A small in-process control plane speaking the server side of protocol v1.

The SDK is tested against a real WebSocket server (the outer boundary of the SDK); no Django and
no database are involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo

TOKEN = "engine-token-1"
HELLO = HelloInfo(
    engine_build="test-build", config_hash="cfg-1", mode="paper", broker="sim", account="acc-1"
)
# Test-friendly timings: a batch, a heartbeat and a reconnect take milliseconds.
TEST_CONFIG = ClientConfig(
    batch_interval_s=0.005,
    heartbeat_interval_s=0.2,
    backoff_initial_s=0.01,
    backoff_max_s=0.05,
    fsync=False,
)
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ClientConfig))


class FakeControlPlane:
    def __init__(self) -> None:
        self.token = TOKEN
        self.heartbeat_interval_s = 0.2
        self.send_heartbeats = True
        self.ack_events = True
        self.desired_state: p.TradingState = "ACTIVE"
        # What the next welcome carries.
        self.limits_version = 3
        self.limits: list[dict[str, Any]] = []
        # Events above this seq are "lost" on disconnect, as if never committed.
        self.commit_limit: int | None = None
        self.stored: dict[int, p.Event] = {}
        self.received_seqs: list[int] = []
        self.frames: list[bytes] = []
        self.hellos: list[p.Hello] = []
        self.command_acks: list[uuid.UUID] = []
        self.command_results: list[p.CommandResult] = []
        self.heartbeats: list[p.Heartbeat] = []
        # The close code of each connection that ended, as the engine sent it.
        self.close_codes: list[int | None] = []
        self.welcome_commands: list[p.Command] = []
        self.connection_attempts = 0
        self.connection_times: list[float] = []
        self.connection: ServerConnection | None = None
        self.server: Server | None = None
        self.close_code_for_bad_token = p.CLOSE_UNAUTHORIZED
        # The stage the welcome says (None: as a server that predates stages), and a refusal of
        # the hello instead of a welcome: the error frame, then the close code.
        self.stage: p.Stage | None = None
        self.capital_ceiling: str | None = None
        self.hello_refusal: tuple[p.Error, int] | None = None
        self._changed = asyncio.Event()

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}/ws/engine/v1"

    @property
    def last_seq(self) -> int:
        seq = 0
        while seq + 1 in self.stored:
            seq += 1
        return seq

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while not predicate():
                await self._changed.wait()

    async def handler(self, ws: ServerConnection) -> None:
        self.connection_attempts += 1
        self.connection_times.append(asyncio.get_running_loop().time())
        self._pulse()
        if ws.request is None or ws.request.headers.get("Authorization") != f"Bearer {self.token}":
            await ws.close(self.close_code_for_bad_token, "bad token")
            return
        hello = p.decode_engine_frame(await ws.recv())
        if not isinstance(hello, p.Hello):
            await ws.close(p.CLOSE_PROTOCOL_VIOLATION, "first frame must be hello")
            return
        self.hellos.append(hello)
        if self.hello_refusal is not None:
            error, code = self.hello_refusal
            await ws.send(p.encode(error).decode())
            await ws.close(code, error.code)
            self.close_codes.append(code)
            self._pulse()
            return
        welcome = p.Welcome(
            protocol=p.PROTOCOL_VERSION,
            engine_id=7,
            engine_name="alpha",
            last_seq=self.last_seq,
            heartbeat_interval_s=self.heartbeat_interval_s,
            desired_state=self.desired_state,
            limits_version=self.limits_version,
            limits=list(self.limits),
            commands=list(self.welcome_commands),
            stage=self.stage,
            capital_ceiling=self.capital_ceiling,
        )
        await ws.send(p.encode(welcome).decode())
        self.connection = ws
        self._pulse()
        heartbeats = asyncio.create_task(self._heartbeats(ws))
        try:
            async for message in ws:
                assert isinstance(message, str), "frames must be text"
                self._receive(p.decode_engine_frame(message), message.encode())
                if self.ack_events and self.received_seqs:
                    await ws.send(p.encode(p.Ack(seq=self.last_seq)).decode())
                self._pulse()
        except ConnectionClosed:
            pass
        finally:
            heartbeats.cancel()
            self.close_codes.append(ws.close_code)
            if self.connection is ws:
                self.connection = None
            if self.commit_limit is not None:
                for seq in [s for s in self.stored if s > self.commit_limit]:
                    del self.stored[seq]
            self._pulse()

    def _receive(self, frame: p.EngineFrame, raw: bytes) -> None:
        self.frames.append(raw)
        if isinstance(frame, p.Events):
            for event in frame.events:
                self.received_seqs.append(event.seq)
                # Idempotent by seq, like the real server.
                self.stored.setdefault(event.seq, event)
        elif isinstance(frame, p.CommandAck):
            self.command_acks.append(frame.command_id)
        elif isinstance(frame, p.CommandResult):
            self.command_results.append(frame)
        elif isinstance(frame, p.Heartbeat):
            self.heartbeats.append(frame)

    async def _heartbeats(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            if self.send_heartbeats:
                await ws.send(p.encode(p.ServerHeartbeat(ts=datetime.now(UTC))).decode())

    async def send(self, frame: p.ServerFrame) -> None:
        assert self.connection is not None
        await self.connection.send(p.encode(frame).decode())

    async def drop(self, code: int = 1011) -> None:
        """Close the engine's connection from the server side."""
        assert self.connection is not None
        await self.connection.close(code)

    def events_of(self, kind: type[Any]) -> list[Any]:
        return [e for _, e in sorted(self.stored.items()) if isinstance(e, kind)]


def a_metric(value: float = 1.0) -> p.MetricEvent:
    return p.MetricEvent(ts=datetime.now(UTC), name="latency_ms", value=value)


def a_fill(fill_id: str) -> p.FillEvent:
    return p.FillEvent(
        ts=datetime.now(UTC),
        fill_id=fill_id,
        client_order_id="o-1",
        symbol="AAPL",
        side="buy",
        quantity=Decimal("1"),
        price=Decimal("100.5"),
    )


def a_command(kind: p.CommandKind = "pause", **params: Any) -> p.Command:
    return p.Command(
        command_id=uuid.uuid4(),
        kind=kind,
        params=params,
        reason="test",
        issued_by="rita",
        issued_at=datetime.now(UTC),
    )


@pytest_asyncio.fixture
async def control_plane() -> AsyncIterator[FakeControlPlane]:
    plane = FakeControlPlane()
    async with serve(plane.handler, "127.0.0.1", 0) as server:
        plane.server = server
        yield plane


@pytest.fixture
def make_client(tmp_path: Any) -> Callable[..., EngineClient]:
    """Build clients with test-friendly timings; the default journal dir is shared per test.

    Keywords naming a ClientConfig field change that field of TEST_CONFIG; the others go to
    EngineClient.
    """

    def make(url: str, **overrides: Any) -> EngineClient:
        tunables = {name: overrides.pop(name) for name in CONFIG_FIELDS & overrides.keys()}
        options: dict[str, Any] = dict(
            journal_dir=tmp_path / "journal",
            hello=HELLO,
            config=dataclasses.replace(TEST_CONFIG, **tunables),
        )
        options.update(overrides)
        token = options.pop("token", TOKEN)
        return EngineClient(url, token, **options)

    return make
