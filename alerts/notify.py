"""Notifications: one row per alert event and channel, delivered by a Celery task, exactly once.

A row (``Notification``) is created idempotently (its ``key``), then claimed by one worker with a
conditional update (pending -> sending, with a lease in ``claimed_until`` and ``attempts + 1``),
sent through the channel's transport, and marked sent or failed; a transient error puts it back
to pending for a retry with backoff. A worker killed mid-send leaves the row "sending" with an
expired lease: ``stuck_notification_ids`` finds it and the periodic sweep sends it again.

While a row is pending after a failed attempt, ``claimed_until`` holds when the retry is due, so
the sweep does not undo the backoff.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from alerts.models import Alert, Notification, NotificationChannel
from alerts.runbooks import runbook_of
from alerts.transports import TransportError, transport_for

logger = logging.getLogger(__name__)

# A send must finish within the lease (settings.NOTIFICATION_LEASE_S; SMTP and Apprise time out
# well before), or another worker may take the row over and send it a second time.
MAX_ATTEMPTS = 5
# A pending row this long past due (created, or its retry due) lost its task: enqueue it again.
STUCK_AFTER = timedelta(seconds=30)
BACKOFF_BASE_S = 10
BACKOFF_FACTOR = 3
BACKOFF_MAX_S = 600

_EVENT_LABELS = {
    Notification.Event.FIRING: "FIRING",
    Notification.Event.REPEAT: "STILL FIRING",
    Notification.Event.ESCALATION: "ESCALATED",
    Notification.Event.RESOLVED: "RESOLVED",
    Notification.Event.TEST: "TEST",
}


def backoff_s(attempts: int) -> int:
    """Seconds before the next attempt after ``attempts`` failed ones: 10, 30, 90, 270..."""
    return int(min(BACKOFF_BASE_S * BACKOFF_FACTOR ** max(attempts - 1, 0), BACKOFF_MAX_S))


# --- Messages ------------------------------------------------------------------------------------


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "-"


def render_alert(alert: Alert, event: str) -> tuple[str, str]:
    """The subject and plain-text body of ``event`` for ``alert``."""
    label = _EVENT_LABELS.get(event, event.upper())
    severity = "" if event == Notification.Event.RESOLVED else f" {alert.severity}"
    subject = f"[{label}{severity}] {alert.summary}"[:300]
    rule = alert.rule
    lines = [alert.summary, ""]
    lines.append(f"Rule: {rule.name}" if rule else f"Source: {alert.source}")
    if alert.engine_id is not None:
        lines.append(f"Engine: {alert.engine}")
    lines.append(f"Severity: {alert.severity}")
    if alert.value is not None:
        lines.append(f"Value: {alert.value:.6g}")
    if rule is not None:
        lines.append(f"Threshold: {rule.get_comparator_display()} {rule.threshold:g}")
    lines.append(f"Since: {_when(alert.fired_at or alert.started_at)}")
    if event == Notification.Event.RESOLVED:
        lines.append(f"Resolved: {_when(alert.resolved_at)}")
    elif alert.acknowledged_at:
        who = alert.acknowledged_by_label or "someone"
        lines.append(f"Acknowledged by {who} at {_when(alert.acknowledged_at)}")
    elif event == Notification.Event.ESCALATION:
        lines.append("Nobody has acknowledged this alert yet.")
    if rule is not None and rule.description:
        lines += ["", rule.description]
    runbook = runbook_of(alert) if event != Notification.Event.RESOLVED else None
    if runbook is not None:
        lines += ["", f"Runbook: {runbook.title} ({runbook.url})"]
    lines += ["", f"Alert #{alert.pk}"]
    return subject, "\n".join(lines)


def render_html(subject: str, body: str) -> str:
    """The HTML part of an e-mail: the subject as a heading and the text body, escaped."""
    first, _, rest = body.partition("\n")
    paragraphs = [p.split("\n") for p in rest.strip().split("\n\n") if p.strip()]
    return format_html(
        '<!doctype html><html><body style="font-family: sans-serif">'
        "<h2>{}</h2><p><strong>{}</strong></p>{}</body></html>",
        subject,
        first,
        format_html_join(
            "",
            "<p>{}</p>",
            (
                (format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)),)
                for lines in paragraphs
            ),
        ),
    )


# --- Enqueue -------------------------------------------------------------------------------------


# The Celery task that delivers one notification (alerts.tasks.send_notification).
SEND_NOTIFICATION_TASK = "alerts.send_notification"


def notification_enqueue(
    *,
    alert: Alert,
    event: str,
    channels: Iterable[NotificationChannel] | None = None,
    sequence: int = 0,
) -> list[Notification]:
    """One row per enabled channel (default: the rule's), each sent once after the commit.

    Idempotent: the same (alert, event, sequence, channel) is one row however often this runs,
    and only a newly created row is enqueued.
    """
    if channels is None:
        channels = alert.rule.channels.all() if alert.rule is not None else []
    subject, body = render_alert(alert, event)
    rows: list[Notification] = []
    created_ids: list[int] = []
    for channel in channels:
        if not channel.enabled:
            continue
        row, created = Notification.objects.get_or_create(
            key=f"{alert.pk}:{event}:{sequence}:{channel.pk}",
            defaults={
                "alert": alert,
                "channel": channel,
                "event": event,
                "subject": subject,
                "body": body,
            },
        )
        rows.append(row)
        if created:
            created_ids.append(row.pk)
    if created_ids:
        transaction.on_commit(lambda: _enqueue_sends(created_ids))
    return rows


def _enqueue_sends(notification_ids: Iterable[int]) -> None:
    # By name: the task (alerts.tasks.send_notification) calls this module to deliver.
    send_notification = current_app.signature(SEND_NOTIFICATION_TASK)
    for notification_id in notification_ids:
        try:
            send_notification.delay(notification_id)
        except Exception:
            # The broker is down: the row stays pending and the periodic sweep enqueues it later.
            logger.exception("could not enqueue notification %s", notification_id)


# --- Delivery ------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"  # transient failure: back to pending, try again after ``retry_in_s``
    FAILED = "failed"
    SKIPPED = "skipped"  # another worker holds the row, or it is already done


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    error: str = ""
    retry_in_s: int = 0


def _claim(notification_id: int, now: datetime) -> int | None:
    """Take the row for this worker; returns its attempt number, or None if someone else has it."""
    claimable = Q(status=Notification.Status.PENDING) | Q(
        status=Notification.Status.SENDING, claimed_until__lt=now
    )
    claimed = Notification.objects.filter(claimable, pk=notification_id).update(
        status=Notification.Status.SENDING,
        claimed_until=now + timedelta(seconds=settings.NOTIFICATION_LEASE_S),
        attempts=F("attempts") + 1,
    )
    if claimed != 1:
        return None
    return Notification.objects.values_list("attempts", flat=True).get(pk=notification_id)


def notification_send(notification_id: int, *, retry: bool = True) -> SendResult:
    """Claim, send and record one notification; safe to run any number of times, concurrently.

    ``retry=False`` records a transient failure as final (a channel test shows it at once).
    """
    attempt = _claim(notification_id, timezone.now())
    if attempt is None:
        return SendResult(Outcome.SKIPPED)
    notification = Notification.objects.select_related("channel").get(pk=notification_id)
    # The attempt number fences the final write: if the lease ran out and another worker took the
    # row over, this worker's late result does not overwrite that worker's.
    mine = Notification.objects.filter(
        pk=notification_id, status=Notification.Status.SENDING, attempts=attempt
    )
    channel = notification.channel
    try:
        if not channel.enabled and notification.event != Notification.Event.TEST:
            raise TransportError("the channel was disabled before delivery", permanent=True)
        transport = transport_for(channel)
        transport.send(
            notification.subject,
            notification.body,
            html=render_html(notification.subject, notification.body),
        )
    except TransportError as exc:
        error = f"attempt {attempt}: {exc.message}"[:2000]
        if exc.permanent or not retry or attempt >= MAX_ATTEMPTS:
            mine.update(status=Notification.Status.FAILED, last_error=error, claimed_until=None)
            logger.warning("notification %s failed: %s", notification_id, error)
            return SendResult(Outcome.FAILED, error)
        delay = backoff_s(attempt)
        mine.update(
            status=Notification.Status.PENDING,
            last_error=error,
            claimed_until=timezone.now() + timedelta(seconds=delay),
        )
        logger.info("notification %s: %s; retry in %ss", notification_id, error, delay)
        return SendResult(Outcome.RETRY, error, delay)
    except Exception as exc:
        # A bug, not the destination: record it where operators look, and stop.
        error = f"attempt {attempt}: {type(exc).__name__}: {exc}"[:2000]
        mine.update(status=Notification.Status.FAILED, last_error=error, claimed_until=None)
        logger.exception("notification %s crashed", notification_id)
        return SendResult(Outcome.FAILED, error)
    if mine.update(status=Notification.Status.SENT, sent_at=timezone.now(), claimed_until=None):
        return SendResult(Outcome.SENT)
    logger.warning("notification %s was sent after its lease ran out", notification_id)
    return SendResult(Outcome.SENT)


def stuck_notification_ids(*, now: datetime | None = None, limit: int = 500) -> list[int]:
    """Rows whose task was lost: pending well past due, or sending with an expired lease."""
    now = now or timezone.now()
    overdue = now - STUCK_AFTER
    pending_overdue = Q(status=Notification.Status.PENDING) & (
        Q(claimed_until__isnull=True, created_at__lt=overdue) | Q(claimed_until__lt=overdue)
    )
    lease_expired = Q(status=Notification.Status.SENDING, claimed_until__lt=now)
    return list(
        Notification.objects.filter(pending_overdue | lease_expired)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )


def channel_test(*, channel: NotificationChannel) -> Notification:
    """Send a test message to ``channel`` now, through the same path; returns the row."""
    subject = f"[TEST] {channel.name}: the control plane can reach this channel"
    body = "\n".join(
        [
            f"This is a test notification for the channel {channel.name!r} ({channel.kind}).",
            "",
            "Alerts routed to this channel will arrive here.",
            f"Sent at {_when(timezone.now())}.",
        ]
    )
    notification = Notification.objects.create(
        key=f"test:{channel.pk}:{uuid.uuid4().hex}",
        channel=channel,
        event=Notification.Event.TEST,
        subject=subject,
        body=body,
    )
    notification_send(notification.pk, retry=False)
    notification.refresh_from_db()
    return notification
