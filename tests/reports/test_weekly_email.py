"""The weekly e-mail, delivered to an SMTP server the test starts (aiosmtpd), with PNG charts that
kaleido really renders in the system Chromium (once for the module: the renders are cached by
figure, and the first test renders without the cache).
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from controlplane.config.celery import app as celery_app
from dashboard.models import ReportDelivery, profile_for
from dashboard.reports import analytics, charts, weekly
from dashboard.tasks import send_weekly_reports
from tests.reports.conftest import WEEK
from tests.servers import free_port

pytestmark = pytest.mark.django_db
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Inbox:
    """An SMTP server's handler: answers DATA with the queued replies, then 250."""

    replies: list[str] = field(default_factory=list)
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    attempts: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        reply = self.replies.pop(0) if self.replies else "250 2.0.0 Accepted"
        if reply.startswith("250"):
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
            self.recipients.append(list(envelope.rcpt_tos))
        return reply


@pytest.fixture
def smtp(settings: Any) -> Iterator[Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = controller.port
    settings.EMAIL_ENABLED = True
    settings.EMAIL_TIMEOUT = 5
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks run at once in the test's process; a retry runs at once too (the countdown ignored).

    Not propagating: an eager task's retry travels as an exception, and only a task whose
    exceptions are kept is retried.
    """
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous


def subscribe(user: User, address: str, *, on: bool = True) -> User:
    user.email = address
    user.save(update_fields=["email"])
    profile = profile_for(user)
    profile.weekly_report = on
    profile.save()
    return user


@pytest.fixture
def readers(viewer: User, operator: User, outsider: User) -> dict[str, User]:
    return {
        "subscribed": subscribe(viewer, "vera@example.com"),
        "unsubscribed": subscribe(operator, "otto@example.com", on=False),
        # Subscribed, but may not see the engines: gets nothing.
        "outsider": subscribe(outsider, "oscar@example.com"),
    }


def leaves(message: EmailMessage) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for part in message.walk():
        if not part.is_multipart():
            found.setdefault(part.get_content_type(), []).append(part)
    return found


# --- Tests ---------------------------------------------------------------------------------------


def test_kaleido_renders_pngs_in_the_system_chromium(week_data: dict[str, Any]) -> None:
    report = weekly.weekly_report(WEEK, ZoneInfo("UTC"))
    figures = [
        charts.equity_drawdown_figure(report.fleet, theme="email"),
        charts.daily_pnl_figure(report.fleet, theme="email"),
    ]
    cache.delete(charts.png_cache_key(figures))  # really render, whatever ran before
    equity, pnl = charts.render_pngs(figures)
    for png in (equity, pnl):
        assert png.startswith(PNG_SIGNATURE)
        width = int.from_bytes(png[16:20], "big")
        assert width == charts.PNG_WIDTH * 2  # rendered at scale 2 for sharp screens
    assert charts.render_pngs(figures) == [equity, pnl]  # the second time: cached


def test_the_subscribed_user_gets_the_report_with_inline_charts(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    send_weekly_reports.apply(kwargs={"week": WEEK})

    assert smtp.recipients == [["vera@example.com"]]
    message = smtp.messages[0]
    assert message["Subject"] == (
        "Trading Control Plane weekly report 2026-W47: fleet +469.90 (+0.31 %)"
    )
    assert message.get_content_type() == "multipart/related"
    parts = leaves(message)
    text = parts["text/plain"][0].get_content()
    html = parts["text/html"][0].get_content()
    # Figures worked out by hand in conftest.py, as the text part writes them.
    assert "Return          +0.31 %" in text
    assert "P&L             +469.90" in text
    assert "Equity          150000.00 -> 150469.90" in text
    assert "Max drawdown    0.99 %" in text
    assert "Trades          5 fills, 3 round trips" in text
    assert "Win rate        66.7 %" in text
    assert "Profit factor   9.67" in text
    assert "Slippage        avg 38.0 bps, worst 90.1 bps" in text
    assert "alpha: return +0.97 %, P&L 969.90, 5 trades, win rate 66.7 %, max DD 1.49 %" in text
    assert "mean-rev: return -1.00 %, P&L -500.00, 0 trades" in text
    assert "No trading this week" not in text
    assert "Weekly report 2026-W47" in html
    assert "+0.31 %" in html and "+469.90" in html

    images = parts["image/png"]
    assert len(images) == 2
    for image in images:
        assert image.get_content().startswith(PNG_SIGNATURE)
        cid = image["Content-ID"].strip("<>")
        assert f'src="cid:{cid}"' in html
    assert {i["Content-ID"] for i in images} == {"<equity-drawdown>", "<daily-pnl>"}

    delivery = ReportDelivery.objects.get()
    assert (delivery.user, delivery.week, delivery.status, delivery.attempts) == (
        readers["subscribed"],
        WEEK,
        "sent",
        1,
    )
    assert delivery.sent_at is not None


def test_running_the_task_twice_sends_once(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    send_weekly_reports.apply(kwargs={"week": WEEK})
    send_weekly_reports.apply(kwargs={"week": WEEK})
    assert len(smtp.messages) == 1
    assert ReportDelivery.objects.get().attempts == 1


def test_a_refused_send_is_recorded_and_retried(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    smtp.replies = ["554 5.7.1 Mailbox unavailable"]
    send_weekly_reports.apply(kwargs={"week": WEEK})

    assert smtp.attempts == 2
    assert len(smtp.messages) == 1
    delivery = ReportDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    assert "attempt 1: SMTPDataError" in delivery.error
    assert "Mailbox unavailable" in delivery.error


def test_a_send_that_keeps_failing_gives_up_after_the_last_attempt(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    smtp.replies = ["554 5.7.1 Go away"] * 20
    send_weekly_reports.apply(kwargs={"week": WEEK})

    delivery = ReportDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("failed", weekly.MAX_ATTEMPTS)
    assert smtp.attempts == weekly.MAX_ATTEMPTS
    assert delivery.error.startswith(f"attempt {weekly.MAX_ATTEMPTS}: SMTPDataError")
    # Run again (the next beat, a person pressing "run"): the row says it gave up; nothing is sent.
    assert weekly.weekly_report_deliver(user_id=delivery.user_id, week=WEEK).outcome is (
        weekly.Outcome.GAVE_UP
    )
    assert smtp.attempts == weekly.MAX_ATTEMPTS


def test_a_week_without_trading_says_so(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    send_weekly_reports.apply(kwargs={"week": "2026-W40"})

    message = smtp.messages[0]
    assert message["Subject"].endswith("weekly report 2026-W40: no trading")
    parts = leaves(message)
    assert "No trading this week." in parts["text/plain"][0].get_content()
    assert "No trading this week." in parts["text/html"][0].get_content()
    assert "image/png" not in parts  # no equity to draw
    assert ReportDelivery.objects.get(week="2026-W40").status == "sent"


def test_the_schedule_is_monday_0700_in_the_report_timezone_and_editable(db: None) -> None:
    task = PeriodicTask.objects.get(task="dashboard.tasks.send_weekly_reports")
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week) == ("0", "7", "1")
    assert str(crontab.timezone) == "UTC"
    assert task.enabled and task.expire_seconds == 6 * 3600


def test_without_a_week_it_sends_the_previous_iso_week(
    smtp: Inbox, eager_celery: None, readers: dict[str, User], week_data: dict[str, Any]
) -> None:
    send_weekly_reports.apply()
    expected = analytics.previous_iso_week(timezone.now(), ZoneInfo("UTC"))
    assert ReportDelivery.objects.get().week == expected
    assert len(smtp.messages) == 1
