"""Commands reach real engines: SDK clients over the real WebSocket to a real uvicorn process.

The engines run in an asyncio loop on a thread of their own while the test, on the main thread,
issues commands through the services and reads what the server stored, as an operator's request
and the web process would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from controlplane.commands import delivery, issuing, resume
from controlplane.models import AuditEvent, Command, Order
from controlplane.redis_clients import make_config
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient, HelloInfo
from engine_sdk.gate import OrderRejected
from engine_sdk.simulator import PaperEngine
from tests.servers import UvicornServer, current_database_url

pytestmark = pytest.mark.django_db(transaction=True)

# Long enough that a command arriving sooner came by the push, not by the heartbeat check.
SLOW_HEARTBEAT_S = "30"
FAST_HEARTBEAT_S = "0.3"
WAIT_S = 15.0


class EngineLoop:
    """An asyncio loop on a thread, hosting the engines of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = WAIT_S) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


def serve(tmp_path: Path, heartbeat_s: str) -> UvicornServer:
    server = UvicornServer(
        database_url=current_database_url(),
        redis_url=settings.REDIS_URL,
        log_path=tmp_path / "uvicorn.log",
        env={"ENGINE_HEARTBEAT_INTERVAL_S": heartbeat_s},
    )
    server.start()
    return server


@pytest.fixture
def slow_server(transactional_db: None, tmp_path: Path) -> Iterator[UvicornServer]:
    server = serve(tmp_path, SLOW_HEARTBEAT_S)
    yield server
    server.close()
    print(f"--- uvicorn output ---\n{server.output()[-8000:]}")


@pytest.fixture
def fast_server(transactional_db: None, tmp_path: Path) -> Iterator[UvicornServer]:
    server = serve(tmp_path, FAST_HEARTBEAT_S)
    yield server
    server.close()
    print(f"--- uvicorn output ---\n{server.output()[-8000:]}")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f}s")
        # The state is in another process's database writes: there is no event to await.
        time.sleep(0.02)
    return value


class CountingHandler:
    """An engine's command handler that records each command it is asked to carry out."""

    def __init__(self) -> None:
        self.calls: Counter[uuid.UUID] = Counter()
        self.received_at: dict[uuid.UUID, float] = {}

    async def __call__(self, command: p.Command) -> CommandOutcome:
        self.calls[command.command_id] += 1
        self.received_at.setdefault(command.command_id, time.monotonic())
        states = {"kill": "HALTED", "pause": "PAUSED", "resume": "ACTIVE", "reduce": "REDUCING"}
        return CommandOutcome(
            status="succeeded", detail="test engine", trading_state=states.get(command.kind)
        )


class AckTimingClient(EngineClient):
    """Notes when each command_ack leaves for the socket (wall clock, to compare with orders)."""

    ack_sent_at: list[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every frame of the connection goes through its send.
        send = self.connection.send

        async def timed_send(ws: Any, data: bytes) -> None:
            if b'"type":"command_ack"' in data:
                self.ack_sent_at.append(time.time())
            await send(ws, data)

        self.connection.send = timed_send  # type: ignore[method-assign]


def plain_client(
    server: UvicornServer,
    token: str,
    journal: Path,
    cls: type[EngineClient] = EngineClient,
    **kwargs: Any,
) -> EngineClient:
    hello = HelloInfo(engine_build="t", config_hash="t", mode="paper", broker="sim", account="a")
    config = ClientConfig(
        batch_interval_s=0.005, backoff_initial_s=0.05, backoff_max_s=0.3, fsync=False
    )
    url = f"{server.ws_url}/ws/engine/v1"
    return cls(url, token, journal_dir=journal, hello=hello, config=config, **kwargs)


async def started(client: EngineClient) -> EngineClient:
    await client.start()
    await client.wait_connected(WAIT_S)
    return client


def finished(command: Command) -> Command | None:
    command.refresh_from_db()
    return command if command.status not in Command.OPEN else None


def test_a_kill_is_pushed_to_a_connected_engine_at_once(
    slow_server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    handler = CountingHandler()
    client = engine_loop.run(
        started(plain_client(slow_server, token, tmp_path / "j", on_command=handler))
    )

    batch = issuing.command_issue(
        kind="kill",
        selector="engine:alpha",
        reason="stop",
        actor=risk_manager,
        confirmation="alpha",
    )
    command = batch.commands.get()

    # Well before the first heartbeat (30 s): only the push can have brought it.
    done = wait_for(lambda: finished(command), "killed", timeout=10)
    assert done.status == "succeeded" and done.state_after == "HALTED"
    assert done.delivered_at and done.acknowledged_at and done.completed_at
    assert client.trading_state == "HALTED"
    assert handler.calls == {command.pk: 1}
    engine.refresh_from_db()
    assert (engine.desired_state, engine.reported_state) == ("HALTED", "HALTED")
    result = AuditEvent.objects.get(action="command_kill_result")
    assert (result.actor, result.outcome) == ("engine:alpha", "succeeded")
    engine_loop.run(client.close())


def test_a_kill_issued_while_the_engine_is_offline_is_obeyed_on_reconnect(
    fast_server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    _, token = engine_and_token
    journal = tmp_path / "journal"
    book = tmp_path / "book.msgpack"

    def paper() -> PaperEngine:
        return PaperEngine.create(
            f"{fast_server.ws_url}/ws/engine/v1",
            token,
            journal_dir=journal,
            engine_options={"seed": 5, "report_every": 1, "book_path": book},
            config=ClientConfig(batch_interval_s=0.005, backoff_initial_s=0.05, fsync=False),
        )

    async def trade_then_stop() -> dict[str, Decimal]:
        sim = paper()
        await started(sim.client)  # type: ignore[arg-type]
        stop = asyncio.Event()
        running = asyncio.create_task(sim.run(stop, tick_interval_s=0.005))
        async with asyncio.timeout(WAIT_S):
            while not (sim.positions and sim.working):  # noqa: ASYNC110 - the engine's own ticks
                await asyncio.sleep(0.01)
        stop.set()
        await running
        await sim.client.close(flush_timeout=5)  # type: ignore[attr-defined]
        return dict(sim.positions)

    held = engine_loop.run(trade_then_stop())
    assert held
    batch = issuing.command_issue(
        kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
    )
    command = batch.commands.get()
    assert command.status == "pending"  # nobody to deliver it to

    async def come_back() -> PaperEngine:
        sim = paper()
        await started(sim.client)  # type: ignore[arg-type]
        return sim

    sim = engine_loop.run(come_back())
    done = wait_for(lambda: finished(command), "killed after reconnecting")

    assert done.status == "succeeded", done.detail
    assert done.state_after == "HALTED"
    assert sim.positions == {} and sim.working == {}
    assert set(done.result["traded"]) == set(held)
    with pytest.raises(OrderRejected):
        sim.client.check_order("AAPL", "buy", 1, 0)
    engine_loop.run(sim.client.close(flush_timeout=5))  # type: ignore[attr-defined]


def test_no_order_is_accepted_after_the_kill_is_acknowledged(
    slow_server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    client = plain_client(slow_server, token, tmp_path / "j", cls=AckTimingClient)
    assert isinstance(client, AckTimingClient)
    client.ack_sent_at = []
    engine_loop.run(started(client))
    accepted: list[tuple[int, float]] = []
    rejected: list[float] = []
    stop = threading.Event()

    async def burst() -> None:
        # An engine submitting orders as fast as it can, each through the gate first.
        n = 0
        while not stop.is_set():
            n += 1
            try:
                client.check_order("AAPL", "buy", 1, 0)
            except OrderRejected:
                rejected.append(time.time())
            else:
                client.emit(
                    p.OrderEvent(
                        ts=p.utc_now(),
                        client_order_id=f"o-{n}",
                        symbol="AAPL",
                        side="buy",
                        order_type="market",
                        quantity=Decimal(1),
                        status="accepted",
                    )
                )
                accepted.append((n, time.time()))
            await asyncio.sleep(0)

    bursting = asyncio.run_coroutine_threadsafe(burst(), engine_loop.loop)
    wait_for(lambda: len(accepted) > 200, "orders flowing")
    batch = issuing.command_issue(
        kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
    )
    command = wait_for(lambda: finished(batch.commands.get()), "killed")
    wait_for(lambda: len(rejected) > 50, "orders rejected after the kill")
    stop.set()
    bursting.result(WAIT_S)
    engine_loop.run(client.flush(WAIT_S))

    (acknowledged,) = client.ack_sent_at
    late = [n for n, at in accepted if at >= acknowledged]
    assert late == [], f"orders accepted after the kill was acknowledged: {late[:5]}"
    # And the server's record agrees: every stored order was sent before the acknowledgement.
    newest = Order.objects.filter(engine=engine).order_by("-created_at").first()
    assert newest is not None and newest.created_at <= command.acknowledged_at
    engine_loop.run(client.close())


def test_the_same_command_delivered_twice_is_applied_once(
    fast_server, engine_loop, engine_and_token, operator, tmp_path
):
    _, token = engine_and_token
    handler = CountingHandler()
    client = engine_loop.run(
        started(plain_client(fast_server, token, tmp_path / "j", on_command=handler))
    )
    batch = issuing.command_issue(
        kind="reduce", selector="all", reason="x", actor=operator, params={"target_pct": 50}
    )
    command = wait_for(lambda: finished(batch.commands.get()), "reduced")
    # As if the delivery mark had been lost: the heartbeat check sends the command again.
    Command.objects.filter(pk=command.pk).update(status="pending", delivery_attempts=0)

    again = wait_for(
        lambda: Command.objects.filter(pk=command.pk, status="succeeded").first(),
        "answered again",
    )

    assert again.delivery_attempts >= 1
    assert handler.calls == {command.pk: 1}
    engine_loop.run(client.close())


def test_with_redis_down_at_issue_time_the_kill_arrives_within_a_heartbeat(
    fast_server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    _, token = engine_and_token
    handler = CountingHandler()
    client = engine_loop.run(
        started(plain_client(fast_server, token, tmp_path / "j", on_command=handler))
    )
    # The issuing side's Redis is unreachable: the push fails, the issue must not.
    unreachable = "redis://127.0.0.1:1/0"
    with override_settings(REDIS_URL=unreachable, REDIS_CONFIG=make_config(unreachable, [], "")):
        batch = issuing.command_issue(
            kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
        )
        command = batch.commands.get()
        frames = delivery.frames_for(
            [(command.engine_id, command.pk)],
            kind="kill",
            params=command.params,
            reason="x",
            issued_by="x",
            issued_at=command.created_at,
            expires_at=None,
        )
        assert not delivery.push(frames)
    command = batch.commands.get()

    done = wait_for(lambda: finished(command), "killed through the heartbeat check")

    assert done.status == "succeeded" and client.trading_state == "HALTED"
    assert handler.calls == {command.pk: 1}
    engine_loop.run(client.close())


def test_an_engine_back_active_while_halted_gets_a_kill_before_anything_else(
    fast_server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    handler = CountingHandler()
    first = engine_loop.run(
        started(plain_client(fast_server, token, tmp_path / "j1", on_command=handler))
    )
    batch = issuing.command_issue(
        kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
    )
    wait_for(lambda: finished(batch.commands.get()), "killed")
    engine_loop.run(first.close())

    # The engine comes back from a fresh disk: ACTIVE, with no memory of the kill.
    states: list[str] = []

    async def fresh() -> EngineClient:
        client = plain_client(fast_server, token, tmp_path / "j2", on_command=handler)
        client.gate.on_change = lambda change: states.append(change.new)
        return await started(client)

    second = engine_loop.run(fresh())
    latched = wait_for(
        lambda: (
            Command.objects.filter(engine=engine, kind="kill", status="succeeded")
            .exclude(batch=batch)
            .first()
        ),
        "a second kill",
    )

    assert latched.issued_by_label == "control plane (latched state)"
    assert second.trading_state == "HALTED"
    assert states[0] == "HALTED"  # halted on the welcome, before any order could go out
    engine.refresh_from_db()
    assert engine.desired_state == "HALTED"
    engine_loop.run(second.close())


def test_a_stale_resume_cannot_lift_a_kill(
    fast_server, engine_loop, engine_and_token, operator, risk_manager, tmp_path
):
    engine, token = engine_and_token
    client = engine_loop.run(started(plain_client(fast_server, token, tmp_path / "j")))
    pause = issuing.command_issue(kind="pause", selector="all", reason="x", actor=operator)
    wait_for(lambda: finished(pause.commands.get()), "paused")
    kill = issuing.command_issue(
        kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
    )
    wait_for(lambda: finished(kill.commands.get()), "killed")
    # A resume from before the kill, replayed (say by a proxy), carries no approval and is older.
    stale = Command.objects.create(
        engine=engine, kind="resume", reason="old", issued_by_label="otto-operator"
    )
    Command.objects.filter(pk=stale.pk).update(created_at=pause.created_at)

    done = wait_for(lambda: finished(stale), "answered")

    assert done.status == "failed"
    assert "stale resume" in done.detail
    assert client.trading_state == "HALTED"
    engine_loop.run(client.close())


def test_an_approved_resume_lifts_the_kill(
    fast_server,
    engine_loop,
    engine_and_token,
    operator,
    risk_manager,
    second_risk_manager,
    tmp_path,
):
    engine, token = engine_and_token
    client = engine_loop.run(started(plain_client(fast_server, token, tmp_path / "j")))
    kill = issuing.command_issue(
        kind="kill", selector="all", reason="x", actor=risk_manager, confirmation="KILL ALL"
    )
    wait_for(lambda: finished(kill.commands.get()), "killed")
    request = resume.resume_request_create(engine=engine, reason="fixed", actor=operator)

    command = resume.resume_request_approve(resume_request=request, actor=second_risk_manager)
    done = wait_for(lambda: finished(command), "resumed")

    assert done.status == "succeeded" and done.state_after == "ACTIVE"
    assert client.trading_state == "ACTIVE"
    engine_loop.run(client.close())
