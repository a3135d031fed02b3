"""A timed pause that has ended is over everywhere, and an engine that says it stops is stopped.

The gateway's own functions, on the real database: what a hello answers and stores, what the
periodic sweep writes, what the fleet rows and the API read before and after it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from controlplane import tasks
from controlplane.commands import desired_state
from controlplane.gateway import session
from controlplane.models import AuditEvent, Engine
from dashboard import overview
from engine_sdk import protocol as p

pytestmark = pytest.mark.django_db


def hello(trading_state: str = "PAUSED") -> p.Hello:
    return p.Hello(
        protocol=p.PROTOCOL_VERSION,
        engine_build="b1",
        config_hash="c1",
        mode="paper",
        broker="sim",
        account="acc",
        trading_state=trading_state,
        last_seq=0,
    )


def heartbeat(*, stopping: bool = False) -> p.Heartbeat:
    return p.Heartbeat(ts=datetime.now(UTC), trading_state="ACTIVE", last_seq=0, stopping=stopping)


def paused_until(engine: Engine, until: datetime) -> Engine:
    Engine.objects.filter(pk=engine.pk).update(
        desired_state="PAUSED", desired_until=until, desired_changed_at=until - timedelta(minutes=5)
    )
    engine.refresh_from_db()
    return engine


@pytest.fixture
def alpha(engine_and_token) -> Engine:
    return engine_and_token[0]


def test_a_hello_after_a_timed_pause_ended_is_told_active_and_the_row_says_active(alpha):
    paused_until(alpha, datetime.now(UTC) - timedelta(seconds=1))

    (welcome,) = session.hello(alpha, hello("PAUSED"), uuid.uuid4())

    assert isinstance(welcome, p.Welcome)
    # A dead-man pause lifts only on ACTIVE: PAUSED here would keep the engine paused for good.
    assert welcome.desired_state == "ACTIVE"
    assert not [c for c in welcome.commands if c.kind == "pause"]
    stored = Engine.objects.get(pk=alpha.pk)
    assert (stored.desired_state, stored.desired_until) == ("ACTIVE", None)


def test_a_hello_during_a_timed_pause_is_still_told_paused(alpha):
    until = datetime.now(UTC) + timedelta(minutes=10)
    paused_until(alpha, until)

    (welcome,) = session.hello(alpha, hello("PAUSED"), uuid.uuid4())

    assert welcome.desired_state == "PAUSED"
    assert Engine.objects.get(pk=alpha.pk).desired_until == until


def test_the_sweep_writes_active_back_once_and_leaves_other_pauses_alone(make_engine):
    now = datetime.now(UTC)
    ended = paused_until(make_engine("ended")[0], now - timedelta(seconds=3))
    running = paused_until(make_engine("running")[0], now + timedelta(minutes=5))
    indefinite = make_engine("indefinite")[0]
    Engine.objects.filter(pk=indefinite.pk).update(desired_state="PAUSED", desired_until=None)
    halted = make_engine("halted")[0]
    Engine.objects.filter(pk=halted.pk).update(desired_state="HALTED")

    assert tasks.end_timed_pauses() == 1
    assert desired_state.timed_pauses_end() == []  # run again: nothing more to end

    states = dict(Engine.objects.values_list("name", "desired_state"))
    assert states == {
        "ended": "ACTIVE",
        "running": "PAUSED",
        "indefinite": "PAUSED",
        "halted": "HALTED",
    }
    ended.refresh_from_db()
    assert ended.desired_until is None and ended.desired_changed_at >= now
    (audit,) = AuditEvent.objects.filter(action="pause_end")
    assert (audit.target_label, audit.actor) == ("ended", "control plane (timed pause)")
    assert Engine.objects.get(pk=running.pk).desired_until is not None


def test_a_pause_issued_again_before_the_sweep_is_not_ended_by_it(alpha):
    old_end = datetime.now(UTC) - timedelta(seconds=1)
    paused_until(alpha, old_end)
    # The sweep read the ended pause; meanwhile a new pause of ten minutes was issued.
    new_end = datetime.now(UTC) + timedelta(minutes=10)
    Engine.objects.filter(pk=alpha.pk).update(desired_until=new_end)

    assert desired_state.timed_pauses_end(now=datetime.now(UTC)) == []
    assert Engine.objects.get(pk=alpha.pk).desired_state == "PAUSED"


def test_screens_say_active_the_moment_a_timed_pause_ends_before_the_sweep(alpha, viewer):
    paused_until(alpha, datetime.now(UTC) - timedelta(seconds=1))
    Engine.objects.filter(pk=alpha.pk).update(reported_state="ACTIVE")

    (row,) = overview.fleet_rows(engine_ids=[alpha.pk])
    assert row.desired_state == "ACTIVE"  # no "ACTIVE → PAUSED" on the overview
    client = Client()
    client.force_login(viewer)
    fleet = client.get("/").content.decode()
    assert "→ PAUSED" not in fleet
    engine_page = client.get(f"/engines/{alpha.name}/").content.decode()
    assert "→ PAUSED" not in engine_page and "until" not in engine_page.split("</h1>")[0]
    (listed,) = client.get("/api/v1/engines").json()
    assert listed["desired_state"] == "ACTIVE"
    # Nothing was written: the stored row is as the pause left it until the sweep runs.
    assert Engine.objects.get(pk=alpha.pk).desired_state == "PAUSED"


def test_a_final_heartbeat_saying_stopping_shows_the_engine_stopped_until_its_next_hello(alpha):
    connection = uuid.uuid4()
    session.hello(alpha, hello("ACTIVE"), connection)
    session.heartbeat(alpha.pk, heartbeat())
    assert Engine.objects.get(pk=alpha.pk).stopped_at is None

    session.heartbeat(alpha.pk, heartbeat(stopping=True))
    session.disconnect(alpha.pk, connection)

    (row,) = overview.fleet_rows(engine_ids=[alpha.pk])
    assert row.connection == "stopped"
    session.hello(alpha, hello("ACTIVE"), uuid.uuid4())
    assert Engine.objects.get(pk=alpha.pk).stopped_at is None
    (row,) = overview.fleet_rows(engine_ids=[alpha.pk])
    assert row.connection == "online"


def test_an_engine_that_drops_without_saying_so_is_offline_not_stopped(alpha):
    connection = uuid.uuid4()
    session.hello(alpha, hello("ACTIVE"), connection)
    session.heartbeat(alpha.pk, heartbeat())
    session.disconnect(alpha.pk, connection)

    (row,) = overview.fleet_rows(engine_ids=[alpha.pk])
    assert row.connection == "offline"
