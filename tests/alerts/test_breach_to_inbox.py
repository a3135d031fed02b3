"""From a breach in an engine's stored data to the people: one e-mail and one webhook post when
it fires, one of each when it resolves, through the rule evaluation and the real servers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from alerts import evaluation
from alerts.models import AlertRule, NotificationChannel
from controlplane.models import Engine

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_breach_reaches_mail_and_webhook_once_and_its_resolution_once(
    smtp,
    webhook,
    eager_celery,
    make_engine,
):
    engine, _ = make_engine("alpha")
    mail = NotificationChannel(name="desk-mail", kind="email")
    mail.target = "desk@example.com"
    mail.save()
    hook = NotificationChannel(name="desk-hook", kind="apprise")
    hook.target = webhook.url
    hook.save()
    AlertRule.objects.all().delete()
    rule = AlertRule.objects.create(
        name="Daily loss",
        metric="daily_pnl_pct",
        comparator="<",
        threshold=-3,
        hysteresis=0.5,
        severity="critical",
    )
    rule.channels.add(mail, hook)

    def day(pnl: int) -> None:
        Engine.objects.filter(pk=engine.pk).update(
            session_start_equity=Decimal(100000),
            day_pnl=Decimal(pnl),
            equity=Decimal(100000 + pnl),
        )
        evaluation.evaluate_engine(engine.pk)

    for pnl in (-3500, -4000, -3200, -2800):  # fires, stays, stays within the hysteresis band
        day(pnl)
    day(-2000)  # resolves
    day(-1000)

    subjects = [m["Subject"] for m in smtp.messages]
    assert len(subjects) == 2
    assert subjects[0].startswith("[FIRING critical]") and "alpha: Daily loss" in subjects[0]
    assert subjects[1].startswith("[RESOLVED]")
    assert len(webhook.posts) == 2
    assert "FIRING" in webhook.posts[0]["json"]["title"]
    assert "RESOLVED" in webhook.posts[1]["json"]["title"]
