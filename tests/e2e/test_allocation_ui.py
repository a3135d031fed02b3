"""Allocation on the fleet page in the browser: a risk manager sets targets in the admin, and the
fleet page shows each target against the actual share of the desk's capital."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from controlplane.models import Engine
from risk import services
from risk.models import Allocation
from tests.e2e.test_promotion_ui import _log_in
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")


@pytest.mark.parametrize("width", [1280, 390])
def test_a_target_set_in_the_admin_shows_against_the_actual_share(
    page: Page,
    uvicorn_server: UvicornServer,
    risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
    width: int,
) -> None:
    alpha, _ = make_engine("alpha", strategy_tags=["momentum"])
    beta, _ = make_engine("beta", strategy_tags=["momentum"])
    Engine.objects.filter(pk=alpha.pk).update(equity=Decimal(300000))
    Engine.objects.filter(pk=beta.pk).update(equity=Decimal(100000))
    services.desk_capital_set(amount=Decimal(1000000), reason="mandate", actor=risk_manager)
    services.allocation_save(
        allocation=Allocation(scope="tag", scope_value="momentum", target_pct=Decimal(50)),
        reason="desk plan",
        actor=risk_manager,
    )
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, risk_manager)

    page.goto(f"{uvicorn_server.url}/admin/risk/allocation/add/")
    page.locator("#id_scope").select_option("engine")
    page.locator("#id_scope_value").fill("alpha")
    page.locator("#id_target_pct").fill("20")
    page.locator("#id_change_reason").fill("alpha's share of the plan")
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    page.goto(f"{uvicorn_server.url}/")
    block = page.locator("#allocation")
    expect(block).to_contain_text("Shares of the desk capital (1,000,000)")
    alpha_row = block.locator('tr[data-allocation="engine:alpha"]')
    expect(alpha_row.locator('[data-col="target"]')).to_have_text("20 %")
    expect(alpha_row.locator('[data-col="actual"]')).to_have_text("30.0 %")
    expect(alpha_row.locator('[data-col="difference"]')).to_have_text("+10.0 pts")
    tag_row = block.locator('tr[data-allocation="tag:momentum"]')
    expect(tag_row.locator('[data-col="difference"]')).to_have_text("-10.0 pts")
    SCREENSHOTS.mkdir(exist_ok=True)
    block.scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / f"allocation-{width}.png"), full_page=True)
