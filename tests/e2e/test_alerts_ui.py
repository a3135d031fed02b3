"""Alerts in a real headless Chromium: a toast and the header's count, live, on any page."""

from __future__ import annotations

import threading
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from alerts import evaluation
from alerts.models import AlertRule
from controlplane.models import Engine
from tests.e2e.test_commands_ui import _log_in
from tests.servers import ARTIFACTS_DIR, UvicornServer

pytestmark = pytest.mark.e2e


def in_another_thread(work: Callable[[], object]) -> None:
    # Playwright's sync API keeps an event loop in this thread; the alert's live message is sent
    # with async_to_sync, which must run where no loop is.
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(30)


def test_a_firing_alert_shows_a_toast_and_the_count_then_its_resolution(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    engine, _ = make_engine("alpha")
    # Made here: tests that flush the database (as this one's server needs) drop shipped rows.
    AlertRule.objects.exclude(name="Daily loss").update(enabled=False)
    AlertRule.objects.update_or_create(
        name="Daily loss",
        defaults={"metric": "daily_pnl_pct", "comparator": "<", "threshold": -3,
                  "hysteresis": 0.5, "severity": "critical", "enabled": True},
    )  # fmt: skip
    _log_in(page, uvicorn_server, operator)
    page.goto(f"{uvicorn_server.url}/risk/")  # any page: alerts reach them all
    badge = page.locator("#alerts-badge")
    expect(badge).to_be_hidden()

    def day(pnl: int) -> None:
        Engine.objects.filter(pk=engine.pk).update(
            session_start_equity=Decimal(100000), day_pnl=Decimal(pnl),
            equity=Decimal(100000 + pnl),
        )  # fmt: skip
        evaluation.evaluate_engine(engine.pk)

    expect(badge).to_have_attribute("data-live", "on")  # the page's alert socket is open
    in_another_thread(lambda: day(-5000))

    toast = page.locator("#toasts .toast-critical")
    expect(toast).to_contain_text("alpha: Daily loss")
    expect(badge).to_have_text("1")
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS_DIR / "alerts-toast.png"))

    in_another_thread(lambda: day(-1000))
    expect(page.locator("#toasts .toast-resolved")).to_contain_text("alpha: Daily loss")
    expect(badge).to_be_hidden()
