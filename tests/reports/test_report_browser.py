"""The report page in a real headless Chromium: Plotly.js draws the figures built in Python."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from dashboard.models import Baseline
from tests.conftest import PASSWORD
from tests.reports.conftest import WEEK
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

CHART_TIMEOUT_MS = 30_000


def test_the_report_page_draws_its_charts(
    page: Page, uvicorn_server: UvicornServer, viewer: User, week_data: dict[str, Any]
) -> None:
    Baseline.objects.create(
        engine=week_data["alpha"],
        name="bt 2026-10 v3",
        expected_annual_return_pct=25.0,
        sharpe=2.0,
        trades_per_day=2.0,
        win_rate_pct=60.0,
    )
    page.goto(f"{uvicorn_server.url}/login/?next=/reports/{WEEK}/")
    page.get_by_label("Username").fill(viewer.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    expect(page.get_by_role("heading", name=f"Weekly report {WEEK}")).to_be_visible()
    for chart in ("#chart-equity", "#chart-pnl", "#chart-engines"):
        # Plotly.js is nearly 5 MB to parse: on a machine busy with the rest of the suite,
        # drawing took longer than expect()'s default 5 s once in CI.
        expect(page.locator(f"{chart}[data-drawn='1'] .main-svg").first).to_be_visible(
            timeout=CHART_TIMEOUT_MS
        )
    # Four daily P&L bars, one per day with data.
    expect(page.locator("#chart-pnl .bars .point")).to_have_count(4)
    expect(page.locator('#baseline-table tr[data-engine="alpha"]')).to_contain_text(
        "significant divergence"
    )
    expect(page.locator('#engine-table tr[data-engine="alpha"]')).to_contain_text("+0.97 %")
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "report-week.png"), full_page=True)
