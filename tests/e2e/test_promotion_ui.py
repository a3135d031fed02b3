"""A promotion in the browser: an operator requests the next stage on the go-live page, a risk
manager approves it; while the gate fails, the approval is refused, naming the criterion."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from playwright.sync_api import Page, expect

from controlplane.models import AuditEvent, Engine, StageChange
from golive.models import PromotionCriterion, PromotionRequest
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
    # A flushed test database has lost the default policy: the one criterion these tests need.
    PromotionCriterion.objects.get_or_create(
        from_stage="paper", key="min_days", defaults={"threshold": 14, "updated_by": "test"}
    )
    PromotionCriterion.objects.filter(from_stage="paper").exclude(key="min_days").update(
        enabled=False
    )


def _request(page: Page, server: UvicornServer, name: str, reason: str) -> None:
    page.goto(f"{server.url}/engines/{name}/go-live/")
    page.get_by_label("why it is ready").fill(reason)
    page.get_by_role("button", name="Request promotion").click()
    expect(page.locator(".messages")).to_contain_text("requested: a risk manager decides")
    expect(page.locator("#promotion")).to_contain_text("awaiting a second person")


def _switch(page: Page, server: UvicornServer, user: User, name: str) -> None:
    page.get_by_role("button", name="Log out").click()
    _log_in(page, server, user)
    page.goto(f"{server.url}/engines/{name}/go-live/")


@pytest.mark.parametrize("width", [1280, 390])
def test_an_operator_requests_and_a_risk_manager_approves(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
    width: int,
) -> None:
    _paper_gated_by_days_alone()
    engine, _ = make_engine("ready-one", mode="paper")
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=20))
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, operator)
    _request(page, uvicorn_server, "ready-one", "20 days in paper, no errors")

    _switch(page, uvicorn_server, risk_manager, "ready-one")
    promotion = page.locator("#promotion")
    expect(promotion).to_contain_text("requested by otto-operator")
    expect(promotion).to_contain_text("20 days in paper, no errors")
    page.get_by_label("Reason (required to reject or to override)").fill("checked")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"promotion-approve-{width}.png"), full_page=True)
    approve = page.get_by_role("button", name="Approve")
    box = approve.bounding_box()
    assert box is not None and box["x"] + box["width"] <= width  # within a phone's width
    approve.click()

    expect(page.locator(".messages")).to_contain_text("ready-one promoted (Paper → Shadow).")
    expect(page.locator('.stage-step[aria-current="step"]')).to_have_text("Shadow")
    expect(page.locator(".stage-history tbody tr").first).to_contain_text("rita-risk")
    engine.refresh_from_db()
    assert engine.stage == "shadow"


@pytest.mark.parametrize("width", [1280, 390])
def test_an_approval_while_the_gate_fails_is_refused_naming_the_criterion(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    risk_manager: User,
    make_engine: Callable[..., tuple[Engine, str]],
    width: int,
) -> None:
    _paper_gated_by_days_alone()
    engine, _ = make_engine("eager-one", mode="paper")
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=3))
    page.set_viewport_size({"width": width, "height": 800})
    _log_in(page, uvicorn_server, operator)
    _request(page, uvicorn_server, "eager-one", "looks fine to me")

    _switch(page, uvicorn_server, risk_manager, "eager-one")
    page.get_by_role("button", name="Approve").click()

    error = page.locator(".messages li.error")
    expect(error).to_contain_text("Approval refused")
    expect(error).to_contain_text("Days in paper fails (threshold >= 14 days, measured 3 days")
    expect(page.locator('.stage-step[aria-current="step"]')).to_have_text("Paper")
    # The failing criterion is shown failing on the page too, and the request still waits.
    expect(page.locator('tr[data-key="min_days"]')).to_contain_text("fail")
    expect(page.locator("#promotion")).to_contain_text(
        f"Paper → Shadow requested by {operator.username}"
    )
    page.screenshot(path=str(SCREENSHOTS / f"promotion-refused-{width}.png"), full_page=True)
    engine.refresh_from_db()
    assert engine.stage == "paper"
    assert not StageChange.objects.filter(engine=engine, to_stage="shadow").exists()
    assert PromotionRequest.objects.get(engine=engine).status == PromotionRequest.Status.PENDING
    refusal = AuditEvent.objects.get(action="promotion_refused")
    assert (refusal.actor, refusal.outcome) == (risk_manager.username, "refused")
    assert "Days in paper fails" in refusal.data["refusal"]
