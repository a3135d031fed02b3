"""The comparison and the divergence log in the browser: the engine page and the go-live page
compare an engine with its paper companion over the same days, and the go-live page draws the
divergence log beside its table and takes a note, at a desk's width and a phone's."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.models import StageChange
from golive.models import DivergenceDay
from tests.conftest import PASSWORD
from tests.golive.test_comparison import build_pair
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")
# Plotly.js is nearly 5 MB to parse: on a busy machine drawing can take longer than 5 s.
CHART_TIMEOUT_MS = 30_000


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def _pair(make_engine):
    # Five days that ended before today: within the engine page's last 30 days.
    today = timezone.now().astimezone(UTC).date()
    start = datetime.combine(today - timedelta(days=7), time(0), tzinfo=UTC)
    live, paper = build_pair(make_engine, start)
    StageChange.objects.filter(engine=live).update(at=start - timedelta(days=1))
    return live, paper, start


@pytest.mark.parametrize("width", [1280, 390])
def test_the_engine_page_compares_with_the_paper_companion(
    page: Page, uvicorn_server: UvicornServer, viewer: User, make_engine, width: int
) -> None:
    live, _paper, _ = _pair(make_engine)
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, viewer)
    page.goto(f"{uvicorn_server.url}/engines/{live.name}/", wait_until="domcontentloaded")
    section = page.locator("#baseline")
    expect(section).to_contain_text("no backtest baseline")
    section.get_by_label("Compare with").select_option("paper-1")
    section.get_by_role("button", name="Compare").click()
    expect(section).to_contain_text("the record of paper-1 (Paper) over the same days")
    # 6 fills against paper's 8; 1 of 3 round trips won against 3 of 4.
    expect(section.locator('tr[data-figure="trade_count_ratio"]')).to_contain_text("0.75")
    expect(section.locator('tr[data-figure="win_rate_pp"]')).to_contain_text("-41.67")
    expect(section.locator("#cause-different_signals")).to_contain_text("Pointed at by Win rate")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(SCREENSHOTS / f"comparison-engine-{width}.png"))


@pytest.mark.parametrize("width", [1280, 390])
def test_the_go_live_page_compares_draws_the_log_and_takes_a_note(
    page: Page, uvicorn_server: UvicornServer, operator: User, make_engine, width: int
) -> None:
    live, _paper, start = _pair(make_engine)
    for n, apart in enumerate((4.0, 35.0, 8.0)):
        DivergenceDay.objects.create(
            engine=live,
            day=(start + timedelta(days=n)).date(),
            stage="small_capital",
            live_return_pct=1.0 - n * 0.5,
            baseline_return_pct=0.5,
            divergence_pct=apart,
        )
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, operator)
    page.goto(
        f"{uvicorn_server.url}/engines/{live.name}/go-live/?against=paper-1",
        wait_until="domcontentloaded",
    )
    comparison = page.locator("#comparison")
    expect(comparison).to_contain_text("the record of paper-1 (Paper) over the same days")
    expect(comparison.locator('tr[data-figure="latency_ms"]')).to_contain_text("30.00")

    log = page.locator("#divergence-log")
    expect(log.locator("#divergence-chart[data-drawn='1'] .main-svg").first).to_be_visible(
        timeout=CHART_TIMEOUT_MS
    )
    # Three bars, the one beyond 10 % among them.
    expect(log.locator("#divergence-chart .bars .point")).to_have_count(3)
    beyond = (start + timedelta(days=1)).date().isoformat()
    row = log.locator(f'tr[data-day="{beyond}"]')
    expect(row).to_have_class("diverged")
    row.get_by_placeholder("what was found").fill("the broker's gateway restarted at 14:02")
    row.get_by_label("Root cause").select_option("infrastructure")
    row.get_by_role("button", name="Keep").click()
    expect(page.locator(f'#divergence-log tr[data-day="{beyond}"] .divergence-note')).to_have_text(
        "Infrastructure: the broker's gateway restarted at 14:02"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"comparison-golive-{width}.png"), full_page=True)
