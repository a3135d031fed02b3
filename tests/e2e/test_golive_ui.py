"""Going live in the browser: the fleet marks an engine ready for its next stage, and its go-live
page says why, at a desk's width and a phone's."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.models import StageChange
from golive.models import PromotionCriterion
from tests.conftest import PASSWORD
from tests.servers import UvicornServer

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path("/tmp/f-screens")


def _log_in(page: Page, server: UvicornServer, user: User) -> None:
    page.goto(f"{server.url}/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()


def _paper_gated_by_days_alone() -> None:
    # A flushed test database has lost the default policy: the one criterion this test needs.
    PromotionCriterion.objects.get_or_create(
        from_stage="paper", key="min_days", defaults={"threshold": 14, "updated_by": "test"}
    )
    PromotionCriterion.objects.filter(from_stage="paper").exclude(key="min_days").update(
        enabled=False
    )


@pytest.mark.parametrize("width", [1280, 390])
def test_the_fleet_marks_the_ready_engine_and_its_page_says_why(
    page: Page, uvicorn_server: UvicornServer, viewer: User, make_engine, width: int
) -> None:
    _paper_gated_by_days_alone()
    ready, _ = make_engine("ready-one", mode="paper")
    make_engine("waiting-one", mode="paper")
    StageChange.objects.filter(engine=ready).update(at=timezone.now() - timedelta(days=20))
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, viewer)

    ready_badge = page.locator('tr[data-engine="ready-one"] .stage-badge')
    expect(ready_badge).to_have_text("Paper ↑")
    expect(ready_badge).to_have_attribute("title", re.compile("ready for Shadow"))
    expect(page.locator('tr[data-engine="waiting-one"] .stage-badge')).to_have_text("Paper")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"golive-fleet-{width}.png"))

    ready_badge.click()
    expect(
        page.get_by_role("heading", name=re.compile("Next step: Paper → Shadow"))
    ).to_be_visible()
    expect(page.locator("#gate-verdict")).to_have_text("ready")
    row = page.locator('tr[data-key="min_days"]')
    expect(row).to_contain_text("pass")
    expect(row).to_contain_text("20 days")
    page.screenshot(path=str(SCREENSHOTS / f"golive-page-{width}.png"), full_page=True)
