"""Risk limits against paper engines over the real WebSocket to a real uvicorn process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from django.conf import settings

from alerts.models import Alert
from controlplane.models import Command, Engine, Order
from engine_sdk import protocol as p
from engine_sdk.config import ClientConfig
from engine_sdk.simulator import PaperEngine
from risk import selectors, services
from risk.models import RiskEvent, RiskLimit
from tests.controlplane.commands.test_delivery import EngineLoop, finished, wait_for
from tests.servers import UvicornServer, current_database_url

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(transactional_db: None, tmp_path: Path) -> Iterator[UvicornServer]:
    server = UvicornServer(
        database_url=current_database_url(),
        redis_url=settings.REDIS_URL,
        log_path=tmp_path / "uvicorn.log",
        env={"ENGINE_HEARTBEAT_INTERVAL_S": "0.5"},
    )
    server.start()
    yield server
    server.close()
    print(f"--- uvicorn output ---\n{server.output()[-8000:]}")


@pytest.fixture
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


def paper(server: UvicornServer, token: str, journal: Path, seed: int = 3) -> PaperEngine:
    config = ClientConfig(
        batch_interval_s=0.005, backoff_initial_s=0.05, backoff_max_s=0.3, fsync=False
    )
    return PaperEngine.create(
        f"{server.ws_url}/ws/engine/v1",
        token,
        journal_dir=journal,
        engine_options={"seed": seed, "report_every": 1, "book_path": journal / "book.msgpack"},
        config=config,
    )


async def connected(sim: PaperEngine) -> PaperEngine:
    await sim.client.start()  # type: ignore[attr-defined]
    await sim.client.wait_connected(15)  # type: ignore[attr-defined]
    return sim


def limit(actor, **fields) -> RiskLimit:
    obj = RiskLimit(**fields)
    services.limit_save(limit=obj, reason="desk policy", actor=actor)
    return obj


def test_a_fat_finger_order_is_rejected_in_the_engine_and_counted(
    server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    qty_limit = limit(risk_manager, kind="max_order_qty", threshold=Decimal(5000))
    sim = engine_loop.run(connected(paper(server, token, tmp_path / "j")))

    async def orders() -> tuple[object, object]:
        normal = sim.submit_manual("AAPL", "buy", 10)
        fat = sim.submit_manual("AAPL", "buy", 10_000)  # 1,000 times the normal size
        await sim.client.flush(15)  # type: ignore[attr-defined]
        return normal, fat

    normal, fat = engine_loop.run(orders())

    assert not isinstance(normal, str)
    assert fat == f"pre-trade limit max_order_qty (#{qty_limit.pk}): quantity 10000 exceeds 5000"
    rejected = Order.objects.get(engine=engine, status="rejected", quantity=10_000)
    assert rejected.reject_reason.startswith("pre-trade limit max_order_qty")
    revision = selectors.limits_revision()
    # The engine's heartbeats say which limits it enforces.
    wait_for(lambda: Engine.objects.get(pk=engine.pk).limits_version == revision, "the ack")
    engine_loop.run(sim.client.close())  # type: ignore[attr-defined]


def test_a_limit_change_reaches_a_connected_engine_and_the_next_order_obeys_it(
    server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    sim = engine_loop.run(connected(paper(server, token, tmp_path / "j")))
    assert not isinstance(sim.submit_manual("MSFT", "buy", 300), str)

    notional = limit(
        risk_manager,
        kind="max_order_qty",
        threshold=Decimal(200),
        scope="symbol",
        scope_value="MSFT",
    )
    revision = selectors.limits_revision()
    wait_for(
        lambda: Engine.objects.get(pk=engine.pk).limits_version == revision,
        "the engine acknowledging the new limits",
    )

    refused = sim.submit_manual("MSFT", "buy", 300)
    assert refused == f"pre-trade limit max_order_qty (#{notional.pk}): quantity 300 exceeds 200"
    assert not isinstance(sim.submit_manual("AAPL", "buy", 300), str)  # another symbol
    engine_loop.run(sim.client.close())  # type: ignore[attr-defined]


def test_a_day_loss_over_the_limit_halts_and_flattens_and_the_kill_survives_a_restart(
    server, engine_loop, engine_and_token, risk_manager, tmp_path
):
    engine, token = engine_and_token
    loss = limit(risk_manager, kind="max_daily_loss", threshold=Decimal(5000), action="kill")
    journal = tmp_path / "j"
    sim = engine_loop.run(connected(paper(server, token, journal)))

    async def trade_then_lose() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(sim.run(stop, tick_interval_s=0.005))
        async with asyncio.timeout(20):
            while not sim.positions:  # noqa: ASYNC110 - the engine's own ticks build the book
                await asyncio.sleep(0.01)
        stop.set()
        await running
        # The broker reports the account 20,000 down on the day.
        sim.client.emit(p.AccountEvent(ts=p.utc_now(), equity=sim.equity - 20_000, cash=sim.cash))

    engine_loop.run(trade_then_lose(), timeout=30)
    kill = wait_for(
        lambda: Command.objects.filter(engine=engine, kind="kill").first(), "a kill by the limit"
    )
    done = wait_for(lambda: finished(kill), "the kill carried out")

    assert kill.issued_by_label == f"limit #{loss.pk} max_daily_loss"
    assert done.status == "succeeded" and done.state_after == "HALTED"
    assert sim.positions == {} and sim.client.trading_state == "HALTED"  # type: ignore[attr-defined]
    assert RiskEvent.objects.filter(engine=engine, kind="breach").exists()
    alert = wait_for(lambda: Alert.objects.filter(engine=engine).first(), "an alert")
    assert alert.severity == "critical" and "max daily loss" in alert.summary.lower()

    # The engine restarts, even from an empty disk: it is still held HALTED.
    engine_loop.run(sim.client.close())  # type: ignore[attr-defined]
    again = engine_loop.run(connected(paper(server, token, journal)))
    assert again.client.trading_state == "HALTED"  # type: ignore[attr-defined]
    engine_loop.run(again.client.close())  # type: ignore[attr-defined]
    fresh = engine_loop.run(connected(paper(server, token, tmp_path / "empty", seed=9)))
    assert fresh.client.trading_state == "HALTED"  # type: ignore[attr-defined]
    assert isinstance(fresh.submit_manual("AAPL", "buy", 1), str)
    assert Engine.objects.get(pk=engine.pk).desired_state == "HALTED"
    engine_loop.run(fresh.client.close())  # type: ignore[attr-defined]
