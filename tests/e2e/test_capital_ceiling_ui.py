"""A step into real money in the browser, with the engine connected: an operator requests it, a
risk manager sets the target capital and approves, and the engine's SDK enforces its new capital
ceiling at once, without a reconnection."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from alerts.models import AlertRule, Notification, NotificationChannel
from controlplane.models import Engine, StageChange
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo
from engine_sdk.limits import LimitRejected
from golive import preflight
from golive.models import KillDrill, PromotionCriterion
from risk.selectors import limits_revision
from tests.controlplane.commands.test_delivery import EngineLoop
from tests.e2e.test_promotion_ui import _log_in, _request, _switch
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")


@pytest.fixture
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


def _shadow_gated_by_days_alone() -> None:
    PromotionCriterion.objects.get_or_create(
        from_stage="shadow", key="min_days", defaults={"threshold": 7, "updated_by": "test"}
    )
    PromotionCriterion.objects.filter(from_stage="shadow").exclude(key="min_days").update(
        enabled=False
    )


def _monitored_and_drilled(engine: Engine) -> None:
    """What the pre-flight asks of the desk rather than of the engine: an alert rule, a channel
    that delivered a test this week, a kill drill passed this month."""
    AlertRule.objects.get_or_create(
        name="Engine down", defaults={"metric": "heartbeat_age_s", "threshold": 30}
    )
    channel = NotificationChannel(name="desk-mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    Notification.objects.create(
        key="e2e-test",
        channel=channel,
        event=Notification.Event.TEST,
        subject="TEST",
        body="",
        status=Notification.Status.SENT,
        sent_at=timezone.now(),
    )
    KillDrill.objects.create(
        engine=engine,
        kind="kill_release",
        stage="shadow",
        reason="monthly drill",
        status="passed",
        done_at=timezone.now(),
        ack_ms=4,
        done_ms=35,
    )


def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g} s")
        time.sleep(0.05)


def test_a_promotion_to_small_capital_gives_the_connected_engine_its_ceiling_at_once(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
    engine_loop: EngineLoop,
    tmp_path: Path,
) -> None:
    _shadow_gated_by_days_alone()
    engine, token = make_engine("shadow-one", stage="shadow")
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=10))
    _monitored_and_drilled(engine)

    async def connect() -> EngineClient:
        client = EngineClient(
            f"{uvicorn_server.ws_url}/ws/engine/v1",
            token,
            journal_dir=tmp_path / "journal",
            hello=HelloInfo(
                engine_build="shadow/1", config_hash="c", mode="shadow", broker="b", account="a"
            ),
            config=ClientConfig(batch_interval_s=0.01, fsync=False),
        )
        await client.start()
        await client.wait_connected(15)
        now = p.utc_now()
        client.emit(p.MetricEvent(ts=now, name="quote_age_ms", value=120.0))
        client.emit(p.MetricEvent(ts=now, name="broker_connected", value=1.0))
        # 100 AAPL bought at 200 (in shadow, simulated), the position the broker then reports.
        order_id = client.new_order_id()
        client.emit(
            p.OrderEvent(
                ts=now,
                client_order_id=order_id,
                symbol="AAPL",
                side="buy",
                order_type="market",
                quantity=Decimal(100),
                status="filled",
                filled_quantity=Decimal(100),
            )
        )
        client.emit(
            p.FillEvent(
                ts=now,
                fill_id=f"{order_id}-1",
                client_order_id=order_id,
                symbol="AAPL",
                side="buy",
                quantity=Decimal(100),
                price=Decimal(200),
            )
        )
        client.emit(
            p.PositionEvent(ts=now, symbol="AAPL", quantity=Decimal(100), avg_price=Decimal(200))
        )
        await client.flush(15)
        return client

    client: EngineClient = engine_loop.run(connect())
    assert (client.stage, client.capital_ceiling) == ("shadow", None)
    connection = Engine.objects.get(pk=engine.pk).connection_id
    # Its heartbeats tell the limits it enforces and its clock: the last checks to pass.
    _until(
        lambda: Engine.objects.filter(
            pk=engine.pk, limits_version=limits_revision(), clock_offset_ms__isnull=False
        ).exists(),
        "a heartbeat with the current limits",
    )

    _log_in(page, uvicorn_server, operator)
    _request(page, uvicorn_server, "shadow-one", "ten days of shadow, slippage as modelled")

    _switch(page, uvicorn_server, risk_manager, "shadow-one")
    capital = page.locator("#capital")
    expect(capital.locator('[data-capital="target"]')).to_have_text("not set")
    capital.get_by_label("Target capital").fill("200000")
    capital.get_by_label("Reason", exact=True).fill("the desk's allocation to this strategy")
    page.get_by_role("button", name="Set the target capital").click()
    expect(capital.locator('[data-capital="target"]')).to_have_text("200,000.00")
    # No ceiling in shadow: it comes with the first real-money stage.
    expect(capital.locator('[data-capital="ceiling"]')).to_have_text("none")
    engine.refresh_from_db()
    assert preflight.failures(engine, timezone.now()) == []

    page.get_by_label("Reason (required to reject or to override)").fill("checked the record")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".messages")).to_contain_text(
        "shadow-one promoted (Shadow → Small capital)"
    )
    expect(capital.locator('[data-capital="share"]')).to_have_text("25 %")
    expect(capital.locator('[data-capital="ceiling"]')).to_have_text("50,000.00")
    page.screenshot(path=str(SCREENSHOTS / "promotion-small-capital.png"), full_page=True)

    # The engine learns its stage and ceiling at once, on the same connection.
    _until(lambda: client.capital_ceiling == Decimal("50000.00"), "the ceiling reached the SDK")
    assert client.stage == "small_capital"
    assert Engine.objects.get(pk=engine.pk).connection_id == connection
    # 100 AAPL at 200 held: 20,000 of the 50,000. An order for 160 more at 200 would make
    # 52,000: refused before it reaches a broker; 150 more make exactly 50,000.
    with pytest.raises(LimitRejected) as refused:
        client.check_order("AAPL", "buy", 160, 100, price=200)
    assert refused.value.limit_kind == "capital_ceiling"
    assert "gross exposure would be 52000.00" in refused.value.reason
    client.check_order("AAPL", "buy", 150, 100, price=200)
    engine_loop.run(client.close(flush_timeout=2))
