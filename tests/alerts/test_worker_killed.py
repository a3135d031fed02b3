"""A Celery worker killed in the middle of sending: the notification is neither lost nor doubled.

Real processes: two `celery worker`s against the test database and Redis, and an SMTP server
that holds the first delivery's DATA open so the first worker can be killed during it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.db import transaction

from alerts import notify
from alerts.models import Alert, AlertRule, Notification, NotificationChannel
from alerts.tasks import resend_stuck_notifications
from controlplane.config.celery import app as celery_app
from controlplane.models import Engine
from tests.servers import REPO_ROOT, current_database_url, free_port, server_env

pytestmark = pytest.mark.django_db(transaction=True)

LEASE_S = "2"
WAIT_S = 45.0


class StallingInbox:
    """Holds the first message's DATA forever (its sender dies meanwhile); accepts the rest."""

    def __init__(self) -> None:
        self.first_arrived = threading.Event()
        self.messages: list[EmailMessage] = []
        self._stalled = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self._stalled:
            self._stalled = True
            self.first_arrived.set()
            await asyncio.Event().wait()  # never answered: the client is killed meanwhile
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)  # type: ignore[arg-type]
        )
        return "250 2.0.0 Accepted"


@pytest.fixture
def inbox() -> Iterator[tuple[StallingInbox, int]]:
    handler = StallingInbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def worker(port: int, log: Path) -> subprocess.Popen[bytes]:
    env = server_env(
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=str(port),
        NOTIFICATION_LEASE_S=LEASE_S,
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane.config.celery",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition: Callable[[], Any], what: str, log: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not {what} within {WAIT_S:.0f}s; workers said:\n"
                f"{log.read_text(errors='replace')[-6000:]}"
            )
        time.sleep(0.05)  # another process's work: there is no event to await
    return value


def test_a_worker_killed_mid_send_neither_loses_nor_doubles_the_notification(
    inbox, make_engine, tmp_path
):
    handler, port = inbox
    log = tmp_path / "workers.log"
    engine, _ = make_engine("alpha")
    channel = NotificationChannel(name="desk", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    rule = AlertRule.objects.create(
        name="Loss", metric="daily_pnl_pct", comparator="<", threshold=-3, severity="critical"
    )
    rule.channels.add(channel)
    alert = Alert.objects.create(
        rule=rule,
        engine=engine,
        state="firing",
        severity="critical",
        summary="alpha: Loss: daily_pnl_pct -5 % below -3 %",
    )
    celery_app.control.purge()  # what earlier tests queued and nobody ran is not this test's
    first = worker(port, log)
    try:
        with transaction.atomic():
            (row,) = notify.notification_enqueue(alert=alert, event="firing")
        assert handler.first_arrived.wait(WAIT_S), log.read_text(errors="replace")
        first.send_signal(signal.SIGKILL)  # in the middle of SMTP DATA
        first.wait(10)
        row.refresh_from_db()
        assert row.status == "sending" and handler.messages == []

        # Once its lease runs out the sweep sends it again, through another worker.
        wait_for(lambda: row.pk in notify.stuck_notification_ids(), "stuck", log)
        second = worker(port, log)
        try:
            assert resend_stuck_notifications() == 1
            wait_for(
                lambda: Notification.objects.filter(pk=row.pk, status="sent").exists(),
                "sent by the second worker",
                log,
            )
            # The sweep may run again meanwhile: nothing more goes out.
            assert resend_stuck_notifications() == 0
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()

    row.refresh_from_db()
    assert (row.status, row.attempts) == ("sent", 2)
    assert len(handler.messages) == 1
    assert "alpha: Loss" in handler.messages[0]["Subject"]
    assert Engine.objects.count() == 1
