"""Alerts in a real headless Chromium: a toast and the header's count, live, on any page."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from alerts import evaluation
from alerts.models import Alert, AlertRule
from controlplane.models import Engine, Instrument, Position
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
        defaults={
            "metric": "daily_pnl_pct",
            "comparator": "<",
            "threshold": -3,
            "hysteresis": 0.5,
            "severity": "critical",
            "enabled": True,
        },
    )
    _log_in(page, uvicorn_server, operator)
    page.goto(f"{uvicorn_server.url}/risk/")  # any page: alerts reach them all
    badge = page.locator("#alerts-badge")
    expect(badge).to_be_hidden()

    def day(pnl: int) -> None:
        Engine.objects.filter(pk=engine.pk).update(
            session_start_equity=Decimal(100000),
            day_pnl=Decimal(pnl),
            equity=Decimal(100000 + pnl),
        )
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


SHOTS = Path("/tmp/g-alerts")


def _mixed_alerts(make_engine: Callable[..., tuple[Engine, str]]) -> None:
    """Twelve open alerts: the severities interleaved by time, so that only the rank sorts."""
    rule, _ = AlertRule.objects.update_or_create(
        name="Drawdown",
        defaults={
            "metric": "drawdown_pct",
            "comparator": ">",
            "threshold": 10,
            "severity": "warning",
            "enabled": True,
        },
    )
    now = datetime.now(UTC)
    for i, severity in enumerate(["info", "warning", "critical"] * 4):
        engine = make_engine(f"desk-{i:02d}")[0]
        Alert.objects.create(
            rule=rule,
            engine=engine,
            state="firing" if i % 5 else "pending",
            severity=severity,
            summary=f"desk-{i:02d}: Drawdown: drawdown_pct {11 + i} % above 10 %",
            started_at=now - timedelta(minutes=i),
        )


def test_the_alerts_page_colours_and_ranks_severity_and_flags_silent_rules(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    _mixed_alerts(make_engine)
    _log_in(page, uvicorn_server, operator)

    page.goto(f"{uvicorn_server.url}/alerts/")

    badges = page.locator("#open-alerts tbody .sev")
    expect(badges).to_have_count(12)
    severities = badges.all_inner_texts()
    assert [s.lower() for s in severities] == ["critical"] * 4 + ["warning"] * 4 + ["info"] * 4
    colour = {
        s: page.locator(f"#open-alerts .sev-{s}").first.evaluate(
            "el => getComputedStyle(el).backgroundColor"
        )
        for s in ("critical", "warning", "info")
    }
    assert colour["critical"] == "rgb(255, 59, 59)"  # --halt: red, not the text's colour
    assert len(set(colour.values())) == 3
    # Drawdown has no channel: its alerts say so, and the box names it.
    expect(page.locator("#rules-without-channel")).to_contain_text("Drawdown")
    expect(page.locator("#open-alerts .no-channel").first).to_be_visible()
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "alerts-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "alerts-390.png"), full_page=True)


def test_the_overview_shows_a_stopped_engine_grey_and_an_orphaned_one_alerting(
    page: Page,
    uvicorn_server: UvicornServer,
    operator: User,
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    AlertRule.objects.exclude(name="Orphaned positions").update(enabled=False)
    AlertRule.objects.update_or_create(
        name="Orphaned positions",
        defaults={
            "metric": "orphaned_exposure",
            "comparator": ">",
            "threshold": 0,
            "severity": "critical",
            "enabled": True,
        },
    )
    now = datetime.now(UTC)
    live = make_engine("live-one")[0]
    stopped = make_engine("stopped-flat")[0]
    orphaned = make_engine("orphaned")[0]
    Engine.objects.filter(pk=live.pk).update(
        connected=True, last_seen_at=now + timedelta(hours=1), reported_state="ACTIVE"
    )
    Engine.objects.filter(pk=stopped.pk).update(
        connected=False, stopped_at=now, last_seen_at=now, reported_state="ACTIVE"
    )
    Engine.objects.filter(pk=orphaned.pk).update(
        connected=False, last_seen_at=now - timedelta(minutes=3), reported_state="ACTIVE"
    )
    instrument = Instrument.objects.create(symbol="AAPL")
    Position.objects.create(
        engine=orphaned,
        instrument=instrument,
        quantity=Decimal(300),
        avg_price=Decimal(190),
        last_price=Decimal(191),
    )
    for engine in (live, stopped, orphaned):
        evaluation.evaluate_engine(engine.pk)
    _log_in(page, uvicorn_server, operator)

    stopped_cell = page.locator('tr[data-engine="stopped-flat"] .conn')
    expect(stopped_cell).to_have_text(re.compile(r"^stopped"))
    expect(page.locator('tr[data-engine="orphaned"] .conn')).to_have_text("offline")
    expect(page.locator('tr[data-engine="orphaned"] .badge.alert')).to_have_text("1")
    expect(page.locator('tr[data-engine="stopped-flat"] .badge.alert')).to_have_count(0)
    # The theme's grey as the browser computes it, from a probe of our own: the page's own muted
    # elements may be hidden (a closed dialog's) and compute no colour.
    muted = page.evaluate(
        """() => {
            const probe = document.createElement("span");
            probe.style.color = "var(--muted)";
            document.body.appendChild(probe);
            const color = getComputedStyle(probe).color;
            probe.remove();
            return color;
        }"""
    )
    assert muted and stopped_cell.evaluate("el => getComputedStyle(el).color") == muted
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "overview-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(SHOTS / "overview-390.png"), full_page=True)

    page.goto(f"{uvicorn_server.url}/alerts/")
    expect(page.locator("#open-alerts")).to_contain_text("orphaned: Orphaned positions")
    expect(page.locator("#open-alerts")).to_contain_text("AAPL 300")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(SHOTS / "alerts-orphaned-1280.png"), full_page=True)
