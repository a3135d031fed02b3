"""Capabilities seen from the operator's side: a real SDK engine says in its hello (with a run id)
that it handles kill and flatten only; a pause issued to it fails unsent, and its page shows what
it said and flags the pause, with the "Cannot enforce" alert on the alerts page."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from alerts.models import AlertRule
from controlplane.commands.issuing import command_issue
from controlplane.models import Command, Engine
from engine_sdk.client import ClientConfig, EngineClient, HelloInfo
from engine_sdk.protocol import Capabilities
from tests.conftest import PASSWORD
from tests.controlplane.commands.test_delivery import EngineLoop
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")


@pytest.fixture
def engine_loop() -> Iterator[EngineLoop]:
    loop = EngineLoop()
    yield loop
    loop.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_a_command_the_engine_cannot_enforce_is_flagged_on_its_page(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
    engine_loop: EngineLoop,
    tmp_path: Path,
    width: int,
) -> None:
    # The rule migration alerts/0011 ships (a transactional test may have flushed it).
    AlertRule.objects.get_or_create(
        name="Cannot enforce",
        defaults={"metric": "capability_missing", "severity": "warning", "threshold": 0},
    )
    engine, token = make_engine("narrow-one", mode="paper")
    client = EngineClient(
        f"{uvicorn_server.ws_url}/ws/engine/v1",
        token,
        journal_dir=tmp_path / "journal",
        hello=HelloInfo(
            engine_build="narrow/1",
            config_hash="c",
            mode="paper",
            broker="b",
            account="a",
            run_id="bt-2026-11-23",
            capabilities=Capabilities(commands=["kill", "flatten"], limit_kinds=[]),
        ),
        config=ClientConfig(backoff_initial_s=0.05, backoff_max_s=0.5, fsync=False),
    )

    async def connect() -> None:
        await client.start()
        await client.wait_connected(15)

    engine_loop.run(connect())
    try:
        engine.refresh_from_db()
        assert engine.run_id == "bt-2026-11-23"
        batch = command_issue(
            kind="pause", selector="engine:narrow-one", reason="lunch", actor_label="test"
        )
        assert Command.objects.get(batch=batch).status == Command.Status.FAILED

        page.set_viewport_size({"width": width, "height": 800})
        page.goto(f"{uvicorn_server.url}/login/")
        page.get_by_label("Username").fill(operator.username)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Fleet")).to_be_visible()

        page.goto(f"{uvicorn_server.url}/engines/narrow-one/", wait_until="domcontentloaded")
        section = page.locator("#engine-capabilities")
        expect(section).to_contain_text("commands kill, flatten")
        expect(section).to_contain_text("Run (its hello): bt-2026-11-23")
        expect(section.locator(".capability-flags")).to_contain_text(
            "Cannot enforce: a pause command issued at"
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"capabilities-engine-{width}.png"), full_page=True)

        page.goto(f"{uvicorn_server.url}/alerts/")
        alert = page.locator("#open-alerts tr", has_text="narrow-one")
        expect(alert.locator(".alert-rule")).to_have_text("Cannot enforce")
        expect(alert).to_contain_text("a pause command, which it does not handle")
    finally:
        engine_loop.run(client.close(flush_timeout=1))
