"""The journal in a real headless Chromium, at a desk's width and a phone's: the trading log
written and its history, a runbook edited, a review overdue on the overview and signed off, and
a firing alert's toast that links to its runbook."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from alerts import evaluation
from alerts.models import AlertRule
from controlplane.models import Engine
from journal import figures, reviews, runbooks
from journal.models import ReviewSchedule
from tests.e2e.test_alerts_ui import in_another_thread
from tests.e2e.test_commands_ui import _log_in
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e

WIDTHS = [1280, 390]


def _shot(page: Page, name: str, width: int) -> None:
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / f"journal-{name}-{width}.png"), full_page=True)


def _fits(page: Page) -> None:
    """Nothing of the page's own content is wider than the window (tables scroll in their box)."""
    overflow = page.evaluate(
        "() => [...document.querySelectorAll('main > *')]"
        ".filter(el => el.getBoundingClientRect().right > window.innerWidth + 1)"
        ".map(el => el.id || el.className || el.tagName)"
    )
    assert overflow == []


@pytest.mark.parametrize("width", WIDTHS)
def test_an_operator_writes_the_days_log_and_sees_it_rendered_with_its_history(
    page: Page, uvicorn_server: UvicornServer, operator: User, width: int
) -> None:
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, operator)
    page.goto(f"{uvicorn_server.url}/log/")
    expect(page.get_by_role("heading", name=re.compile("Trading log ·"))).to_be_visible()
    expect(page.locator("#no-entry")).to_be_visible()
    expect(page.locator('#log-figures [data-figure="trades"] dd')).to_have_text("0")

    form = page.locator("#log-form")
    form.get_by_label("Trend").select_option("down")
    form.get_by_label("Volatility").select_option("high")
    form.get_by_label("Key events").fill("CPI 14:30")
    form.get_by_label("Notes").fill("Sold the **open**.\n\n<script>window.pwned = 1</script>")
    form.get_by_role("button", name="Save").click()

    expect(page.locator("#entry-trend")).to_have_text("Down")
    expect(page.locator("#entry-notes strong")).to_have_text("open")
    expect(page.locator("#entry-notes")).to_contain_text("<script>window.pwned = 1</script>")
    assert page.evaluate("() => window.pwned") is None
    expect(page.locator("#log-history tbody tr")).to_have_count(1)
    _fits(page)
    _shot(page, "log", width)

    page.get_by_role("searchbox", name="Search the log").first.fill("cpi")
    page.get_by_role("button", name="Search").first.click()
    expect(page.locator("#log-results tbody tr")).to_have_count(1)
    _fits(page)
    _shot(page, "log-search", width)


@pytest.mark.parametrize("width", WIDTHS)
def test_a_risk_manager_edits_a_runbook_and_its_history_shows_both_versions(
    page: Page, uvicorn_server: UvicornServer, risk_manager: User, width: int
) -> None:
    runbooks.seed_defaults()  # the server's flushed database lost the migration's plans
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, risk_manager)
    page.get_by_role("link", name="Runbooks").click()
    expect(page.locator("#runbooks li")).to_have_count(4)
    _fits(page)
    _shot(page, "runbooks", width)

    page.get_by_role("link", name="Broker API failure").click()
    expect(page.locator("#runbook-body strong").first).to_have_text("Switch to the backup")
    page.locator("#edit-runbook").click()
    page.get_by_label("Plan").fill("1. Call the broker's desk: **+1 555 0100**.")
    page.get_by_label("Why this change").fill("new number")
    page.get_by_role("button", name="Save").click()

    expect(page.locator("#runbook-body strong")).to_have_text("+1 555 0100")
    expect(page.locator("#runbook-history tbody tr")).to_have_count(2)
    expect(page.locator("#runbook-history tbody tr").first).to_contain_text("new number")
    _fits(page)
    _shot(page, "runbook", width)


@pytest.mark.parametrize("width", WIDTHS)
def test_an_overdue_review_shows_on_the_overview_until_an_operator_signs_it_off(
    page: Page, uvicorn_server: UvicornServer, operator: User, width: int
) -> None:
    today = timezone.now().astimezone(figures.desk_tz()).date()
    reviews.seed_defaults(starts_on=today - timedelta(days=10))
    # The test database may hold the migration's schedules, owed from the day it was made.
    ReviewSchedule.objects.update(starts_on=today - timedelta(days=10))
    late = reviews.overdue()
    # Ten days back, at least six trading days are past due; an operator signs daily ones.
    oldest = next(o for o in late if o.period == "daily")
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, operator)

    box = page.locator("#overview-reviews-overdue")
    expect(box).to_contain_text(f"{len(late)} review")
    _fits(page)
    _shot(page, "overview", width)

    page.goto(f"{uvicorn_server.url}{oldest.url}")
    expect(page.locator("#review-overdue")).to_be_visible()
    expect(page.locator('#review-checks tr[data-key="errors"] .check-status')).to_have_text("pass")
    expect(page.locator('#review-checks tr[data-key="pnl"] .check-status')).to_have_text("unknown")
    for item in page.locator('#review-checks input[name="done"]').all():
        item.check()  # each item done by hand
    page.get_by_role("button", name="Sign off").click()
    expect(page.locator("#review-signed")).to_contain_text(operator.username)
    _fits(page)
    _shot(page, "review", width)

    page.goto(f"{uvicorn_server.url}/")
    if len(late) > 1:
        expect(box).to_contain_text(f"{len(late) - 1} review")
    else:
        expect(box).to_have_count(0)


def test_a_firing_alerts_toast_links_to_its_runbook(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    engine, _ = make_engine("alpha")
    AlertRule.objects.exclude(name="Daily loss").update(enabled=False)
    AlertRule.objects.update_or_create(
        name="Daily loss",
        defaults={
            "metric": "daily_pnl_pct",
            "comparator": "<",
            "threshold": -3,
            "severity": "critical",
            "enabled": True,
        },
    )
    runbooks.seed_defaults()
    page.set_viewport_size({"width": 390, "height": 800})
    _log_in(page, uvicorn_server, operator)
    expect(page.locator("#alerts-badge")).to_have_attribute("data-live", "on")

    def loss() -> None:
        Engine.objects.filter(pk=engine.pk).update(
            session_start_equity=Decimal(100000), day_pnl=Decimal(-5000), equity=Decimal(95000)
        )
        evaluation.evaluate_engine(engine.pk)

    in_another_thread(loss)

    link = page.locator("#toasts .toast-critical .toast-runbook")
    expect(link).to_have_text("Runbook: Unexpected loss above 5 %")
    _shot(page, "toast", 390)
    link.click()
    expect(page.get_by_role("heading", name="Unexpected loss above 5 %")).to_be_visible()
    page.goto(f"{uvicorn_server.url}/alerts/")
    expect(page.locator("#open-alerts .alert-runbook")).to_have_attribute(
        "href", "/runbooks/unexpected-loss/"
    )
