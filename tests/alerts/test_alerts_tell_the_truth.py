"""Alerts that say what is true now: warnings resolve, switched-off rules and limits end their
alerts, the page ranks by severity and names rules that tell nobody, a metric is one of the
registry, and an engine gone with positions raises orphaned positions naming them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from alerts import evaluation, hooks
from alerts.models import Alert, AlertRule, Notification
from controlplane.models import Engine, Instrument, Position
from risk import evaluation as risk_evaluation
from risk import services as risk_services
from risk.models import LimitState, RiskLimit

pytestmark = pytest.mark.django_db

T0 = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def alpha(make_engine) -> Engine:
    engine = make_engine("alpha")[0]
    Engine.objects.filter(pk=engine.pk).update(connected=True, last_seen_at=T0)
    engine.refresh_from_db()
    return engine


@pytest.fixture(autouse=True)
def fresh_limits():
    risk_evaluation.forget_cached_limits()
    yield
    risk_evaluation.forget_cached_limits()


def only_rules(*names: str) -> None:
    AlertRule.objects.exclude(name__in=names).update(enabled=False)


def day_loss(engine: Engine, loss: int) -> None:
    Engine.objects.filter(pk=engine.pk).update(
        session_start_equity=Decimal(100000),
        day_pnl=Decimal(-loss),
        equity=Decimal(100000 - loss),
    )


def evaluate_limits(engine: Engine) -> list[str]:
    """Evaluate the limits and hand each event to the alerts, as the commit does."""
    kinds = []
    for event in risk_evaluation.evaluate_engine(engine.pk):
        hooks.risk_event(event.pk)
        kinds.append(f"{event.kind}@{event.level}")
    return kinds


def loss_limit(actor, **fields) -> RiskLimit:
    limit = RiskLimit(kind="max_daily_loss", threshold=Decimal(1000), action="alert", **fields)
    risk_services.limit_save(limit=limit, reason="desk policy", actor=actor)
    return limit


def the_alert() -> Alert:
    return Alert.objects.get()


# --- risk-limit warnings ------------------------------------------------------------------------


def test_a_warning_resolves_when_the_value_falls_back_below_the_warning_level(
    alpha, channel, risk_manager
):
    AlertRule.objects.get(name="Risk limits").channels.add(channel)
    loss_limit(risk_manager)
    day_loss(alpha, 600)  # 60 %: over the 50 % warning level
    assert evaluate_limits(alpha) == ["warning@50"]
    assert (the_alert().state, the_alert().severity) == ("firing", "warning")

    day_loss(alpha, 300)  # 30 %: under every warning level

    assert evaluate_limits(alpha) == ["cleared@0"]
    alert = the_alert()
    assert alert.state == "resolved" and "back under its warning levels" in alert.summary
    assert [n.event for n in Notification.objects.order_by("pk")] == ["firing", "resolved"]


def test_a_breach_that_falls_back_to_a_warning_stays_open_as_a_warning_then_resolves(
    alpha, risk_manager
):
    loss_limit(risk_manager)
    day_loss(alpha, 1200)
    evaluate_limits(alpha)
    assert the_alert().severity == "critical"

    day_loss(alpha, 920)  # 92 %: under the limit, still over the 90 % warning level
    assert evaluate_limits(alpha) == ["cleared@90"]
    alert = the_alert()
    assert (alert.state, alert.severity) == ("firing", "warning")
    assert "still over its 90% warning level" in alert.summary

    day_loss(alpha, 100)
    assert evaluate_limits(alpha) == ["cleared@0"]
    assert the_alert().state == "resolved"


def test_switching_a_limit_off_resolves_its_alerts_and_starts_its_states_afresh(
    alpha, channel, risk_manager, django_capture_on_commit_callbacks
):
    AlertRule.objects.get(name="Risk limits").channels.add(channel)
    limit = loss_limit(risk_manager)
    day_loss(alpha, 1200)
    evaluate_limits(alpha)
    assert the_alert().state == "firing"

    limit.enabled = False
    with django_capture_on_commit_callbacks(execute=True):
        risk_services.limit_save(limit=limit, reason="limit retired", actor=risk_manager)

    alert = the_alert()
    assert alert.state == "resolved"
    assert f"limit #{limit.pk} disabled by rita-risk" in alert.summary
    assert Notification.objects.filter(event="resolved").count() == 1
    assert LimitState.objects.get().level == "ok"


def test_switching_a_rule_off_in_the_admin_resolves_its_alerts(alpha, admin_user, channel):
    only_rules("Daily loss")
    rule = AlertRule.objects.get(name="Daily loss")
    rule.channels.add(channel)
    day_loss(alpha, 5000)
    evaluation.evaluate_engine(alpha.pk, now=T0)
    assert the_alert().state == "firing"
    client = Client()
    client.force_login(admin_user)

    form = rule_form(rule, enabled="")
    response = client.post(f"/admin/alerts/alertrule/{rule.pk}/change/", form)

    assert response.status_code == 302, response.content.decode()[:2000]
    alert = the_alert()
    assert alert.state == "resolved" and "rule disabled by ada-admin" in alert.summary
    assert AlertRule.objects.get(pk=rule.pk).enabled is False


def rule_form(rule: AlertRule, **overrides: str) -> dict[str, object]:
    form: dict[str, object] = {
        "name": rule.name,
        "metric": rule.metric,
        "comparator": rule.comparator,
        "threshold": str(rule.threshold),
        "hysteresis": str(rule.hysteresis),
        "pending_s": str(rule.pending_s),
        "severity": rule.severity,
        "scope": rule.scope,
        "scope_value": rule.scope_value,
        "channels": [c.pk for c in rule.channels.all()],
        "repeat_interval_s": str(rule.repeat_interval_s),
        "escalate_after_s": "",
        "escalation_channels": [],
        "action": rule.action,
        "enabled": "on",
        "description": rule.description,
    }
    form.update(overrides)
    return {key: value for key, value in form.items() if value != "" or key != "enabled"}


def test_a_rule_with_a_metric_not_in_the_registry_is_refused_naming_it(admin_user):
    rule = AlertRule.objects.get(name="Drawdown")
    client = Client()
    client.force_login(admin_user)

    response = client.post(
        f"/admin/alerts/alertrule/{rule.pk}/change/", rule_form(rule, metric="drawdwon_pct")
    )

    assert response.status_code == 200
    assert "drawdwon_pct is not a metric of the registry" in response.content.decode()
    assert AlertRule.objects.get(pk=rule.pk).metric == "drawdown_pct"
    page = client.get("/admin/alerts/alertrule/add/").content.decode()
    assert '<select name="metric"' in page and 'value="orphaned_exposure"' in page


def test_the_model_refuses_an_unknown_metric_too():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError, match="not a metric of the registry"):
        AlertRule(name="typo", metric="drawdwon_pct", threshold=1).full_clean()


# --- the alerts page ------------------------------------------------------------------------------


def test_the_page_lists_critical_first_and_flags_rules_that_notify_nobody(
    make_engine, viewer, admin_user, channel
):
    engines = [make_engine(name)[0] for name in ("e-info", "e-critical", "e-warning")]
    rule = AlertRule.objects.get(name="Drawdown")
    rule.channels.add(channel)
    for engine, severity in zip(engines, ("info", "critical", "warning"), strict=True):
        # Created info, critical, warning: alphabetically "warning" sorted first, critical last.
        Alert.objects.create(
            rule=rule,
            engine=engine,
            state="firing",
            severity=severity,
            summary=f"{engine.name}: something {severity}",
        )
    client = Client()
    client.force_login(viewer)

    page = client.get("/alerts/").content.decode()

    table = page.split('id="open-alerts"')[1].split("</table>")[0]
    order = [table.index(f"e-{s}: something") for s in ("critical", "warning", "info")]
    assert order == sorted(order)
    assert '<span class="sev sev-critical">critical</span>' in table
    # Drawdown has a channel; "Daily loss" and the others shipped without one are named.
    box = page.split('id="rules-without-channel"')[1].split("</div>")[0]
    assert "Daily loss" in box and "Drawdown" not in box
    assert "Risk limits" in box and "notify nobody either" in box
    assert "no notification channel" not in table  # Drawdown's alerts do reach someone

    client.force_login(admin_user)
    rules_admin = client.get("/admin/alerts/alertrule/").content.decode()
    daily_row = rules_admin.split("Daily loss</a>")[1].split("</tr>")[0]
    assert "no notification channel" in daily_row
    drawdown_row = rules_admin.split("Drawdown</a>")[1].split("</tr>")[0]
    assert "1 channel" in drawdown_row


def test_limits_are_flagged_in_the_admin_while_risk_alerts_reach_no_channel(risk_manager, channel):
    loss_limit(risk_manager)
    client = Client()
    client.force_login(risk_manager)

    page = client.get("/admin/risk/risklimit/").content.decode().lower()
    # The banner and each limit's row: this one and the capital ceiling's the migrations ship.
    assert page.count("no notification channel") == 1 + RiskLimit.objects.count()

    AlertRule.objects.get(name="Risk limits").channels.add(channel)
    page = client.get("/admin/risk/risklimit/").content.decode().lower()
    assert "no notification channel" not in page and "1 channel" in page


# --- orphaned positions ---------------------------------------------------------------------------


def hold(engine: Engine, **positions: tuple[int, str]) -> None:
    for symbol, (quantity, price) in positions.items():
        instrument, _ = Instrument.objects.get_or_create(symbol=symbol)
        Position.objects.create(
            engine=engine,
            instrument=instrument,
            quantity=Decimal(quantity),
            avg_price=Decimal(price),
            last_price=Decimal(price),
        )


def test_an_engine_gone_silent_with_positions_raises_orphaned_positions_naming_them(alpha, channel):
    only_rules("Engine down", "Orphaned positions")
    AlertRule.objects.get(name="Orphaned positions").channels.add(channel)
    AlertRule.objects.get(name="Engine down").channels.add(channel)
    hold(alpha, AAPL=(100, "190"), MSFT=(-50, "400"))
    assert evaluation.evaluate_engine(alpha.pk, now=T0 + timedelta(seconds=1)) == []

    later = T0 + timedelta(seconds=60)
    evaluation.evaluate_engine(alpha.pk, now=later)

    orphaned = Alert.objects.get(rule__name="Orphaned positions")
    assert (orphaned.state, orphaned.severity) == ("firing", "critical")
    assert orphaned.value == pytest.approx(39000.0)  # 100 x 190 + 50 x 400
    assert "silent for 60 s" in orphaned.summary
    assert "AAPL 100" in orphaned.summary and "MSFT -50" in orphaned.summary
    assert "gross exposure 39,000.00" in orphaned.summary
    # Engine down fires too, and does not keep the orphaned positions quiet.
    told = {n.alert.rule.name for n in Notification.objects.select_related("alert__rule")}
    assert told == {"Engine down", "Orphaned positions"}

    Engine.objects.filter(pk=alpha.pk).update(last_seen_at=later + timedelta(seconds=5))
    evaluation.evaluate_engine(alpha.pk, now=later + timedelta(seconds=6))
    assert Alert.objects.get(pk=orphaned.pk).state == "resolved"


def test_a_silent_engine_that_is_flat_raises_no_orphaned_positions(alpha):
    only_rules("Orphaned positions")
    hold(alpha, AAPL=(0, "190"))

    evaluation.evaluate_engine(alpha.pk, now=T0 + timedelta(seconds=60))

    assert not Alert.objects.exists()


def test_a_stopped_engine_is_not_down_but_positions_it_left_are_orphaned(alpha):
    only_rules("Engine down", "Orphaned positions")
    hold(alpha, XOM=(20, "110"))
    Engine.objects.filter(pk=alpha.pk).update(connected=False, stopped_at=T0)

    evaluation.evaluate_engine(alpha.pk, now=T0 + timedelta(minutes=10))

    (alert,) = Alert.objects.all()
    assert alert.rule.name == "Orphaned positions"
    assert "stopped at" in alert.summary and "XOM 20" in alert.summary
