"""Commands in a real headless Chromium: the fleet's dialogs, the global kill, the batch page."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.commands import issuing
from controlplane.gateway import session
from controlplane.models import CommandBatch, Engine
from engine_sdk import protocol as p
from tests.conftest import PASSWORD
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

BATCH_URL = re.compile(r"/commands/batches/[0-9a-f-]{36}/$")


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / f"commands-{name}.png"))


def test_an_operator_pauses_an_engine_from_its_row_and_watches_the_batch_finish(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    alpha, _ = make_engine("alpha", mode="live", strategy_tags=["momentum"])
    make_engine("bravo", mode="paper", strategy_tags=["mean-reversion"])
    _log_in(page, uvicorn_server, operator)

    # An operator may not kill: the header's button is there but disabled, and says why.
    kill_all = page.locator(".topbar").get_by_role("button", name="Kill all")
    expect(kill_all).to_be_disabled()
    expect(kill_all).to_have_attribute("title", "Only risk managers may kill")
    _screenshot(page, "fleet-operator")

    page.locator('tr[data-engine="alpha"]').get_by_role("button", name="Pause").click()
    dialog = page.locator("#pause-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading")).to_have_text("Pause alpha")
    dialog.get_by_label("Duration in minutes").fill("15")
    dialog.get_by_label("Cancel open orders").check()
    dialog.get_by_label("Reason").fill("earnings call in 5 minutes")
    _screenshot(page, "pause-dialog")
    dialog.get_by_role("button", name="Pause").click()

    expect(page).to_have_url(BATCH_URL)
    expect(page.locator("#batch-summary")).to_have_text("0 of 1 engine paused")
    expect(page.locator("#batch-status")).to_have_text("waiting for engines…")
    expect(page.locator(".messages")).to_contain_text("pause issued to engine:alpha.")
    batch = CommandBatch.objects.get()
    assert batch.commands.get().params == {"duration": 900, "cancel_open": True}

    # The engine answers; the page follows without a reload.
    command = batch.commands.get()
    session.record(alpha.pk, p.CommandAck(command_id=command.pk))
    session.record(
        alpha.pk,
        p.CommandResult(command_id=command.pk, status="succeeded", trading_state="PAUSED"),
    )
    expect(page.locator("#batch-summary")).to_have_text("1 of 1 engine paused")
    expect(page.locator("#batch-status")).to_have_text("finished")
    row = page.locator(f'tr[data-command="{command.pk}"]')
    expect(row).to_contain_text("succeeded")
    expect(row.locator("td.num").nth(2)).to_have_text(re.compile(r"^\d+ ms$"))
    _screenshot(page, "pause-batch")


def test_a_risk_manager_kills_all_through_the_guarded_dialog_and_sees_the_shortfall_live(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    engines = [
        make_engine(name, mode=mode, strategy_tags=tags)[0]
        for name, mode, tags in [
            ("alpha", "live", ["momentum"]),
            ("bravo", "live", ["mean-reversion", "fx"]),
            ("charlie", "paper", ["momentum"]),
        ]
    ]
    _log_in(page, uvicorn_server, risk_manager)

    # At 1280x800 every row's controls are in view, Kill included: the table does not scroll
    # sideways.
    row_kill = page.locator('tr[data-engine="charlie"]').get_by_role("button", name="Kill")
    assert page.evaluate(
        "(() => { const wrap = document.querySelector('table.fleet').closest('.table-wrap');"
        " return wrap.scrollWidth <= wrap.clientWidth; })()"
    )
    box = row_kill.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280

    # A row's kill asks for the engine's name; cancelling it issues nothing.
    row_kill.click()
    engine_dialog = page.locator("#kill-dialog")
    expect(engine_dialog.get_by_role("heading")).to_have_text("Kill charlie")
    engine_submit = engine_dialog.get_by_role("button", name="Kill", exact=True)
    engine_dialog.get_by_label("Type charlie to confirm").fill("KILL ALL")
    expect(engine_submit).to_be_disabled()
    engine_dialog.get_by_label("Type charlie to confirm").fill("charlie")
    expect(engine_submit).to_be_enabled()
    engine_dialog.get_by_role("button", name="Cancel").click()
    expect(engine_dialog).to_be_hidden()
    assert not CommandBatch.objects.exists()

    page.locator(".topbar").get_by_role("button", name="Kill all").click()
    dialog = page.locator("#kill-all-dialog")
    expect(dialog).to_be_visible()
    submit = dialog.get_by_role("button", name="Kill all engines")
    expect(submit).to_be_disabled()
    dialog.get_by_label("Reason").fill("exchange outage, stop everything")
    confirm = dialog.get_by_label("Type KILL ALL to confirm")
    confirm.fill("KILL AL")
    expect(submit).to_be_disabled()
    confirm.fill("kill all")
    expect(submit).to_be_disabled()
    confirm.fill("KILL ALL")
    expect(submit).to_be_enabled()
    _screenshot(page, "kill-dialog")
    submit.click()

    expect(page).to_have_url(BATCH_URL)
    expect(page.locator("#batch-summary")).to_have_text("0 of 3 engines halted")
    expect(page.locator("#batch-commands tbody tr")).to_have_count(3)
    expect(page.locator("#batch-incomplete")).to_be_hidden()
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"HALTED"}

    # bravo halts but two of its orders are still working: shown in red as it happens.
    batch = CommandBatch.objects.get()
    bravo = engines[1]
    command = batch.commands.get(engine=bravo)
    session.record(
        bravo.pk,
        p.CommandResult(
            command_id=command.pk,
            status="partial",
            data={"working": ["o-17", "o-18"]},
            trading_state="HALTED",
        ),
    )
    expect(page.locator("#batch-summary")).to_have_text("1 of 3 engines halted")
    expect(page.locator("#batch-incomplete")).to_have_text(
        "bravo: kill incomplete: 2 orders still working"
    )
    shortfall = page.locator(f'tr[data-command="{command.pk}"] .shortfall')
    expect(shortfall).to_have_text("kill incomplete: 2 orders still working")
    expect(shortfall).to_have_css("color", "rgb(255, 92, 92)")
    _screenshot(page, "kill-batch")

    # The fleet now offers a resume request for the halted engines, and the audit shows the kill.
    page.get_by_role("link", name="Fleet", exact=True).click()
    alpha_row = page.locator('tr[data-engine="alpha"]')
    expect(alpha_row.get_by_role("button", name="Request resume")).to_be_visible()
    _screenshot(page, "fleet-halted")
    page.get_by_role("link", name="Audit").click()
    expect(page.locator("#audit-events")).to_contain_text("command_kill")
    _screenshot(page, "audit")


def test_a_halted_engine_is_resumed_by_a_second_risk_manager(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    risk_manager: User,
    second_risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    engine, _ = make_engine("delta", mode="live")
    issuing.command_issue(
        kind="kill",
        selector="engine:delta",
        reason="runaway",
        actor=risk_manager,
        confirmation="delta",
    )
    _log_in(page, uvicorn_server, operator)

    page.locator('tr[data-engine="delta"]').get_by_role("button", name="Request resume").click()
    dialog = page.locator("#resume-request-dialog")
    expect(dialog.get_by_role("heading")).to_have_text("Request a resume of delta")
    dialog.get_by_label("Why may it trade again?").fill("position limits fixed and tested")
    dialog.get_by_role("button", name="Request resume").click()

    expect(page).to_have_url(f"{uvicorn_server.url}/commands/resume-requests/")
    row = page.locator('tr[data-engine="delta"]')
    expect(row).to_contain_text("awaiting a second person")
    _screenshot(page, "resume-requested")

    page.get_by_role("button", name="Log out").click()
    _log_in(page, uvicorn_server, second_risk_manager)
    page.get_by_role("link", name="Resume requests").click()
    row = page.locator('tr[data-engine="delta"]')
    row.get_by_label("Decision note for delta").fill("checked with the desk")
    _screenshot(page, "resume-approve")
    row.get_by_role("button", name="Approve").click()

    expect(page).to_have_url(BATCH_URL)
    expect(page.locator("#batch-summary")).to_have_text("0 of 1 engine resumed")
    engine.refresh_from_db()
    assert engine.desired_state == "ACTIVE"
