"""Incidents in a real headless Chromium against a real uvicorn, with a simulated paper engine over
the real socket: a kill from the engine page opens an incident with its snapshot; the checklist
ticks itself as the engine cancels and flattens; the post-mortem is required to close; the
emergency contacts are one click from the Kill dialog and on every incident."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.models import Engine, Order, Position
from engine_sdk.client import ClientConfig, HelloInfo
from engine_sdk.simulator import PaperEngine
from journal import contacts
from journal.models import Incident, IncidentStep
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


def _shots(page: Page, name: str) -> None:
    """The page at 1280x800 and 390 wide (a phone), whole, to look at."""
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(ARTIFACTS_DIR / f"incidents-{name}-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS_DIR / f"incidents-{name}-390.png"), full_page=True)
    # Nothing sideways on a phone: the page itself never scrolls horizontally.
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.set_viewport_size({"width": 1280, "height": 800})


def _until(what: str, check: Callable[[], Any]) -> Any:
    # The server's process writes these rows; the page is not live: poll the rows.
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {SETTLE_S} s")


def _paper_engine(loop: EngineLoop, server: UvicornServer, token: str, tmp: Path) -> PaperEngine:
    async def begin() -> PaperEngine:
        sim = PaperEngine.create(
            f"{server.ws_url}/ws/engine/v1",
            token,
            journal_dir=tmp / "engine",
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

    return loop.run(begin())


def _trade(loop: EngineLoop, sim: PaperEngine) -> str:
    """A position bought at market and a limit order resting far below: the book a kill hits."""
    symbol = sorted(sim.prices)[0]

    async def place() -> None:
        sim.submit_manual(symbol, "buy", 10)
        far_below = (sim.prices[symbol] / 2).quantize(Decimal("0.01"))
        sim.submit_manual(symbol, "buy", 5, order_type="limit", limit_price=far_below)

    loop.run(place())
    return symbol


def _close(loop: EngineLoop, sim: PaperEngine) -> None:
    async def end() -> None:
        await sim.client.close(flush_timeout=2)  # type: ignore[attr-defined]

    try:
        loop.run(end())
    finally:
        loop.close()


def test_a_kill_opens_an_incident_with_its_snapshot_and_the_checklist_ticks_itself(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    make_engine: MakeEngine,
    tmp_path: Path,
) -> None:
    contacts.contact_create(
        actor=risk_manager,
        data={
            "name": "Dana Duty",
            "role": "Head of trading",
            "phone": "+44 20 7946 0000",
            "email": "dana@example.com",
            "escalation_order": 1,
        },
    )
    engine, token = make_engine("alpha", mode="paper")
    loop = EngineLoop()
    sim = _paper_engine(loop, uvicorn_server, token, tmp_path)
    try:
        symbol = _trade(loop, sim)
        _until(
            "the position and the working order stored",
            lambda: (
                Position.objects.filter(engine=engine).exclude(quantity=0).exists()
                and Order.objects.filter(engine=engine, status__in=Order.WORKING).exists()
            ),
        )

        _log_in(page, uvicorn_server, risk_manager)
        page.goto(f"{uvicorn_server.url}/engines/alpha/", wait_until="domcontentloaded")
        page.get_by_role("button", name="Kill", exact=True).click()
        dialog = page.locator("#kill-dialog")
        # The contacts are one click from the Kill dialog.
        contacts_link = dialog.get_by_role("link", name="Emergency contacts")
        expect(contacts_link).to_have_attribute("href", "/contacts/")
        dialog.get_by_label("Reason").fill("runaway orders after the open")
        dialog.get_by_label("Type alpha to confirm").fill("alpha")
        dialog.get_by_role("button", name="Kill", exact=True).click()

        incident = _until("the incident opened", lambda: Incident.objects.first())
        assert incident.trigger == "person"
        page.goto(f"{uvicorn_server.url}/incidents/")
        row = page.locator(f'tr[data-incident="{incident.pk}"]')
        expect(row).to_contain_text("Kill of alpha")
        expect(row).to_contain_text("rita-risk")
        row.get_by_role("link", name="Kill of alpha").click()

        # The snapshot: the engine as the kill found it, its position and its resting order.
        snapshot = page.locator('#snapshot .snapshot-engine[data-engine="alpha"]')
        expect(snapshot.locator(".snapshot-positions")).to_contain_text(symbol)
        expect(snapshot.locator(".snapshot-positions")).to_contain_text("10")
        expect(snapshot.locator(".snapshot-orders")).to_contain_text("limit")
        expect(snapshot).to_contain_text("HALTED")
        expect(page.locator("#incident-contacts")).to_contain_text("Dana Duty")
        expect(page.locator("#incident-contacts")).to_contain_text("+44 20 7946 0000")

        # The engine cancels its order and flattens; the checklist ticks those steps itself.
        def ticked() -> bool:
            done = set(
                IncidentStep.objects.filter(
                    incident=incident, done_at__isnull=False, by_data=True
                ).values_list("key", flat=True)
            )
            return {"kill", "cancel_orders", "decide"} <= done

        _until("the checklist ticked from the data", ticked)
        page.reload()
        for key in ("kill", "cancel_orders", "decide"):
            step = page.locator(f'#checklist li[data-step="{key}"]')
            expect(step).to_have_class("step step-done")
            expect(step).to_contain_text("from the data")
        expect(page.locator('#checklist li[data-step="decide"]')).to_contain_text("flat")
        expect(page.locator('#checklist li[data-step="fix"]')).not_to_have_class("step step-done")
        expect(page.locator("#incident-commands")).to_contain_text("kill")
        _shots(page, "halted-engine")
    finally:
        _close(loop, sim)


def test_the_post_mortem_is_required_to_close(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    operator: User,
    make_engine: MakeEngine,
) -> None:
    from controlplane.commands import issuing

    make_engine("bravo", mode="paper")
    issuing.command_issue(
        kind="kill",
        selector="engine:bravo",
        reason="daily loss 5,200 beyond the limit of 5,000",
        actor=None,
        actor_label="limit #3 max_daily_loss",
    )
    incident = Incident.objects.get()
    assert incident.trigger == "limit"

    # An operator ticks a step by hand, and may neither write the post-mortem nor close.
    _log_in(page, uvicorn_server, operator)
    page.goto(f"{uvicorn_server.url}/incidents/{incident.pk}/")
    assess = page.locator('#checklist li[data-step="assess"]')
    assess.get_by_label("Note for Assess positions, P&L and system state").fill("no position")
    assess.get_by_role("button", name="Tick").click()
    expect(assess).to_contain_text("by otto-operator")
    expect(page.locator("#postmortem-form")).to_have_count(0)
    expect(page.get_by_role("button", name="Close incident")).to_have_count(0)
    page.get_by_role("button", name="Log out").click()

    _log_in(page, uvicorn_server, risk_manager)
    page.goto(f"{uvicorn_server.url}/incidents/{incident.pk}/")
    expect(page.locator("#pm-missing")).to_be_visible()
    page.get_by_role("button", name="Close incident").click()
    expect(page.locator(".messages")).to_contain_text("closes only with its post-mortem")
    expect(page.locator("#incident-state")).to_have_text("open")

    form = page.locator("#postmortem-form")
    form.get_by_label("What went wrong: the strategy, the execution or the market?").select_option(
        "market"
    )
    form.get_by_label("What went wrong", exact=True).fill("A halt in the name, quotes stale.")
    form.get_by_label("Which assumptions failed").fill("That quotes stop when trading halts.")
    form.get_by_label("What will be improved").fill("Read the exchange status before each order.")
    form.get_by_label("Follow-up 1").fill("Exchange status feed")
    form.get_by_label("Owner 1").fill("otto-operator")
    _shots(page, "postmortem-form")
    form.get_by_role("button", name="Save post-mortem").click()
    expect(page.locator(".messages")).to_contain_text("Post-mortem saved.")
    expect(page.locator("#pm-follow-ups")).to_contain_text("Exchange status feed — otto-operator")

    page.get_by_role("button", name="Close incident").click()
    expect(page.locator("#incident-state")).to_have_text("closed")
    expect(page.locator("#incident-meta")).to_contain_text("closed by rita-risk")
    page.goto(f"{uvicorn_server.url}/incidents/")
    expect(page.locator(f'#closed-incidents tr[data-incident="{incident.pk}"]')).to_be_visible()
    _shots(page, "list")


def test_a_risk_manager_keeps_the_contacts_and_a_viewer_reads_them(
    page: Page, uvicorn_server: UvicornServer, risk_manager: User, viewer: User
) -> None:
    _log_in(page, uvicorn_server, risk_manager)
    page.goto(f"{uvicorn_server.url}/contacts/")
    form = page.locator("#contact-add-form")
    form.get_by_label("Name").fill("Dana Duty")
    form.get_by_label("Role").fill("Head of trading")
    form.get_by_label("Phone").fill("+44 20 7946 0000")
    form.get_by_label("E-mail").fill("dana@example.com")
    form.get_by_label("Escalation order").fill("1")
    form.get_by_role("button", name="Add contact").click()
    expect(page.locator(".messages")).to_contain_text("Dana Duty added as contact 1.")
    form.get_by_label("Name").fill("Sam Second")
    form.get_by_label("Role").fill("CTO")
    form.get_by_label("Phone").fill("+1 212 555 0100")
    form.get_by_label("E-mail").fill("sam@example.com")
    form.get_by_label("Escalation order").fill("1")
    form.get_by_role("button", name="Add contact").click()
    expect(page.locator(".messages")).to_contain_text("escalation order: 1 is taken by Dana Duty")
    _shots(page, "contacts")
    # The Kill all dialog links here too.
    page.locator(".topbar").get_by_role("button", name="Kill all").click()
    link = page.locator("#kill-all-dialog").get_by_role("link", name="Emergency contacts")
    expect(link).to_have_attribute("href", "/contacts/")
    page.locator("#kill-all-dialog").get_by_role("button", name="Cancel").click()
    page.get_by_role("button", name="Log out").click()

    _log_in(page, uvicorn_server, viewer)
    page.goto(f"{uvicorn_server.url}/contacts/")
    expect(page.locator("#contacts")).to_contain_text("dana@example.com")
    expect(page.locator("#contact-add-form")).to_have_count(0)
    expect(page.get_by_role("button", name="Remove")).to_have_count(0)
