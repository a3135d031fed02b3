"""A kill drill in the browser: a risk manager presses "Run kill drill" on a paper engine's go-live
page; the simulated engine, connected over the real socket, is killed and released, and the page
shows the drill passed with its latencies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.models import Engine
from engine_sdk.client import ClientConfig, HelloInfo
from engine_sdk.simulator import PaperEngine
from golive.models import KillDrill
from tests.conftest import PASSWORD
from tests.controlplane.commands.test_delivery import EngineLoop
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

MakeEngine = Callable[..., tuple[Engine, str]]
SETTLE_S = 30.0


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def _settled(engine: Engine) -> KillDrill:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        drill = KillDrill.objects.filter(engine=engine).first()
        if drill is not None and drill.status not in KillDrill.OPEN:
            return drill
        # The outcome is written by the server's process; the page is not live: poll the row.
        time.sleep(0.05)
    raise AssertionError(f"the drill of {engine.name} did not settle in {SETTLE_S} s")


def test_a_risk_manager_runs_a_kill_drill_and_sees_it_passed_with_its_latency(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    operator: User,
    make_engine: MakeEngine,
    tmp_path: Path,
) -> None:
    engine, token = make_engine("drill-me", mode="paper")
    loop = EngineLoop()

    async def begin() -> PaperEngine:
        sim = PaperEngine.create(
            f"{uvicorn_server.ws_url}/ws/engine/v1",
            token,
            journal_dir=tmp_path / "engine",
            engine_options={"seed": 3},
            hello=HelloInfo(
                engine_build="paper-sim/e2e",
                config_hash="c",
                mode="paper",
                broker="paper-sim",
                account="a",
            ),
            config=ClientConfig(batch_interval_s=0.005, backoff_initial_s=0.05, fsync=False),
        )
        await sim.client.start()  # type: ignore[attr-defined]
        await sim.client.wait_connected(15)  # type: ignore[attr-defined]
        return sim

    sim: PaperEngine = loop.run(begin())
    try:
        # An operator has no kill right: no drill button for them.
        _log_in(page, uvicorn_server, operator)
        page.goto(f"{uvicorn_server.url}/engines/drill-me/go-live/")
        expect(page.locator("#drills")).to_contain_text("No kill drill recorded.")
        expect(page.get_by_role("button", name="Run kill drill")).to_have_count(0)
        page.get_by_role("button", name="Log out").click()

        _log_in(page, uvicorn_server, risk_manager)
        page.goto(f"{uvicorn_server.url}/engines/drill-me/go-live/")
        drills = page.locator("#drills")
        expect(drills).to_contain_text("a real kill of the engine, released by the drill")
        page.get_by_label("Why drill now").fill("monthly kill drill")
        page.get_by_role("button", name="Run kill drill").click()
        expect(page.locator(".messages")).to_contain_text("Kill drill of drill-me started")

        drill = _settled(engine)
        assert drill.status == "passed", drill.detail
        page.reload()
        row = drills.locator(f'tr[data-drill="{drill.pk}"]')
        expect(row.locator(".drill-outcome")).to_have_text("passed")
        expect(row).to_contain_text(f"{drill.done_ms} ms")
        expect(row).to_contain_text(f"{drill.ack_ms} ms")
        expect(row).to_contain_text("rita-risk")
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS_DIR / "kill-drill.png"), full_page=True)
        engine.refresh_from_db()
        assert engine.desired_state == "ACTIVE"
    finally:

        async def end() -> None:
            await sim.client.close(flush_timeout=2)  # type: ignore[attr-defined]

        try:
            loop.run(end())
        finally:
            loop.close()
