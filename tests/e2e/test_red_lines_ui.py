"""A red line against the real server: a shadow engine run by the paper simulator, connected over
the real socket, logs critical errors; the red-line task finds the line crossed, the engine is
paused (it says so itself) and demoted to paper through the audited stage change, and its go-live
page shows the event."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from alerts.models import Alert, AlertRule
from controlplane.models import Command, Engine, EngineLog, StageChange
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, HelloInfo
from engine_sdk.simulator import PaperEngine
from golive import tasks
from golive.models import RedLine, RedLineEvent
from tests.conftest import PASSWORD
from tests.controlplane.commands.test_delivery import EngineLoop, wait_for
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

MakeEngine = Callable[..., tuple[Engine, str]]


def test_a_simulated_shadow_engine_crosses_a_red_line_and_is_paused_and_demoted_to_paper(
    page: Page,
    uvicorn_server: UvicornServer,
    viewer: User,
    make_engine: MakeEngine,
    tmp_path: Path,
) -> None:
    # The rule alerts/0010 ships (a transactional test before this one may have flushed it), and
    # the shipped red line of critical errors: 3 in 24 hours.
    AlertRule.objects.get_or_create(
        name="Red lines", defaults={"metric": "red_line", "severity": "critical", "threshold": 0}
    )
    RedLine.objects.get_or_create(
        kind="critical_errors", defaults={"threshold": 3, "window": 24, "version": 1}
    )
    engine, token = make_engine("red-sim", stage="shadow")
    assert engine.mode == "shadow"
    loop = EngineLoop()

    async def begin() -> PaperEngine:
        sim = PaperEngine.create(
            f"{uvicorn_server.ws_url}/ws/engine/v1",
            token,
            journal_dir=tmp_path / "engine",
            engine_options={"seed": 5},
            hello=HelloInfo(
                engine_build="paper-sim/e2e",
                config_hash="c",
                mode="shadow",
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
        assert tasks.red_lines_engine(engine.pk) == 0  # nothing crossed yet

        async def critical(n: int) -> None:
            now = datetime.now(UTC)
            sim.client.emit(p.LogEvent(ts=now, level="critical", message=f"broker link lost #{n}"))

        for n in range(3):
            loop.run(critical(n))
        wait_for(
            lambda: EngineLog.objects.filter(engine=engine, level="critical").count() == 3,
            "the three critical logs stored by the server",
        )

        assert tasks.red_lines_engine(engine.pk) == 1
        event = RedLineEvent.objects.get(engine=engine)
        assert event.kind == "critical_errors" and event.value == 3
        assert (event.stage, event.action, event.to_stage) == ("shadow", "demote", "paper")
        assert [m for _, m in event.figures["data"]["latest"]][-1] == "broker link lost #0"
        # The pause went over the socket and the simulated engine carried it out.
        pause = wait_for(
            lambda: Command.objects.filter(
                pk=event.command_id, kind="pause", status="succeeded"
            ).first(),
            "the pause carried out by the engine",
        )
        assert pause.params == {"cancel_open": True}
        assert sim.client.trading_state == "PAUSED"  # type: ignore[attr-defined]
        engine.refresh_from_db()
        assert engine.stage == "paper" and engine.desired_state == "PAUSED"
        change = StageChange.objects.filter(engine=engine).order_by("-at", "-pk").first()
        assert (change.from_stage, change.to_stage) == ("shadow", "paper")
        assert change.actor_label.startswith("red line #")
        alert = Alert.objects.get(engine=engine, source__startswith="red_line")
        assert alert.severity == "critical" and alert.pk == event.alert_id
        # Once per crossing: the next minute's run does nothing more.
        assert tasks.red_lines_engine(engine.pk) == 0
        assert Command.objects.filter(engine=engine, kind="pause").count() == 1

        page.goto(f"{uvicorn_server.url}/login/")
        page.get_by_label("Username").fill(viewer.username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
        page.goto(f"{uvicorn_server.url}/engines/red-sim/go-live/")
        row = page.locator(f'#red-lines tr[data-red-line-event="{event.pk}"]')
        expect(row).to_contain_text("Critical errors the engine logged")
        expect(row.locator(".red-line-value")).to_have_text("3")
        expect(row).to_contain_text("at least 3 errors over 24 hours")
        expect(row.locator(".red-line-action")).to_have_text("paused, Shadow → Paper")
        expect(page.locator(".stage-step.current")).to_have_text("Paper")
        ARTIFACTS_DIR.mkdir(exist_ok=True)
        page.locator("#red-lines").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS_DIR / "red-lines-1280.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        expect(row).to_be_visible()
        page.locator("#red-lines").screenshot(path=str(ARTIFACTS_DIR / "red-lines-390.png"))
    finally:

        async def end() -> None:
            await sim.client.close(flush_timeout=2)  # type: ignore[attr-defined]

        try:
            loop.run(end())
        finally:
            loop.close()
