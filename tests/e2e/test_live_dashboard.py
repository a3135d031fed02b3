"""The live dashboard in a real headless Chromium, fed by paper engines over the real socket.

The engines run in an asyncio loop on a thread of their own (as in the command delivery tests)
while the test drives the browser; every change they report must reach the open pages without a
reload.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.models import Engine
from engine_sdk.client import ClientConfig, HelloInfo
from engine_sdk.simulator import PaperEngine
from tests.conftest import PASSWORD
from tests.controlplane.commands.test_delivery import EngineLoop
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

MakeEngine = Callable[..., tuple[Engine, str]]
LIVE_TIMEOUT_MS = 30_000  # generous: a loaded CI machine starves the engines' loop at times


class Simulation:
    """Paper engines ticking every 100 ms in the engine loop until the test ends."""

    def __init__(self, loop: EngineLoop, server: UvicornServer, tmp_path: Path) -> None:
        self.loop = loop
        self.server = server
        self.tmp_path = tmp_path
        self.engines: list[PaperEngine] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Future[None]] = []

    def start(self, token: str, name: str, seed: int, mode: str = "paper") -> PaperEngine:
        async def begin() -> PaperEngine:
            sim = PaperEngine.create(
                f"{self.server.ws_url}/ws/engine/v1",
                token,
                journal_dir=self.tmp_path / name,
                engine_options={"seed": seed, "report_every": 1},
                hello=HelloInfo(
                    engine_build="paper-sim/e2e",
                    config_hash="momentum",
                    mode=mode,
                    broker="paper-sim",
                    account=name,
                ),
                config=ClientConfig(
                    batch_interval_s=0.005, backoff_initial_s=0.05, backoff_max_s=0.5, fsync=False
                ),
            )
            await sim.client.start()  # type: ignore[attr-defined]
            await sim.client.wait_connected(15)  # type: ignore[attr-defined]
            return sim

        sim: PaperEngine = self.loop.run(begin())
        self.tasks.append(
            asyncio.run_coroutine_threadsafe(
                sim.run(self.stop, tick_interval_s=0.1), self.loop.loop
            )
        )
        self.engines.append(sim)
        return sim

    def close(self) -> None:
        async def end() -> None:
            self.stop.set()
            for sim in self.engines:
                await sim.client.close(flush_timeout=2)  # type: ignore[attr-defined]

        self.loop.run(end())


@pytest.fixture
def simulation(uvicorn_server: UvicornServer, tmp_path: Path) -> Iterator[Simulation]:
    loop = EngineLoop()
    sim = Simulation(loop, uvicorn_server, tmp_path)
    yield sim
    try:
        sim.close()
    finally:
        loop.close()


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.set_default_timeout(LIVE_TIMEOUT_MS)
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def _mark_no_reload(page: Page) -> None:
    page.evaluate("window.__sameDocument = true")


def _assert_no_reload(page: Page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def _screenshot(page: Page, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / f"{name}.png"), full_page=full_page)


def _live(page: Page) -> None:
    expect(page.locator("body")).to_have_attribute("data-live", "live", timeout=LIVE_TIMEOUT_MS)


def test_a_simulated_engines_fills_appear_on_the_overview_without_a_reload(
    page: Page,
    uvicorn_server: UvicornServer,
    simulation: Simulation,
    operator: User,
    make_engine: MakeEngine,
) -> None:
    engines = {
        name: (make_engine(name, mode=mode, strategy_tags=tags)[1], mode)
        for name, mode, tags in [
            ("alpha", "paper", ["momentum"]),
            ("bravo", "live", ["mean-reversion", "fx"]),
            ("charlie", "shadow", ["momentum"]),
            ("delta", "paper", ["fx"]),
        ]
    }
    _log_in(page, uvicorn_server, operator)
    _live(page)
    alpha = page.locator('tr[data-engine="alpha"]')
    expect(alpha.locator('[data-col="connection"]')).to_have_text("offline")
    expect(alpha.locator('[data-col="open_positions"] .v')).to_have_text("0")
    _mark_no_reload(page)

    for seed, name in enumerate(("alpha", "bravo", "charlie"), start=3):
        token, mode = engines[name]
        simulation.start(token, name, seed, mode)

    # The engine connects, trades and reports: its row follows, as do the fleet's totals.
    expect(alpha.locator('[data-col="connection"]')).to_contain_text(
        "online", timeout=LIVE_TIMEOUT_MS
    )
    expect(alpha.locator('[data-col="open_positions"] .v')).not_to_have_text(
        "0", timeout=LIVE_TIMEOUT_MS
    )
    expect(alpha.locator('[data-col="equity"]')).not_to_have_text("—")
    expect(alpha.locator('[data-col="latency_ms"]')).to_have_text(
        re.compile(r"^[\d,.]+ ms$"), timeout=LIVE_TIMEOUT_MS
    )
    totals = page.locator("#fleet-totals")
    expect(totals.locator('[data-total="engines"]')).to_have_text(
        "3 of 4 online", timeout=LIVE_TIMEOUT_MS
    )
    expect(totals.locator('[data-total="open_positions"] .v')).not_to_have_text("0")
    _assert_no_reload(page)
    page.wait_for_timeout(1500)  # a few more fills, for a representative picture
    _screenshot(page, "dashboard-overview")

    # A tablet: the table scrolls inside its box, the page itself does not.
    page.set_viewport_size({"width": 820, "height": 1180})
    wrap = page.locator("#fleet-wrap")
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    expect(page.locator("#fleet-table thead th").first).to_be_visible()
    _screenshot(page, "dashboard-tablet")


def test_the_engine_page_extends_its_charts_and_tables_as_the_engine_trades(
    page: Page,
    uvicorn_server: UvicornServer,
    simulation: Simulation,
    viewer: User,
    make_engine: MakeEngine,
) -> None:
    _, token = make_engine("alpha", mode="paper", strategy_tags=["momentum"])
    simulation.start(token, "alpha", 11)
    _log_in(page, uvicorn_server, viewer)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.get_by_role("link", name="alpha", exact=True).click()
    expect(page).to_have_url(f"{uvicorn_server.url}/engines/alpha/")
    expect(page.get_by_role("heading", name="alpha")).to_be_visible()
    # Plotly.js is large: give a loaded machine time to parse it before the first draw.
    page.wait_for_function(
        "() => document.getElementById('equity-chart').data !== undefined", timeout=30_000
    )
    _live(page)
    _mark_no_reload(page)
    points = page.evaluate("document.getElementById('equity-chart').data[0].x.length")

    page.wait_for_function(
        f"() => document.getElementById('equity-chart').data[0].x.length > {points} + 5",
        timeout=LIVE_TIMEOUT_MS,
        polling=250,
    )
    # Both traces (equity and its drawdown) grow together, and the other charts too.
    assert page.evaluate(
        "(() => { const d = document.getElementById('equity-chart').data;"
        " return d[0].x.length === d[1].x.length; })()"
    )
    page.wait_for_function(
        "() => document.getElementById('latency-chart').data[0].x.length > 1",
        timeout=LIVE_TIMEOUT_MS,
        polling=250,
    )
    expect(page.locator("#fills-table tbody tr[data-fill]").first).to_be_visible(
        timeout=LIVE_TIMEOUT_MS
    )
    expect(page.locator("#positions-table tbody tr[data-symbol]").first).to_be_visible()
    expect(page.locator('[data-col="connection"] .conn')).to_contain_text("online")
    # A viewer watches; the controls are not there.
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    # The rejection chart's minute buckets: each minute on its axis once.
    minutes = page.eval_on_selector_all(
        "#rejection-chart .xtick text", "els => els.map(e => e.textContent)"
    )
    assert minutes and len(minutes) == len(set(minutes)), minutes
    _assert_no_reload(page)
    assert errors == []
    _screenshot(page, "dashboard-engine", full_page=True)


def test_a_lost_socket_shows_the_banner_and_the_page_recovers_by_itself(
    page: Page,
    uvicorn_server: UvicornServer,
    simulation: Simulation,
    operator: User,
    make_engine: MakeEngine,
) -> None:
    _, token = make_engine("alpha", mode="paper")
    simulation.start(token, "alpha", 5)
    _log_in(page, uvicorn_server, operator)
    _live(page)
    banner = page.locator("#live-banner")
    expect(banner).to_be_hidden()
    _mark_no_reload(page)

    uvicorn_server.stop()
    expect(banner).to_be_visible(timeout=LIVE_TIMEOUT_MS)
    expect(banner).to_have_text("Live updates lost — reconnecting…")
    _screenshot(page, "dashboard-socket-lost")

    uvicorn_server.start()
    expect(banner).to_have_text("Live again", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("body")).to_have_attribute("data-live", "live")
    expect(banner).to_be_hidden(timeout=LIVE_TIMEOUT_MS)  # the good news does not linger
    # Updates flow again: the engine reconnected and keeps trading.
    alpha = page.locator('tr[data-engine="alpha"]')
    expect(alpha.locator('[data-col="connection"]')).to_contain_text(
        "online", timeout=LIVE_TIMEOUT_MS
    )
    before = alpha.locator('[data-col="equity"]').text_content()
    expect(alpha.locator('[data-col="equity"]')).not_to_have_text(
        before or "", timeout=LIVE_TIMEOUT_MS
    )
    assert page.evaluate("window.fleetLive.state.connects") >= 2
    _assert_no_reload(page)


def test_a_pause_issued_on_the_engine_page_changes_its_state_live_everywhere(
    page: Page,
    uvicorn_server: UvicornServer,
    simulation: Simulation,
    operator: User,
    make_engine: MakeEngine,
) -> None:
    _, token = make_engine("alpha", mode="paper", strategy_tags=["momentum"])
    simulation.start(token, "alpha", 9)
    _log_in(page, uvicorn_server, operator)
    # A second screen keeps the fleet open: it must follow without a reload.
    fleet = page.context.new_page()
    fleet.set_default_timeout(LIVE_TIMEOUT_MS)
    fleet.goto(f"{uvicorn_server.url}/")
    _live(fleet)
    fleet_state = fleet.locator('tr[data-engine="alpha"] [data-col="state"] .state')
    expect(fleet_state).to_have_text("ACTIVE", timeout=LIVE_TIMEOUT_MS)
    _mark_no_reload(fleet)

    page.goto(f"{uvicorn_server.url}/engines/alpha/", wait_until="domcontentloaded")
    _live(page)
    expect(page.locator("#reported-state")).to_have_text("ACTIVE")
    page.locator(".engine-actions").get_by_role("button", name="Pause").click()
    dialog = page.locator("#pause-dialog")
    expect(dialog.get_by_role("heading")).to_have_text("Pause alpha")
    dialog.get_by_label("Reason").fill("news in two minutes")
    dialog.get_by_role("button", name="Pause").click()

    expect(page).to_have_url(f"{uvicorn_server.url}/engines/alpha/")
    expect(page.locator(".messages")).to_contain_text("pause issued to engine:alpha.")
    expect(page.locator("#reported-state")).to_have_text("PAUSED", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#desired-state")).to_be_hidden()
    expect(page.locator("#commands-table tbody tr").first).to_contain_text("pause")
    expect(page.locator(".engine-actions").get_by_role("button", name="Resume")).to_be_enabled()

    expect(fleet_state).to_have_text("PAUSED", timeout=LIVE_TIMEOUT_MS)
    expect(fleet.locator('tr[data-engine="alpha"]')).to_have_class("engine-row state-row-paused")
    _assert_no_reload(fleet)
    fleet.close()
