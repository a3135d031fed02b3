"""Runbooks: the four default plans, edited by risk managers with their history and audit, the
alert rules and kinds of risk limit that point at them, and the runbook an alert then shows on
the alerts page, in its notification text and in its toast's payload."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from alerts.models import Alert, AlertRule, Notification
from alerts.notify import render_alert
from controlplane.models import AuditEvent
from dashboard.live import alert_payload
from journal import runbooks
from journal.models import Runbook, RunbookLink
from risk.models import LimitKind, RiskLimit
from tests.controlplane.test_api import token_client

pytestmark = pytest.mark.django_db


def put(client: Client, path: str, body: dict) -> tuple[int, dict]:
    response = client.put(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_the_four_default_plans_are_seeded_with_what_points_at_them():
    assert set(Runbook.objects.values_list("slug", flat=True)) >= {
        "broker-api-failure",
        "unexpected-loss",
        "market-circuit-breaker",
        "strategy-bug",
    }
    loss = runbooks.links_of(Runbook.objects.get(slug="unexpected-loss"))
    assert loss.alert_rules == ["Daily loss", "Drawdown"]
    assert LimitKind.MAX_DAILY_LOSS_PCT in loss.limit_kinds
    assert "Pause" in Runbook.objects.get(slug="unexpected-loss").body


def test_a_risk_manager_edits_a_plan_and_its_history_and_audit_keep_each_version(risk_manager):
    plan = Runbook.objects.get(slug="strategy-bug")

    saved = runbooks.runbook_save(
        runbook=plan,
        actor=risk_manager,
        title=plan.title,
        scenario=plan.scenario,
        body=plan.body + "\n4. Tell the desk.\n",
        reason="desk asked",
    )

    assert saved.version == 2
    assert [r.version for r in saved.revisions.all()] == [2, 1]
    audit = AuditEvent.objects.get(action="journal.runbook_change")
    assert (audit.actor, audit.reason, audit.data["version"]) == ("rita-risk", "desk asked", 2)


def test_an_operator_may_not_edit_a_plan_on_the_page_or_through_the_api(operator):
    plan = Runbook.objects.get(slug="strategy-bug")
    with pytest.raises(PermissionDenied):
        runbooks.runbook_save(runbook=plan, actor=operator, title="x", scenario="y", body="z")

    client = Client()
    client.force_login(operator)
    assert client.get("/runbooks/strategy-bug/").status_code == 200
    assert client.get("/runbooks/strategy-bug/edit/").status_code == 403
    assert client.post("/runbooks/strategy-bug/edit/", {"title": "x"}).status_code == 403
    assert client.post("/runbooks/strategy-bug/links/", {"alert_rules": []}).status_code == 403
    status, _ = put(
        token_client(operator),
        "/api/v1/runbooks/strategy-bug",
        {"title": "x", "scenario": "y", "body": "z"},
    )
    assert status == 403
    assert Runbook.objects.get(slug="strategy-bug").version == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"slug": "Bad Slug"}, "slug"),
        ({"slug": "new"}, "slug"),
        ({"slug": "broker-api-failure"}, "slug"),
        ({"title": ""}, "title"),
        ({"body": "a\x00b"}, "body"),
        ({"scenario": "s" * 301}, "scenario"),
    ],
)
def test_a_bad_new_plan_is_refused_by_field(risk_manager, fields, field):
    values = {"slug": "fat-finger", "title": "Fat finger", "scenario": "s", "body": "b"} | fields
    with pytest.raises(ValidationError) as caught:
        runbooks.runbook_save(runbook=None, actor=risk_manager, **values)

    assert field in caught.value.message_dict
    assert not Runbook.objects.filter(title="Fat finger").exists()


def test_the_api_creates_edits_and_links_a_plan(risk_manager, viewer):
    client = token_client(risk_manager)
    response = client.post(
        "/api/v1/runbooks",
        json.dumps({"slug": "fat-finger", "title": "Fat finger", "scenario": "s", "body": "b"}),
        content_type="application/json",
    )
    assert response.status_code == 201, response.content

    status, body = put(
        client,
        "/api/v1/runbooks/fat-finger/links",
        {"alert_rules": ["Slippage"], "limit_kinds": ["max_order_qty"]},
    )
    assert status == 200, body
    assert (body["alert_rules"], body["limit_kinds"]) == (["Slippage"], ["max_order_qty"])
    # A kind points at one runbook: it left the strategy bug's.
    assert (
        "max_order_qty"
        not in runbooks.links_of(Runbook.objects.get(slug="strategy-bug")).limit_kinds
    )

    status, body = put(
        client, "/api/v1/runbooks/fat-finger/links", {"alert_rules": ["Nope"], "limit_kinds": ["x"]}
    )
    assert status == 400 and set(body["errors"]) == {"alert_rules", "limit_kinds"}
    history = token_client(viewer).get("/api/v1/runbooks/fat-finger/history").json()
    assert [h["version"] for h in history] == [1]
    assert token_client(viewer).get("/api/v1/runbooks/none").status_code == 404


@pytest.fixture
def loss_alert(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    rule = AlertRule.objects.get(name="Daily loss")
    return Alert.objects.create(
        rule=rule, engine=engine, severity="critical", state="firing", summary="alpha: Daily loss"
    )


def test_a_firing_alert_shows_its_runbook_on_the_page_in_its_text_and_its_toast(loss_alert, viewer):
    client = Client()
    client.force_login(viewer)

    page = client.get("/alerts/").content.decode()
    _, text = render_alert(loss_alert, Notification.Event.FIRING)
    payload = alert_payload(loss_alert)

    assert 'href="/runbooks/unexpected-loss/">Runbook: Unexpected loss above 5 %</a>' in page
    assert "Runbook: Unexpected loss above 5 % (/runbooks/unexpected-loss/)" in text
    assert payload["runbook"] == {
        "title": "Unexpected loss above 5 %",
        "url": "/runbooks/unexpected-loss/",
    }


def test_a_risk_limits_alert_shows_the_runbook_of_its_limits_kind(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    limit = RiskLimit.objects.create(kind=LimitKind.MAX_ORDER_RATE, threshold=Decimal(5))
    alert = Alert.objects.create(
        rule=AlertRule.objects.get(name="Risk limits"),
        source=f"limit#{limit.pk}",
        engine=engine,
        severity="critical",
        state="firing",
        summary="alpha: order rate",
    )

    assert runbooks.runbooks_for_alerts([alert])[alert.pk].url == "/runbooks/strategy-bug/"


def test_an_alert_with_nothing_pointing_at_a_runbook_shows_none(loss_alert):
    RunbookLink.objects.all().delete()

    assert alert_payload(loss_alert)["runbook"] is None
    assert "Runbook" not in render_alert(loss_alert, Notification.Event.FIRING)[1]


def test_the_runbook_page_renders_its_plan_safely(risk_manager):
    plan = Runbook.objects.get(slug="strategy-bug")
    runbooks.runbook_save(
        runbook=plan,
        actor=risk_manager,
        title=plan.title,
        scenario=plan.scenario,
        body="[click](javascript:alert(1)) <b>x</b>",
    )
    client = Client()
    client.force_login(risk_manager)

    page = client.get("/runbooks/strategy-bug/").content.decode()

    body = page.split('id="runbook-body">')[1].split("</div>")[0]
    assert body == "<p>[click](javascript:alert(1)) &lt;b&gt;x&lt;/b&gt;</p>\n"
