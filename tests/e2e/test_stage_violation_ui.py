"""A live-mode hello from a paper-stage engine, seen from the operator's side: a real SDK engine is
refused at the door, and the screens show it held HALTED for its stage with the critical alert of
the rule "Stage violations"."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from alerts.models import AlertRule
from controlplane.models import Engine
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo
from engine_sdk.errors import StageForbidsLive
from tests.conftest import PASSWORD
from tests.controlplane.commands.test_delivery import EngineLoop
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")
REFUSAL = (
    "engine rogue-one is at stage paper, which sends no real orders: a live-mode hello is "
    "refused until it is promoted to small capital"
)


@pytest.fixture
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


def _say_hello_live(loop: EngineLoop, server: UvicornServer, token: str, tmp_path: Path) -> str:
    """A real client over the real socket, saying hello in live mode; returns how it stopped."""

    async def run() -> str:
        client = EngineClient(
            f"{server.ws_url}/ws/engine/v1",
            token,
            journal_dir=tmp_path / "journal",
            hello=HelloInfo(
                engine_build="rogue/1", config_hash="c", mode="live", broker="b", account="a"
            ),
            config=ClientConfig(backoff_initial_s=0.05, backoff_max_s=0.5, fsync=False),
        )
        await client.start()
        try:
            with pytest.raises(StageForbidsLive) as refused:
                await client.wait_connected(15)
            return str(refused.value)
        finally:
            await client.close(flush_timeout=1)

    return loop.run(run())


@pytest.mark.parametrize("width", [1280, 390])
def test_a_live_hello_at_paper_shows_the_engine_halted_for_its_stage_and_the_alert(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
    engine_loop: EngineLoop,
    tmp_path: Path,
    width: int,
) -> None:
    # The rule migration 0006 ships (a transactional test before this one may have flushed it).
    AlertRule.objects.get_or_create(
        name="Stage violations",
        defaults={"metric": "stage_violation", "severity": "critical", "threshold": 0},
    )
    _, token = make_engine("rogue-one", mode="paper")
    make_engine("calm-one", mode="paper")

    message = _say_hello_live(engine_loop, uvicorn_server, token, tmp_path)
    assert REFUSAL in message

    page.set_viewport_size({"width": width, "height": 800})
    page.goto(f"{uvicorn_server.url}/login/")
    page.get_by_label("Username").fill(operator.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    row = page.locator('tr[data-engine="rogue-one"]')
    expect(row).to_contain_text("HALTED")
    expect(page.locator('tr[data-engine="calm-one"]')).not_to_contain_text("HALTED")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"stage-violation-fleet-{width}.png"), full_page=True)

    # The engine page draws its charts after load; what is asserted is in the HTML.
    page.goto(f"{uvicorn_server.url}/engines/rogue-one/", wait_until="domcontentloaded")
    expect(page.get_by_text("HALTED").first).to_be_visible()
    expect(page.get_by_text("live-mode hello refused: engine at stage paper")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / f"stage-violation-engine-{width}.png"), full_page=True)

    page.goto(f"{uvicorn_server.url}/alerts/")
    alert = page.locator("#open-alerts tr", has_text="rogue-one")
    expect(alert.locator(".alert-rule")).to_have_text("Stage violations")
    expect(alert).to_contain_text(re.compile("critical", re.IGNORECASE))
    expect(alert).to_contain_text("live mode at stage paper")
    page.screenshot(path=str(SCREENSHOTS / f"stage-violation-alerts-{width}.png"), full_page=True)
