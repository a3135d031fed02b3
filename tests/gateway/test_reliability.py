"""Nothing lost, nothing counted twice: the SDK against a real uvicorn, PostgreSQL and Redis,
with the network cut, the web process restarted and PostgreSQL refusing writes mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from controlplane.models import Engine, EngineEvent, Fill
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo
from tests.servers import SERVER_APPLICATION_NAME, UvicornServer

pytestmark = pytest.mark.django_db(transaction=True)

ORDERS = 150
FILLS_PER_ORDER = 4


class TcpCutter:
    """A loopback TCP proxy whose connections can be cut at once, like a network failure."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.connections += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.connections:
            writer.transport.abort()
        self.connections.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


def hello() -> HelloInfo:
    return HelloInfo(engine_build="t", config_hash="t", mode="paper", broker="sim", account="a")


def client_for(url: str, token: str, journal: Path) -> EngineClient:
    config = ClientConfig(
        batch_max_events=50,
        batch_interval_s=0.005,
        backoff_initial_s=0.05,
        backoff_max_s=0.3,
        fsync=False,
    )
    return EngineClient(url, token, journal_dir=journal, hello=hello(), config=config)


def emit_orders(client: EngineClient, first: int, last: int) -> None:
    for n in range(first, last):
        coid = f"o-{n}"
        client.emit(
            p.OrderEvent(
                ts=p.utc_now(),
                client_order_id=coid,
                symbol="AAPL",
                side="buy",
                order_type="market",
                quantity=Decimal(FILLS_PER_ORDER),
                status="accepted",
            )
        )
        for k in range(FILLS_PER_ORDER):
            client.emit(
                p.FillEvent(
                    ts=p.utc_now(),
                    fill_id=f"f-{n}-{k}",
                    client_order_id=coid,
                    symbol="AAPL",
                    side="buy",
                    quantity=Decimal(1),
                    price=Decimal("100") + k,
                )
            )


async def wait_acked_some(client: EngineClient) -> None:
    async with asyncio.timeout(20):
        # The client exposes no per-ack event; a short poll under a deadline is the next best.
        while client.acked_seq == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def assert_everything_stored_once(engine: Engine, orders: int) -> None:
    fills = list(Fill.objects.filter(engine=engine).values_list("fill_id", flat=True))
    assert len(fills) == orders * FILLS_PER_ORDER
    assert len(set(fills)) == len(fills)
    total = orders * (1 + FILLS_PER_ORDER)
    assert EngineEvent.objects.filter(engine=engine, kind__in=["order", "fill"]).count() == total
    # Anything else is the SDK's own state events: on a slow machine a restart can outlast the
    # dead-man's 15 s, which pauses the engine and resumes it when the server is back.
    others = EngineEvent.objects.filter(engine=engine).exclude(kind__in=["order", "fill"])
    assert set(others.values_list("kind", flat=True)) <= {"state"}
    engine.refresh_from_db()
    assert engine.last_seq == total + others.count()
    assert engine.positions.get().quantity == Decimal(orders * FILLS_PER_ORDER)


@contextlib.asynccontextmanager
async def running(client: EngineClient) -> AsyncIterator[EngineClient]:
    await client.start()
    try:
        yield client
    finally:
        await client.close(flush_timeout=5)


def test_an_engine_cut_off_mid_stream_replays_and_every_fill_is_stored_once(
    uvicorn_server: UvicornServer, engine_and_token, tmp_path: Path
):
    engine, token = engine_and_token

    async def scenario() -> None:
        cutter = TcpCutter(uvicorn_server.port)
        port = await cutter.start()
        client = client_for(f"ws://127.0.0.1:{port}/ws/engine/v1", token, tmp_path / "j")
        async with running(client):
            emit_orders(client, 0, ORDERS)
            await wait_acked_some(client)
            assert client.acked_seq < client.last_seq  # the cut lands mid-stream
            cutter.cut()
            await client.flush(timeout=30)
        await cutter.close()

    asyncio.run(scenario())
    assert_everything_stored_once(engine, ORDERS)


def test_a_restarted_engine_resumes_from_its_journal(
    uvicorn_server: UvicornServer, engine_and_token, tmp_path: Path
):
    engine, token = engine_and_token
    url = f"{uvicorn_server.ws_url}/ws/engine/v1"

    async def first_life() -> None:
        client = client_for(url, token, tmp_path / "j")
        await client.start()
        emit_orders(client, 0, ORDERS)
        await wait_acked_some(client)
        # Dies without flushing: what was journaled but not acked must survive.
        await client.close(flush_timeout=0)

    async def second_life() -> None:
        client = client_for(url, token, tmp_path / "j")
        async with running(client):
            emit_orders(client, ORDERS, ORDERS + 10)
            await client.flush(timeout=30)

    asyncio.run(first_life())
    asyncio.run(second_life())
    assert_everything_stored_once(engine, ORDERS + 10)


def test_the_web_process_restarting_mid_stream_loses_nothing(
    uvicorn_server: UvicornServer, engine_and_token, tmp_path: Path
):
    engine, token = engine_and_token

    async def scenario() -> None:
        client = client_for(f"{uvicorn_server.ws_url}/ws/engine/v1", token, tmp_path / "j")
        async with running(client):
            emit_orders(client, 0, ORDERS)
            await wait_acked_some(client)
            await asyncio.to_thread(uvicorn_server.restart)
            emit_orders(client, ORDERS, ORDERS + 20)
            await client.flush(timeout=30)

    asyncio.run(scenario())
    assert_everything_stored_once(engine, ORDERS + 20)


def test_postgresql_refusing_writes_stops_the_acks_and_the_sdk_replays_afterwards(
    uvicorn_server: UvicornServer, engine_and_token, tmp_path: Path
):
    engine, token = engine_and_token
    database = connection.settings_dict["NAME"]

    def set_read_only(on: bool) -> None:
        action = (
            "SET default_transaction_read_only = on"
            if on
            else "RESET default_transaction_read_only"
        )
        try:
            with connection.cursor() as cursor:
                # A connection opened while the database refuses writes is read-only too.
                cursor.execute("SET default_transaction_read_only = off")
                cursor.execute(f'ALTER DATABASE "{database}" {action}')
                # The setting reaches new connections only: the server's pooled ones are cut
                # (as a failover would), and it opens new ones, which refuse writes, and
                # afterwards take them again.
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = %s",
                    [database, SERVER_APPLICATION_NAME],
                )
        finally:
            connection.close()  # this thread's own connection must not outlive the test

    async def scenario() -> None:
        client = client_for(f"{uvicorn_server.ws_url}/ws/engine/v1", token, tmp_path / "j")
        async with running(client):
            emit_orders(client, 0, 10)
            await client.flush(timeout=30)
            acked_before = client.acked_seq
            await asyncio.to_thread(set_read_only, True)
            try:
                emit_orders(client, 10, ORDERS)
                await asyncio.sleep(1.0)  # a second of refused writes, by design of the test
                assert client.acked_seq == acked_before, "nothing may be acked while refused"
                assert client.backlog > 0
            finally:
                await asyncio.to_thread(set_read_only, False)
            await client.flush(timeout=30)

    asyncio.run(scenario())
    assert_everything_stored_once(engine, ORDERS)
