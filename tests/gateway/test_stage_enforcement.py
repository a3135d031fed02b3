"""The stage the control plane keeps for each engine, enforced at its hello: a live hello from an
engine whose stage sends no real orders is refused naming the stage, the engine is held HALTED by
a kill, and a critical alert is raised through its rule's channels."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from alerts.models import Alert, AlertRule, Notification, NotificationChannel
from controlplane import stages
from controlplane.gateway import session
from controlplane.models import AuditEvent, Command, Engine
from engine_sdk import protocol as p
from tests.gateway.test_engine_socket import closed_with, hello_frame, open_socket

URL = "/api/v1/engine/events"
REFUSAL = (
    "engine {name} is at stage paper, which sends no real orders: a live-mode hello is refused "
    "until it is promoted to small capital (docs/going-live.md)"
)


def stage_rule_with_a_channel() -> NotificationChannel:
    channel = NotificationChannel(name="desk-mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    # The rule migration 0006 ships (a transactional test before this one may have flushed it).
    rule, _ = AlertRule.objects.get_or_create(
        name="Stage violations",
        defaults={"metric": "stage_violation", "severity": "critical", "threshold": 0},
    )
    rule.channels.add(channel)
    return channel


def a_live_engine_put_back_to_paper(make_engine) -> tuple[Engine, str]:
    # Registered live (as an engine in full production), then moved back to paper: its
    # registered mode follows the stage, and its live hello must name the stage, not the mode.
    engine, token = make_engine("alpha", mode="live")
    stages.stage_set(engine=engine, to_stage="paper", reason="back to paper after a review")
    return engine, token


def kills_of(engine: Engine) -> list[Command]:
    return list(Command.objects.filter(engine=engine, kind="kill"))


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_live_hello_at_paper_is_refused_over_the_socket_naming_the_stage(make_engine):
    engine, token = await database_sync_to_async(make_engine)("alpha", mode="paper")
    channel = await database_sync_to_async(stage_rule_with_a_channel)()
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="live"))
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["code"] == "stage_forbids_live"
    assert error["field"] == "mode"
    assert error["message"] == REFUSAL.format(name="alpha")
    assert await closed_with(ws) == p.CLOSE_STAGE_FORBIDS == 4403

    def check() -> None:
        stored = Engine.objects.get(pk=engine.pk)
        assert stored.desired_state == "HALTED"
        assert not stored.connected
        (kill,) = kills_of(engine)
        assert kill.issued_by_label == session.STAGE_ACTOR
        assert "stage paper" in kill.reason
        audit = AuditEvent.objects.get(action="command_kill", target_id=str(kill.batch_id))
        assert audit.actor == session.STAGE_ACTOR
        alert = Alert.objects.get(engine=engine)
        assert alert.rule is not None and alert.rule.metric == "stage_violation"
        assert alert.severity == "critical" and alert.state == "firing"
        assert "live mode at stage paper" in alert.summary
        told = Notification.objects.get(alert=alert)
        assert told.channel == channel and told.event == "firing"

    await database_sync_to_async(check)()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_second_refusal_issues_no_second_kill_nor_alert(make_engine):
    engine, token = await database_sync_to_async(make_engine)("alpha", mode="paper")
    for _ in range(2):
        ws = await open_socket(token)
        await ws.send_to(text_data=hello_frame(mode="live"))
        assert (await ws.receive_json_from(timeout=5))["code"] == "stage_forbids_live"
        assert await closed_with(ws) == 4403

    def check() -> None:
        assert len(kills_of(engine)) == 1
        assert Alert.objects.filter(engine=engine).count() == 1

    await database_sync_to_async(check)()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_stage_is_named_before_the_registered_mode(make_engine):
    engine, token = await database_sync_to_async(a_live_engine_put_back_to_paper)(make_engine)
    assert engine.mode == "paper"
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="live"))
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "stage_forbids_live"
    assert "at stage paper" in error["message"]
    assert await closed_with(ws) == 4403


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_small_capital_engine_says_hello_live_and_learns_its_stage(make_engine):
    engine, token = await database_sync_to_async(make_engine)("alpha", stage="small_capital")
    assert engine.mode == "live"
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="live"))
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    assert welcome["stage"] == "small_capital"
    assert welcome["desired_state"] == "ACTIVE"
    await ws.disconnect()
    assert not await database_sync_to_async(kills_of)(engine)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_welcome_of_a_paper_engine_says_paper(make_engine):
    _, token = await database_sync_to_async(make_engine)("alpha", mode="paper")
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="paper"))
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome" and welcome["stage"] == "paper"
    await ws.disconnect()


@pytest.mark.django_db
def test_a_live_hello_at_paper_is_refused_over_http(
    client, make_engine, django_capture_on_commit_callbacks
):
    engine, token = make_engine("alpha", mode="paper")
    stage_rule_with_a_channel()
    body = hello_frame(mode="live")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            URL, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
        )
    assert response.status_code == 403
    (error,) = json.loads(response.content)
    assert error["code"] == "stage_forbids_live"
    assert error["message"] == REFUSAL.format(name="alpha")
    engine.refresh_from_db()
    assert engine.desired_state == "HALTED"
    assert len(kills_of(engine)) == 1
    alert = Alert.objects.get(engine=engine)
    assert alert.severity == "critical"
    assert Notification.objects.filter(alert=alert, event="firing").count() == 1


@pytest.mark.django_db
def test_an_engine_already_halted_gets_no_new_kill_but_the_alert(
    make_engine, django_capture_on_commit_callbacks
):
    from controlplane.commands import issuing

    engine, _ = make_engine("alpha", mode="paper")
    issuing.command_issue(kind="kill", selector="engine:alpha", reason="x", actor_label="test")
    frame = p.Hello(
        protocol=1,
        engine_build="b",
        config_hash="c",
        mode="live",
        broker="sim",
        account="a",
        trading_state="HALTED",
        last_seq=0,
    )
    with django_capture_on_commit_callbacks(execute=True):
        (error,) = session.hello(engine, frame, connection_id=None)
    assert isinstance(error, p.Error) and error.code == "stage_forbids_live"
    assert len(kills_of(engine)) == 1
    assert Alert.objects.filter(engine=engine, severity="critical").count() == 1
