"""A broker statement imported in the admin, as a risk manager does it in the browser: a malformed
file is refused line by line with nothing stored; a statement that differs from the ledger lists
every difference on its page, at a desk's width and a phone's."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.models import BrokerStatement, Engine
from tests.conftest import PASSWORD
from tests.controlplane.test_statements import SAMPLE
from tests.controlplane.test_statements import engine as engine  # the fixture
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("test-artifacts")


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


@pytest.mark.parametrize("width", [1280, 390])
def test_a_statement_is_refused_by_line_then_its_differences_listed(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    engine: Engine,
    tmp_path: Path,
    width: int,
) -> None:
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, risk_manager)

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "type,date,trade_id,order_id,symbol,side,quantity,price,fee\n"
        "trade,2026-12-04,EX-1,o-1,AAPL,buy,100,190.25,1.00\n"
        "trade,yesterday,EX-2,o-2,AAPL,hold,-4,abc,0\n"
    )
    page.goto(f"{uvicorn_server.url}/admin/controlplane/brokerstatement/add/")
    page.get_by_label("Engine").select_option(label=engine.name)
    page.locator("input[type=file]").set_input_files(str(bad))
    page.get_by_role("button", name="Import and reconcile").click()
    refused = page.locator("#statement-refused")
    expect(refused).to_contain_text("nothing of it was stored")
    expect(refused).to_contain_text("line 3: date 'yesterday' is not a date")
    assert not BrokerStatement.objects.exists()

    # The broker charged 190.35 for the ledger's 190.25, and holds 60 AAPL where the ledger has 60
    # but 12 MSFT where it has 10.
    differing = tmp_path / "statement.csv"
    differing.write_text(
        SAMPLE.read_text().replace("190.25", "190.35").replace("MSFT,,10", "MSFT,,12")
    )
    page.get_by_label("Engine").select_option(label=engine.name)
    page.locator("input[type=file]").set_input_files(str(differing))
    page.get_by_role("button", name="Import and reconcile").click()
    expect(page).to_have_url(
        f"{uvicorn_server.url}/admin/controlplane/brokerstatement/"
        f"{BrokerStatement.objects.get().pk}/change/"
    )
    body = page.locator("#content-main")
    expect(body).to_contain_text("190.35")
    expect(body).to_contain_text("MSFT")
    expect(page.locator("body")).not_to_contain_text("matches the ledger")
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"statement-{width}.png"), full_page=True)
