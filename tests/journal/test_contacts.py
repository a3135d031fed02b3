"""Emergency contacts: the channel alert escalation uses follows them, in escalation order, and
an escalated alert reaches them by e-mail through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from alerts import evaluation, notify
from alerts.models import Alert, AlertRule, Notification, NotificationChannel, Severity
from journal import contacts
from journal.incidents import IncidentForbidden
from tests.alerts.test_notifications import smtp  # noqa: F401  (the SMTP server fixture)

pytestmark = pytest.mark.django_db


def _contact(actor: Any, name: str, order: int, **extra: Any) -> Any:
    data = {
        "name": name,
        "role": "desk",
        "phone": "+1 212 555 0100",
        "email": f"{name.lower()}@example.com",
        "escalation_order": order,
    }
    return contacts.contact_create(actor=actor, data=data | extra)


def test_the_escalation_channel_lists_the_active_contacts_in_order(risk_manager, operator):
    second = _contact(risk_manager, "Bob", 2)
    _contact(risk_manager, "Ann", 1)
    _contact(risk_manager, "Cid", 3, active=False)
    channel = NotificationChannel.objects.get(name=contacts.CHANNEL_NAME)
    assert channel.kind == "email" and channel.enabled
    assert channel.target == "ann@example.com, bob@example.com"

    contacts.contact_delete(contact=second, actor=risk_manager)
    channel.refresh_from_db()
    assert channel.target == "ann@example.com"
    with pytest.raises(IncidentForbidden):
        _contact(operator, "Dan", 4)


def test_without_active_contacts_the_channel_is_off(risk_manager):
    only = _contact(risk_manager, "Ann", 1)
    contacts.contact_delete(contact=only, actor=risk_manager)
    channel = NotificationChannel.objects.get(name=contacts.CHANNEL_NAME)
    assert not channel.enabled


def test_an_unacknowledged_alert_escalates_to_the_contacts_by_email(
    risk_manager,
    make_engine,
    smtp,  # noqa: F811
):
    engine, _ = make_engine("alpha")
    _contact(risk_manager, "Ann", 1)
    _contact(risk_manager, "Bob", 2)
    rule = AlertRule.objects.create(
        name="Daily loss (escalates)",
        metric="daily_pnl_pct",
        comparator="<",
        threshold=-3,
        severity=Severity.CRITICAL,
        escalate_after_s=60,
        repeat_interval_s=0,
    )
    rule.escalation_channels.set([NotificationChannel.objects.get(name=contacts.CHANNEL_NAME)])
    fired = timezone.now() - timedelta(minutes=5)
    Alert.objects.create(
        rule=rule,
        engine=engine,
        state=Alert.State.FIRING,
        severity=Severity.CRITICAL,
        summary="alpha: daily loss -4 %",
        fired_at=fired,
        started_at=fired,
    )

    assert evaluation.repeat_and_escalate() == 1
    row = Notification.objects.get(event="escalation")
    assert notify.notification_send(row.pk).outcome == notify.Outcome.SENT
    [message] = smtp.messages
    assert smtp.recipients == [["ann@example.com", "bob@example.com"]]
    assert "ESCALATED" in message["Subject"]
