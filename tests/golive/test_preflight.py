"""Pre-flight checks before real money: each passes on what holds now, fails or is not known
otherwise, and says what it found; the engine's clock offset comes from its heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from alerts.models import AlertRule, Notification, NotificationChannel
from controlplane.gateway import session
from controlplane.models import (
    Engine,
    Instrument,
    MetricSample,
    Position,
)
from engine_sdk import protocol as p
from golive import preflight
from golive.models import KillDrill
from risk.selectors import limits_revision

pytestmark = pytest.mark.django_db


def by_key(engine: Engine) -> dict[str, preflight.Check]:
    engine.refresh_from_db()
    return {check.key: check for check in preflight.checks(engine, timezone.now())}


def metric(engine: Engine, name: str, value: float, *, ago: timedelta = timedelta(0)) -> None:
    seq = MetricSample.objects.filter(engine=engine).count() + 1
    MetricSample.objects.create(
        engine=engine, ts=timezone.now() - ago, name=name, value=value, seq=seq
    )


def heartbeat(engine: Engine, *, clock_off: timedelta) -> None:
    frame = p.Heartbeat(
        ts=datetime.now(UTC) + clock_off, trading_state="ACTIVE", last_seq=0, limits_version=None
    )
    assert session.heartbeat(engine.pk, frame) == []


def channel_tested(*, ago: timedelta) -> None:
    channel = NotificationChannel(name="desk-mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    Notification.objects.create(
        key=f"test-{ago}",
        channel=channel,
        event=Notification.Event.TEST,
        subject="TEST",
        body="",
        status=Notification.Status.SENT,
        sent_at=timezone.now() - ago,
    )


def test_a_fresh_engine_is_not_ready_for_real_money_and_each_check_says_why(make_engine):
    engine, _ = make_engine("fresh", mode="paper")
    AlertRule.objects.update(enabled=False)
    checks = by_key(engine)
    assert list(checks) == [
        "market_data_fresh",
        "broker_connected",
        "risk_system_active",
        "reconciliation_clean",
        "monitoring_live",
        "kill_switch_drilled",
        "clock_in_sync",
        "target_capital_set",
    ]
    assert checks["market_data_fresh"].passed is None
    assert "no quote_age_ms metric" in checks["market_data_fresh"].detail
    assert checks["broker_connected"].passed is None
    assert checks["risk_system_active"].passed is False
    assert checks["reconciliation_clean"].passed is True
    assert checks["monitoring_live"].passed is False
    assert "no enabled alert rule covers the engine" in checks["monitoring_live"].detail
    assert checks["kill_switch_drilled"].passed is False
    assert checks["clock_in_sync"].passed is None
    assert checks["target_capital_set"].passed is False
    assert "no target capital" in checks["target_capital_set"].detail
    assert [c.key for c in preflight.failures(engine, timezone.now())] == [
        "market_data_fresh",
        "broker_connected",
        "risk_system_active",
        "monitoring_live",
        "kill_switch_drilled",
        "clock_in_sync",
        "target_capital_set",
    ]


def test_an_engine_that_holds_everything_passes_every_check(make_engine):
    engine, _ = make_engine("ready", mode="paper")
    Engine.objects.filter(pk=engine.pk).update(target_capital=250_000)
    metric(engine, "quote_age_ms", 120)
    metric(engine, "broker_connected", 1)
    Engine.objects.filter(pk=engine.pk).update(limits_version=limits_revision())
    channel_tested(ago=timedelta(days=2))
    assert AlertRule.objects.filter(enabled=True).exists()
    now = timezone.now()
    KillDrill.objects.create(
        engine=engine,
        kind="kill_release",
        stage="paper",
        reason="drill",
        status="passed",
        done_at=now,
        ack_ms=3,
        done_ms=40,
    )
    heartbeat(engine, clock_off=timedelta(milliseconds=200))
    checks = by_key(engine)
    assert {key: check.passed for key, check in checks.items()} == dict.fromkeys(checks, True)
    assert checks["clock_in_sync"].detail.startswith("its clock is +")
    assert "acknowledged in 3 ms, done in 40 ms" in checks["kill_switch_drilled"].detail
    assert preflight.failures(engine, timezone.now()) == []


def test_each_check_fails_on_the_wrong_side_of_its_threshold(make_engine):
    engine, _ = make_engine("late", mode="paper")
    metric(engine, "quote_age_ms", 7_500)
    metric(engine, "broker_connected", 0)
    Engine.objects.filter(pk=engine.pk).update(limits_version=limits_revision() + 1)
    instrument = Instrument.objects.create(symbol="AAA")
    Position.objects.create(
        engine=engine,
        instrument=instrument,
        quantity=10,
        avg_price=100,
        mismatch_since=timezone.now(),
        updated_at=timezone.now(),
    )
    channel_tested(ago=timedelta(days=8))
    heartbeat(engine, clock_off=timedelta(seconds=3))
    checks = by_key(engine)
    assert checks["market_data_fresh"].passed is False
    assert checks["market_data_fresh"].detail == "quote age 7,500 ms"
    assert checks["broker_connected"].passed is False
    assert checks["risk_system_active"].passed is False
    assert "the current is" in checks["risk_system_active"].detail
    assert checks["reconciliation_clean"].passed is False
    assert checks["reconciliation_clean"].detail == "1 position differ from the broker's"
    assert checks["monitoring_live"].passed is False
    assert "no enabled channel delivered a test" in checks["monitoring_live"].detail
    assert checks["clock_in_sync"].passed is False


def test_a_metric_older_than_five_minutes_is_not_fresh(make_engine):
    engine, _ = make_engine("stale", mode="paper")
    metric(engine, "quote_age_ms", 100, ago=timedelta(minutes=6))
    assert by_key(engine)["market_data_fresh"].passed is None


def test_the_steps_into_real_orders_need_the_checks():
    assert [preflight.needed(s) for s in ("paper", "shadow", "small_capital", "full", None)] == [
        False,
        False,
        True,
        True,
        False,
    ]
