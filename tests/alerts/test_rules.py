"""Alert rules: pending, firing once, resolving with hysteresis, silences, suppression, repeats,
escalation, actions and risk-limit alerts. Notifications are counted as the rows enqueued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from alerts import evaluation, hooks, services, tasks
from alerts.models import Alert, AlertRule, Notification, NotificationChannel, Silence
from controlplane.models import Command, Engine

pytestmark = pytest.mark.django_db

# Now, to the second: silences and alerts start at the wall clock.
T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def pager() -> NotificationChannel:
    channel = NotificationChannel(name="pager", kind="apprise")
    channel.target = "json://127.0.0.1:9/hook"
    channel.save()
    return channel


@pytest.fixture
def loss_rule(channel) -> AlertRule:
    rule = AlertRule.objects.get(name="Daily loss")  # shipped: daily_pnl_pct < -3, hysteresis 0.5
    rule.channels.add(channel)
    return rule


@pytest.fixture
def alpha(make_engine) -> Engine:
    engine = make_engine("alpha", strategy_tags=["momentum"])[0]
    return set_pnl(engine, 0)


def set_pnl(engine: Engine, pct: float) -> Engine:
    Engine.objects.filter(pk=engine.pk).update(
        session_start_equity=Decimal(100000),
        day_pnl=Decimal(str(pct * 1000)),
        equity=Decimal(100000) + Decimal(str(pct * 1000)),
        last_seen_at=T0,
    )
    engine.refresh_from_db()
    return engine


def run(engine: Engine, at: datetime = T0) -> list[Alert]:
    return evaluation.evaluate_engine(engine.pk, now=at)


def sent(event: str | None = None) -> list[Notification]:
    rows = Notification.objects.order_by("pk")
    return list(rows.filter(event=event) if event else rows)


def only_rules(*names: str) -> None:
    AlertRule.objects.exclude(name__in=names).update(enabled=False)


def test_default_rules_ship_with_the_product():
    names = set(AlertRule.objects.values_list("name", flat=True))
    assert {"Engine down", "Daily loss", "Drawdown", "Position mismatch", "Risk limits"} <= names


def test_a_breach_fires_one_alert_and_one_notification_however_often_it_is_evaluated(
    alpha, loss_rule
):
    only_rules("Daily loss")
    set_pnl(alpha, -3.5)

    for minute in range(5):
        run(alpha, T0 + timedelta(minutes=minute))

    alert = Alert.objects.get()
    assert (alert.state, alert.severity, alert.rule) == ("firing", "critical", loss_rule)
    assert "alpha: Daily loss: daily_pnl_pct -3.5 %" in alert.summary
    assert [(n.event, n.channel.name) for n in sent()] == [("firing", "desk-mail")]


def test_it_resolves_only_past_the_hysteresis_and_sends_one_resolved_notice(alpha, loss_rule):
    only_rules("Daily loss")
    set_pnl(alpha, -3.5)
    run(alpha)

    set_pnl(alpha, -2.8)  # back over -3, but within the 0.5 band
    assert run(alpha) == []
    set_pnl(alpha, -3.1)  # and under again: still the same alert, no new notice
    run(alpha)
    set_pnl(alpha, -2.4)
    (resolved,) = run(alpha)
    run(alpha)

    assert resolved.state == "resolved"
    assert [n.event for n in sent()] == ["firing", "resolved"]
    assert Alert.objects.count() == 1


def test_a_rule_with_a_pending_duration_fires_only_when_it_lasts(alpha, loss_rule):
    only_rules("Daily loss")
    AlertRule.objects.filter(pk=loss_rule.pk).update(pending_s=60)
    set_pnl(alpha, -4)

    run(alpha, T0)
    run(alpha, T0 + timedelta(seconds=30))
    assert Alert.objects.get().state == "pending" and sent() == []
    run(alpha, T0 + timedelta(seconds=61))
    assert Alert.objects.get().state == "firing" and len(sent("firing")) == 1


def test_a_pending_alert_that_clears_tells_nobody(alpha, loss_rule):
    only_rules("Daily loss")
    AlertRule.objects.filter(pk=loss_rule.pk).update(pending_s=60)
    set_pnl(alpha, -4)
    run(alpha, T0)
    set_pnl(alpha, -1)
    run(alpha, T0 + timedelta(seconds=10))

    assert Alert.objects.get().state == "resolved"
    assert sent() == []


def test_a_silence_holds(alpha, loss_rule, operator):
    only_rules("Daily loss")
    services.silence_create(
        actor=operator,
        reason="known: rebalancing",
        engine=alpha,
        ends_at=datetime.now(UTC) + timedelta(hours=1),
    )
    set_pnl(alpha, -5)

    run(alpha, datetime.now(UTC))
    assert Alert.objects.get().state == "firing"  # the screen still shows it
    assert sent() == []

    Silence.objects.update(ends_at=datetime.now(UTC) - timedelta(seconds=1))
    set_pnl(alpha, -1)
    run(alpha, datetime.now(UTC))
    set_pnl(alpha, -5)
    run(alpha, datetime.now(UTC))
    assert len(sent("firing")) == 1


def test_bad_silences_are_refused_naming_the_problem(alpha, operator, viewer):
    with pytest.raises(Exception, match="Say why"):
        services.silence_create(
            actor=operator, reason=" ", ends_at=datetime.now(UTC) + timedelta(hours=1)
        )
    with pytest.raises(Exception, match="at most 7 days"):
        services.silence_create(
            actor=operator, reason="x", ends_at=datetime.now(UTC) + timedelta(days=8)
        )
    with pytest.raises(Exception, match="may not silence"):
        services.silence_create(
            actor=viewer, reason="x", ends_at=datetime.now(UTC) + timedelta(hours=1)
        )
    assert not Silence.objects.exists()


def test_engine_down_suppresses_the_engines_other_alerts(alpha, loss_rule, channel):
    only_rules("Daily loss", "Engine down")
    AlertRule.objects.get(name="Engine down").channels.add(channel)
    set_pnl(alpha, -5)
    Engine.objects.filter(pk=alpha.pk).update(last_seen_at=T0 - timedelta(seconds=60))

    run(alpha)

    assert set(Alert.objects.values_list("rule__name", "state")) == {
        ("Engine down", "firing"),
        ("Daily loss", "firing"),
    }
    assert [n.alert.rule.name for n in sent()] == ["Engine down"]


def test_unacknowledged_alerts_repeat_and_escalate_once_and_an_ack_stops_them(
    alpha, loss_rule, pager, operator
):
    only_rules("Daily loss")
    AlertRule.objects.filter(pk=loss_rule.pk).update(repeat_interval_s=600, escalate_after_s=900)
    loss_rule.escalation_channels.add(pager)
    set_pnl(alpha, -5)
    run(alpha, T0)
    Alert.objects.update(fired_at=T0, last_notified_at=T0)

    evaluation.repeat_and_escalate(now=T0 + timedelta(minutes=5))
    evaluation.repeat_and_escalate(now=T0 + timedelta(minutes=11))
    evaluation.repeat_and_escalate(now=T0 + timedelta(minutes=16))
    evaluation.repeat_and_escalate(now=T0 + timedelta(minutes=16))
    assert [(n.event, n.channel.name) for n in sent()] == [
        ("firing", "desk-mail"),
        ("repeat", "desk-mail"),
        ("escalation", "pager"),
    ]

    assert services.alert_acknowledge(alert=Alert.objects.get(), actor=operator)
    assert not services.alert_acknowledge(alert=Alert.objects.get(), actor=operator)
    evaluation.repeat_and_escalate(now=T0 + timedelta(hours=3))
    assert len(sent()) == 3
    assert Alert.objects.get().acknowledged_by_label == "otto-operator"


def test_a_rule_may_pause_the_engine(alpha, loss_rule):
    only_rules("Daily loss")
    AlertRule.objects.filter(pk=loss_rule.pk).update(action="pause")
    set_pnl(alpha, -5)

    run(alpha)
    run(alpha)

    pause = Command.objects.get()
    assert (pause.kind, pause.issued_by_label) == ("pause", "alert rule Daily loss")
    assert Engine.objects.get(pk=alpha.pk).desired_state == "PAUSED"


def test_a_risk_limit_breach_is_an_alert_through_the_risk_rule_and_clears(
    alpha, channel, risk_manager
):
    from risk import evaluation as risk_evaluation
    from risk import services as risk_services
    from risk.models import RiskLimit

    AlertRule.objects.get(name="Risk limits").channels.add(channel)
    risk_evaluation.forget_cached_limits()
    risk_services.limit_save(
        limit=RiskLimit(kind="max_daily_loss", threshold=Decimal(1000), action="alert"),
        reason="x",
        actor=risk_manager,
    )
    set_pnl(alpha, -1.2)  # a 1,200 loss
    for event in risk_evaluation.evaluate_engine(alpha.pk):
        hooks.risk_event(event.pk)
    # Down to 30 %: under every warning level too (at 50 % it would still be a warning).
    set_pnl(alpha, -0.3)
    for event in risk_evaluation.evaluate_engine(alpha.pk):
        hooks.risk_event(event.pk)

    alert = Alert.objects.get()
    assert alert.source.startswith("limit#") and alert.severity == "critical"
    assert alert.state == "resolved"
    assert [n.event for n in sent()] == ["firing", "resolved"]
    risk_evaluation.forget_cached_limits()


def test_the_alerts_page_lists_and_acknowledges(alpha, loss_rule, operator, viewer):
    only_rules("Daily loss")
    set_pnl(alpha, -5)
    run(alpha)
    alert = Alert.objects.get()
    client = Client()
    client.force_login(viewer)
    page = client.get("/alerts/").content.decode()
    assert "alpha: Daily loss" in page and ">Acknowledge</button>" not in page
    assert client.post(f"/alerts/{alert.pk}/acknowledge/").status_code == 403
    assert Alert.objects.get().acknowledged_at is None

    client.force_login(operator)
    client.post(f"/alerts/{alert.pk}/acknowledge/")
    assert Alert.objects.get().acknowledged_by_label == "otto-operator"


def test_an_engine_is_evaluated_at_once_then_at_most_once_per_window():
    debouncer = hooks._Debouncer()
    debouncer._dirty = {1, 2}

    assert sorted(debouncer._due(100.0)[0]) == [1, 2]  # quiet engines: at once
    debouncer._dirty = {1}
    ready, wait = debouncer._due(100.05)
    assert ready == [] and wait == pytest.approx(hooks.DEBOUNCE_S - 0.05)
    assert debouncer._due(100.0 + hooks.DEBOUNCE_S)[0] == [1]  # its window's end gathers it


def test_a_burst_of_due_engines_is_spread_over_a_few_tasks_each_engine_once():
    chunks = hooks.spread(list(range(100)), hooks.MAX_TASKS_PER_BURST)

    assert len(chunks) == hooks.MAX_TASKS_PER_BURST
    assert sorted(e for chunk in chunks for e in chunk) == list(range(100))
    assert {len(chunk) for chunk in chunks} <= {12, 13}
    assert hooks.spread([7], hooks.MAX_TASKS_PER_BURST) == [[7]]
    assert hooks.spread([], hooks.MAX_TASKS_PER_BURST) == []


def test_one_task_evaluates_every_engine_it_carries(make_engine, loss_rule):
    only_rules("Daily loss")
    engines = [set_pnl(make_engine(f"e{i}")[0], -3.5 if i % 2 else -1.0) for i in range(4)]

    fired = tasks.evaluate_engines_task([e.pk for e in engines])

    assert fired == 2
    firing = Alert.objects.filter(state="firing").values_list("engine__name", flat=True)
    assert sorted(firing) == ["e1", "e3"]


def test_engines_with_data_in_one_window_share_the_next_tick():
    debouncer = hooks._Debouncer()
    debouncer._dirty = {3}
    assert debouncer._due(10.0) == ([3], None)  # quiet before: at once

    debouncer._dirty = {1, 2}  # both arrive within the window
    assert debouncer._due(10.1)[0] == []
    assert debouncer._due(10.0 + hooks.DEBOUNCE_S) == ([1, 2], None)  # one tick for both
    assert debouncer._due(11.0) == ([], None)  # nothing new: nothing queued
