"""Notifications delivered to real servers the tests start: an SMTP server (aiosmtpd) and an HTTP
webhook receiver (Apprise's json:// posts to it). Nothing between the code and the wire is mocked.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from alerts import notify
from alerts.models import Alert, AlertRule, Notification, NotificationChannel, Severity
from alerts.tasks import resend_stuck_notifications, send_notification
from controlplane.config.celery import app as celery_app
from controlplane.models import Engine
from tests.servers import free_port

# --- Servers -------------------------------------------------------------------------------------


@dataclass
class Inbox:
    """An SMTP server's handler: answers DATA with the queued replies, then 250."""

    replies: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    messages: list[EmailMessage] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    attempts: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
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


@dataclass
class Webhook:
    url: str
    statuses: list[int] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    hook = Webhook(url=f"json://127.0.0.1:{server.server_port}/hooks/trading")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.lock:
                hook.attempts += 1
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.posts.append(
                        {
                            "path": self.path,
                            "json": json.loads(body),
                            "content_type": self.headers["Content-Type"],
                        }
                    )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks run in the test's process, at once, as a worker would run them.

    Not propagating: an eager task's retry travels as an exception, and only a task whose
    exceptions are kept is retried (at once: eager retries ignore the countdown).
    """
    previous = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = False
    try:
        yield
    finally:
        celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = previous


# --- Data ----------------------------------------------------------------------------------------


def make_channel(name: str, kind: str, target: str) -> NotificationChannel:
    channel = NotificationChannel(name=name, kind=kind)
    channel.target = target
    channel.save()
    return channel


@pytest.fixture
def mail_channel(db: None) -> NotificationChannel:
    return make_channel("desk-mail", "email", "desk@example.com, risk@example.com")


@pytest.fixture
def hook_channel(webhook: Webhook, db: None) -> NotificationChannel:
    return make_channel("desk-hook", "apprise", webhook.url)


@pytest.fixture
def alpha(make_engine: Any) -> Engine:
    return make_engine("alpha")[0]


def firing_alert(engine: Engine, *channels: NotificationChannel) -> Alert:
    rule = AlertRule.objects.create(
        name="Daily loss (test)",
        metric="daily_pnl_pct",
        comparator="<",
        threshold=-3,
        severity=Severity.CRITICAL,
    )
    rule.channels.set(channels)
    now = timezone.now()
    return Alert.objects.create(
        rule=rule,
        engine=engine,
        state=Alert.State.FIRING,
        severity=Severity.CRITICAL,
        summary="alpha: Daily loss (test): daily_pnl_pct -3.2 % below -3",
        value=-3.2,
        fired_at=now,
    )


def parts(message: EmailMessage) -> dict[str, str]:
    return {
        part.get_content_type(): part.get_content()  # type: ignore[attr-defined]
        for part in message.walk()
        if not part.is_multipart()
    }


# --- Delivery ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_firing_alert_enqueued_twice_sends_one_email_and_its_resolution_one_more(
    smtp: Inbox,
    mail_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    alert = firing_alert(alpha, mail_channel)
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            rows = notify.notification_enqueue(alert=alert, event="firing")
        assert [row.channel for row in rows] == [mail_channel]

    assert len(smtp.messages) == 1
    message = smtp.messages[0]
    assert message["Subject"] == (
        "[FIRING critical] alpha: Daily loss (test): daily_pnl_pct -3.2 % below -3"
    )
    assert sorted(smtp.recipients[0]) == ["desk@example.com", "risk@example.com"]
    content = parts(message)
    assert set(content) == {"text/plain", "text/html"}
    assert "Rule: Daily loss (test)" in content["text/plain"]
    assert "Value: -3.2" in content["text/plain"]
    assert "<h2>[FIRING critical] alpha: Daily loss (test)" in content["text/html"]
    row = Notification.objects.get()
    assert (row.status, row.attempts, row.key) == (
        "sent",
        1,
        f"{alert.pk}:firing:0:{mail_channel.pk}",
    )
    assert row.sent_at is not None

    Alert.objects.filter(pk=alert.pk).update(state="resolved", resolved_at=timezone.now())
    alert.refresh_from_db()
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            notify.notification_enqueue(alert=alert, event="resolved")

    assert len(smtp.messages) == 2
    assert smtp.messages[1]["Subject"].startswith("[RESOLVED] alpha: Daily loss (test)")
    assert "Resolved: " in parts(smtp.messages[1])["text/plain"]
    assert Notification.objects.filter(status="sent").count() == 2


@pytest.mark.django_db
def test_a_webhook_channel_gets_exactly_one_json_post(
    webhook: Webhook,
    hook_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    alert = firing_alert(alpha, hook_channel)
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            notify.notification_enqueue(alert=alert, event="firing")

    assert len(webhook.posts) == 1
    post = webhook.posts[0]
    assert post["path"] == "/hooks/trading"
    assert post["content_type"].startswith("application/json")
    assert post["json"]["title"].startswith("[FIRING critical] alpha: Daily loss (test)")
    assert "Engine: alpha" in post["json"]["message"]
    assert Notification.objects.get().status == "sent"


@pytest.mark.django_db
def test_only_enabled_channels_get_a_row_and_escalation_goes_to_the_channels_given(
    webhook: Webhook,
    mail_channel: NotificationChannel,
    hook_channel: NotificationChannel,
    alpha: Engine,
) -> None:
    mail_channel.enabled = False
    mail_channel.save()
    alert = firing_alert(alpha, mail_channel, hook_channel)
    assert [r.channel for r in notify.notification_enqueue(alert=alert, event="firing")] == [
        hook_channel
    ]
    pager = make_channel("pager", "apprise", "json://127.0.0.1:9/pager")
    rows = notify.notification_enqueue(alert=alert, event="escalation", channels=[pager])
    assert [(r.channel, r.key) for r in rows] == [(pager, f"{alert.pk}:escalation:0:{pager.pk}")]
    assert rows[0].subject.startswith("[ESCALATED critical]")
    assert "Nobody has acknowledged" in rows[0].body
    # Repeats are told apart by their sequence number.
    notify.notification_enqueue(alert=alert, event="repeat", sequence=1)
    notify.notification_enqueue(alert=alert, event="repeat", sequence=2)
    notify.notification_enqueue(alert=alert, event="repeat", sequence=2)
    assert Notification.objects.filter(event="repeat").count() == 2


@pytest.mark.django_db
def test_a_transient_smtp_failure_is_retried_and_delivered_once(
    smtp: Inbox,
    mail_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    smtp.replies = ["451 4.7.1 Greylisted, try again later"]
    alert = firing_alert(alpha, mail_channel)
    with django_capture_on_commit_callbacks(execute=True):
        notify.notification_enqueue(alert=alert, event="firing")

    assert smtp.attempts == 2
    assert len(smtp.messages) == 1
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("sent", 2)
    assert "451" in row.last_error  # the failed attempt stays on record


@pytest.mark.django_db
def test_a_webhook_answering_503_is_retried_and_gets_one_post(
    webhook: Webhook,
    hook_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    webhook.statuses = [503]
    alert = firing_alert(alpha, hook_channel)
    with django_capture_on_commit_callbacks(execute=True):
        notify.notification_enqueue(alert=alert, event="firing")

    assert webhook.attempts == 2
    assert len(webhook.posts) == 1
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("sent", 2)
    assert "503" in row.last_error


@pytest.mark.django_db
def test_a_transient_failure_that_lasts_gives_up_after_the_last_attempt(
    webhook: Webhook,
    hook_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
) -> None:
    webhook.statuses = [503] * 10
    alert = firing_alert(alpha, hook_channel)
    (row,) = notify.notification_enqueue(alert=alert, event="firing")
    send_notification.apply(args=[row.pk])

    row.refresh_from_db()
    assert (row.status, row.attempts) == ("failed", notify.MAX_ATTEMPTS)
    assert row.last_error.startswith(f"attempt {notify.MAX_ATTEMPTS}: Apprise:")
    assert webhook.attempts == notify.MAX_ATTEMPTS
    assert webhook.posts == []


@pytest.mark.django_db
def test_a_retry_waits_longer_each_time(
    webhook: Webhook, hook_channel: NotificationChannel, alpha: Engine
) -> None:
    webhook.statuses = [503, 503]
    (row,) = notify.notification_enqueue(alert=firing_alert(alpha, hook_channel), event="firing")
    first = notify.notification_send(row.pk)
    second = notify.notification_send(row.pk)
    assert (first.outcome, second.outcome) == (notify.Outcome.RETRY, notify.Outcome.RETRY)
    assert 0 < first.retry_in_s < second.retry_in_s
    row.refresh_from_db()
    # Pending until the retry is due, so the sweep does not run ahead of the backoff.
    assert row.status == "pending"
    assert row.claimed_until > timezone.now() + timedelta(seconds=first.retry_in_s)
    assert notify.stuck_notification_ids() == []


@pytest.mark.django_db
def test_a_permanent_smtp_refusal_is_recorded_as_failed_without_a_retry(
    smtp: Inbox,
    mail_channel: NotificationChannel,
    alpha: Engine,
    eager_celery: None,
    django_capture_on_commit_callbacks: Any,
) -> None:
    smtp.replies = ["550 5.1.1 Mailbox unavailable"]
    alert = firing_alert(alpha, mail_channel)
    with django_capture_on_commit_callbacks(execute=True):
        notify.notification_enqueue(alert=alert, event="firing")

    assert smtp.attempts == 1
    assert smtp.messages == []
    row = Notification.objects.get()
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550" in row.last_error
    assert "Mailbox unavailable" in row.last_error


@pytest.mark.django_db
def test_an_apprise_url_that_does_not_parse_fails_at_once(alpha: Engine) -> None:
    broken = make_channel("broken", "apprise", "nonsense-without-a-scheme")
    (row,) = notify.notification_enqueue(alert=firing_alert(alpha, broken), event="firing")
    assert notify.notification_send(row.pk).outcome is notify.Outcome.FAILED
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("failed", 1)
    assert "does not recognise" in row.last_error


@pytest.mark.django_db
def test_email_switched_off_is_a_recorded_failure(
    settings: Any, mail_channel: NotificationChannel, alpha: Engine
) -> None:
    settings.EMAIL_ENABLED = False
    (row,) = notify.notification_enqueue(alert=firing_alert(alpha, mail_channel), event="firing")
    notify.notification_send(row.pk)
    row.refresh_from_db()
    assert row.status == "failed"
    assert "EMAIL_ENABLED" in row.last_error


@pytest.mark.django_db
def test_the_task_run_twice_sends_once(
    smtp: Inbox, mail_channel: NotificationChannel, alpha: Engine, eager_celery: None
) -> None:
    (row,) = notify.notification_enqueue(alert=firing_alert(alpha, mail_channel), event="firing")
    results = [send_notification.apply(args=[row.pk]).result for _ in range(2)]
    assert results == ["sent", "skipped"]
    assert len(smtp.messages) == 1


@pytest.mark.django_db(transaction=True)
def test_the_task_run_twice_concurrently_sends_once(
    smtp: Inbox, mail_channel: NotificationChannel, alpha: Engine, eager_celery: None
) -> None:
    smtp.delay_s = 0.5  # both workers are in flight at once
    # The row as enqueuing leaves it (enqueuing itself would send it at once: autocommit).
    row = Notification.objects.create(
        key="concurrent",
        alert=firing_alert(alpha, mail_channel),
        channel=mail_channel,
        event="firing",
        subject="[FIRING critical] alpha",
        body="alpha",
    )
    start = threading.Barrier(2)
    results: list[str] = []

    def worker() -> None:
        try:
            start.wait()
            results.append(send_notification.apply(args=[row.pk]).result)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(results) == ["sent", "skipped"]
    assert len(smtp.messages) == 1
    row.refresh_from_db()
    assert (row.status, row.attempts) == ("sent", 1)


@pytest.mark.django_db
def test_a_row_left_sending_by_a_killed_worker_is_resent_by_the_sweep(
    smtp: Inbox, mail_channel: NotificationChannel, alpha: Engine, eager_celery: None
) -> None:
    alert = firing_alert(alpha, mail_channel)
    (killed,) = notify.notification_enqueue(alert=alert, event="firing")
    (in_flight,) = notify.notification_enqueue(alert=alert, event="repeat", sequence=1)
    now = timezone.now()
    # The first worker died mid-send: its claim ran out. The second is still within its lease.
    Notification.objects.filter(pk=killed.pk).update(
        status="sending", attempts=1, claimed_until=now - timedelta(seconds=1)
    )
    Notification.objects.filter(pk=in_flight.pk).update(
        status="sending", attempts=1, claimed_until=now + timedelta(seconds=50)
    )

    assert resend_stuck_notifications.apply().result == 1

    assert len(smtp.messages) == 1
    assert smtp.messages[0]["Subject"].startswith("[FIRING critical]")
    killed.refresh_from_db()
    in_flight.refresh_from_db()
    assert (killed.status, killed.attempts) == ("sent", 2)
    assert (in_flight.status, in_flight.attempts) == ("sending", 1)
    assert resend_stuck_notifications.apply().result == 0


@pytest.mark.django_db
def test_a_pending_row_whose_task_was_lost_is_sent_by_the_sweep(
    smtp: Inbox, mail_channel: NotificationChannel, alpha: Engine, eager_celery: None
) -> None:
    (lost,) = notify.notification_enqueue(alert=firing_alert(alpha, mail_channel), event="firing")
    assert notify.stuck_notification_ids() == []  # just created: its task is on its way
    Notification.objects.filter(pk=lost.pk).update(
        created_at=timezone.now() - notify.STUCK_AFTER - timedelta(seconds=1)
    )
    assert resend_stuck_notifications.apply().result == 1
    assert len(smtp.messages) == 1
    lost.refresh_from_db()
    assert lost.status == "sent"


# --- Channel tests and the admin ----------------------------------------------------------------


@pytest.mark.django_db
def test_a_channel_test_sends_synchronously_and_returns_the_result(
    webhook: Webhook, hook_channel: NotificationChannel
) -> None:
    row = notify.channel_test(channel=hook_channel)
    assert (row.status, row.event, row.alert) == ("sent", "test", None)
    assert webhook.posts[0]["json"]["title"].startswith("[TEST] desk-hook")

    webhook.statuses = [503]
    row = notify.channel_test(channel=hook_channel)
    assert (row.status, row.attempts) == ("failed", 1)  # a test is not retried behind your back
    assert "503" in row.last_error


@pytest.fixture
def admin_client_(admin_user: Any) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


@pytest.mark.django_db
def test_the_test_button_on_a_channel_sends_and_shows_the_result(
    admin_client_: Client, webhook: Webhook, hook_channel: NotificationChannel
) -> None:
    change_url = reverse("admin:alerts_notificationchannel_change", args=[hook_channel.pk])
    page = admin_client_.get(change_url).content.decode()
    test_url = reverse("admin:alerts_notificationchannel_test", args=[hook_channel.pk])
    assert f'action="{test_url}"' in page
    assert admin_client_.get(test_url).status_code == 405  # sending is never a GET

    response = admin_client_.post(test_url, follow=True)

    assert response.redirect_chain == [(change_url, 302)]
    assert "Test notification to desk-hook: sent." in response.content.decode()
    assert len(webhook.posts) == 1

    webhook.statuses = [503]
    response = admin_client_.post(test_url, follow=True)
    assert "Test notification to desk-hook: failed: attempt 1: Apprise:" in (
        response.content.decode()
    )


@pytest.mark.django_db
def test_the_send_a_test_action_reports_each_channel(
    admin_client_: Client,
    smtp: Inbox,
    webhook: Webhook,
    mail_channel: NotificationChannel,
    hook_channel: NotificationChannel,
) -> None:
    smtp.replies = ["550 5.1.1 Mailbox unavailable"]
    response = admin_client_.post(
        reverse("admin:alerts_notificationchannel_changelist"),
        {"action": "send_test", "_selected_action": [mail_channel.pk, hook_channel.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "Test notification to desk-hook: sent." in page
    assert "Test notification to desk-mail: failed: attempt 1: SMTP 550" in page
    assert len(webhook.posts) == 1


@pytest.mark.django_db
def test_the_target_is_stored_encrypted_and_never_shown_in_the_admin(
    admin_client_: Client, webhook: Webhook
) -> None:
    secret_url = webhook.url.replace("/hooks/trading", "/hooks/s3cr3t-t0k3n")
    add_url = reverse("admin:alerts_notificationchannel_add")
    without_target = admin_client_.post(
        add_url, {"name": "ops", "kind": "apprise", "enabled": "on"}
    )
    assert without_target.status_code == 200  # the target is required on add
    response = admin_client_.post(
        add_url, {"name": "ops", "kind": "apprise", "target": secret_url, "enabled": "on"}
    )
    assert response.status_code == 302
    channel = NotificationChannel.objects.get(name="ops")
    assert channel.target == secret_url
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT row_to_json(c)::text FROM alerts_notificationchannel c WHERE id = %s",
            [channel.pk],
        )
        (stored,) = cursor.fetchone()
    assert "s3cr3t" not in stored
    assert "127.0.0.1" not in stored

    change_url = reverse("admin:alerts_notificationchannel_change", args=[channel.pk])
    for url in (change_url, reverse("admin:alerts_notificationchannel_changelist")):
        page = admin_client_.get(url).content.decode()
        assert "s3cr3t" not in page
        assert "json://…" in page  # the hint

    # Saved again without a target: kept as it was.
    response = admin_client_.post(
        change_url, {"name": "ops-desk", "kind": "apprise", "target": "", "enabled": "on"}
    )
    assert response.status_code == 302
    channel.refresh_from_db()
    assert (channel.name, channel.target) == ("ops-desk", secret_url)

    # A target Apprise cannot use is refused, and the kind cannot change without a new target.
    page = admin_client_.post(
        change_url,
        {"name": "ops-desk", "kind": "apprise", "target": "no scheme here", "enabled": "on"},
    ).content.decode()
    assert "Apprise does not recognise this URL" in page
    page = admin_client_.post(
        change_url, {"name": "ops-desk", "kind": "email", "target": "", "enabled": "on"}
    ).content.decode()
    assert "A new kind needs a new target." in page
    channel.refresh_from_db()
    assert (channel.kind, channel.target) == ("apprise", secret_url)


@pytest.mark.django_db
def test_deliveries_are_listed_read_only_in_the_admin(
    admin_client_: Client, mail_channel: NotificationChannel, alpha: Engine
) -> None:
    (row,) = notify.notification_enqueue(alert=firing_alert(alpha, mail_channel), event="firing")
    Notification.objects.filter(pk=row.pk).update(
        status="failed", attempts=5, last_error="attempt 5: SMTP 451 greylisted"
    )
    page = admin_client_.get(reverse("admin:alerts_notification_changelist")).content.decode()
    assert "attempt 5: SMTP 451 greylisted" in page
    assert "desk-mail" in page
    change = admin_client_.get(reverse("admin:alerts_notification_change", args=[row.pk]))
    assert change.status_code == 200
    assert 'name="_save"' not in change.content.decode()
    assert admin_client_.get(reverse("admin:alerts_notification_add")).status_code == 403


@pytest.mark.django_db
def test_an_alert_is_acknowledged_from_the_admin(
    admin_client_: Client, admin_user: Any, mail_channel: NotificationChannel, alpha: Engine
) -> None:
    alert = firing_alert(alpha, mail_channel)
    response = admin_client_.post(
        reverse("admin:alerts_alert_changelist"),
        {"action": "acknowledge", "_selected_action": [alert.pk]},
        follow=True,
    )
    assert "1 alert(s) acknowledged." in response.content.decode()
    alert.refresh_from_db()
    assert alert.acknowledged_by == admin_user
    assert alert.acknowledged_at is not None
