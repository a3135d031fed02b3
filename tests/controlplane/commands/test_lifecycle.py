"""Engines' command_acks and command_results, stored together (lifecycle.command_answers) and, on
the socket, by one writer per process that closes only the sockets whose answers were refused."""

from __future__ import annotations

import asyncio
import re
import typing
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from controlplane import tasks
from controlplane.commands import delivery, issuing, lifecycle
from controlplane.gateway import socket
from controlplane.models import AuditEvent, Command, Engine
from engine_sdk import protocol as p
from tests.controlplane.commands import factories
from tests.gateway.test_engine_socket import closed_with, greeted

# A limits version beyond the engine row's INTEGER: valid protocol (data is free-form), refused by
# PostgreSQL. (U+0000, which jsonb refuses, the protocol itself refuses now.)
REFUSED = {"limits_version": 2**31}


def command(engine: Engine, kind: str = "kill", status: str = "delivered") -> Command:
    return Command.objects.create(
        engine=engine, kind=kind, reason="r", issued_by_label="rita", status=status
    )


def result(command: Command, status: str = "succeeded", **kwargs) -> p.CommandResult:
    return p.CommandResult(command_id=command.pk, status=status, **kwargs)


@pytest.mark.django_db
def test_answers_of_many_engines_are_stored_together_as_each_alone_would_be(make_engine):
    alpha, _ = make_engine("alpha")
    beta, _ = make_engine("beta")
    gamma, _ = make_engine("gamma")
    kill_alpha = command(alpha)
    kill_beta = command(beta, status="pending")
    limits = command(gamma, kind="set_limits")
    untouched = command(alpha, kind="pause", status="pending")

    lifecycle.command_answers(
        [
            (alpha.pk, p.CommandAck(command_id=kill_alpha.pk)),
            (beta.pk, p.CommandAck(command_id=kill_beta.pk)),
            (beta.pk, p.CommandAck(command_id=untouched.pk)),  # not beta's: changes nothing
            (
                alpha.pk,
                result(kill_alpha, data={"cancelled": 3}, trading_state="HALTED", detail="halted"),
            ),
            (alpha.pk, result(kill_alpha, "failed", trading_state="HALTED")),  # a repeat
            (beta.pk, result(untouched, trading_state="ACTIVE")),  # not beta's either
            (gamma.pk, result(limits, data={"limits_version": 7})),
        ]
    )

    kill_alpha.refresh_from_db()
    stored = (kill_alpha.status, kill_alpha.result, kill_alpha.detail, kill_alpha.state_after)
    assert stored == ("succeeded", {"cancelled": 3}, "halted", "HALTED")
    assert kill_alpha.acknowledged_at is not None
    assert kill_alpha.completed_at >= kill_alpha.acknowledged_at
    kill_beta.refresh_from_db()
    assert kill_beta.status == "acknowledged"
    assert kill_beta.delivered_at == kill_beta.acknowledged_at is not None
    untouched.refresh_from_db()
    left = (untouched.status, untouched.acknowledged_at, untouched.completed_at)
    assert left == ("pending", None, None)
    limits.refresh_from_db()
    assert limits.status == "succeeded"
    assert Engine.objects.get(pk=alpha.pk).reported_state == "HALTED"
    # A result's reported state counts even for a command it cannot complete, as a heartbeat's.
    assert Engine.objects.get(pk=beta.pk).reported_state == "ACTIVE"
    assert Engine.objects.get(pk=gamma.pk).limits_version == 7
    assert Engine.objects.get(pk=alpha.pk).limits_version is None

    # One audit row per completed command, as audit_record wrote it.
    audits = {a.target_id: a for a in AuditEvent.objects.filter(action__endswith="_result")}
    assert set(audits) == {str(kill_alpha.pk), str(limits.pk)}
    kill_audit = audits[str(kill_alpha.pk)]
    audited = (kill_audit.action, kill_audit.actor, kill_audit.outcome, kill_audit.reason)
    assert audited == ("command_kill_result", "engine:alpha", "succeeded", "halted")
    assert (kill_audit.target_type, kill_audit.target_label) == ("command", str(kill_alpha))
    assert kill_audit.data == {"data": {"cancelled": 3}, "trading_state": "HALTED", "batch": None}


@pytest.mark.django_db
def test_an_engine_answering_another_engines_command_first_drops_none_of_its_answers(make_engine):
    alpha, _ = make_engine("alpha")
    beta, _ = make_engine("beta")
    kill = command(alpha)

    lifecycle.command_answers(
        [
            (beta.pk, p.CommandAck(command_id=kill.pk)),
            (beta.pk, result(kill, "failed", detail="beta's")),
            (alpha.pk, p.CommandAck(command_id=kill.pk)),
            (alpha.pk, result(kill, detail="alpha's", trading_state="HALTED")),
        ]
    )

    kill.refresh_from_db()
    assert (kill.status, kill.detail, kill.state_after) == ("succeeded", "alpha's", "HALTED")
    assert kill.acknowledged_at is not None
    [audit] = AuditEvent.objects.filter(action="command_kill_result")
    assert (audit.actor, audit.outcome) == ("engine:alpha", "succeeded")


@pytest.mark.django_db
def test_a_set_limits_version_counts_only_for_an_open_set_limits_command(make_engine):
    alpha, _ = make_engine("alpha")
    kill = command(alpha)
    done = command(alpha, kind="set_limits", status="succeeded")

    lifecycle.command_answers(
        [
            (alpha.pk, result(kill, data={"limits_version": 3})),
            (alpha.pk, result(done, data={"limits_version": 4})),
        ]
    )

    assert Engine.objects.get(pk=alpha.pk).limits_version is None


@pytest.mark.django_db(transaction=True)
def test_an_answer_the_database_refuses_costs_only_its_own_engine(make_engine):
    alpha, _ = make_engine("alpha")
    beta, _ = make_engine("beta")
    kill_alpha, kill_beta = command(alpha), command(beta)

    failed = socket._store_answers(
        [
            (alpha.pk, p.CommandAck(command_id=kill_alpha.pk)),
            (beta.pk, p.CommandAck(command_id=kill_beta.pk)),
            (alpha.pk, result(kill_alpha, data=REFUSED)),
            (beta.pk, result(kill_beta, trading_state="HALTED")),
        ]
    )

    assert failed == {alpha.pk}
    # Nothing of alpha's answers is stored (the engine sends them again after reconnecting).
    kill_alpha.refresh_from_db()
    assert (kill_alpha.status, kill_alpha.acknowledged_at) == ("delivered", None)
    kill_beta.refresh_from_db()
    assert kill_beta.status == "succeeded"
    results = AuditEvent.objects.filter(action__endswith="_result")
    assert list(results.values_list("target_id", flat=True)) == [str(kill_beta.pk)]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_on_the_socket_answers_are_stored_and_a_refused_one_closes_its_socket(make_engine):
    alpha, alpha_token = await database_sync_to_async(make_engine)("alpha")
    beta, beta_token = await database_sync_to_async(make_engine)("beta")
    kill_alpha = await database_sync_to_async(command)(alpha)
    kill_beta = await database_sync_to_async(command)(beta)
    ws_alpha, _ = await greeted(alpha_token)
    ws_beta, _ = await greeted(beta_token)

    statuses = database_sync_to_async(
        lambda: dict(Command.objects.values_list("engine__name", "status"))
    )

    async def settled(expected: dict[str, str]) -> dict[str, str]:
        for _ in range(200):
            found = await statuses()
            if found == expected:
                break
            task = socket._answers()._task
            if task is not None and not task.done():
                await task  # the writer's drain in flight
            else:
                await asyncio.sleep(0.01)  # the consumer has not handed the frame over yet
        return found

    for ws, kill in ((ws_alpha, kill_alpha), (ws_beta, kill_beta)):
        await ws.send_to(text_data=p.encode(p.CommandAck(command_id=kill.pk)).decode())
    acknowledged = {"alpha": "acknowledged", "beta": "acknowledged"}
    assert await settled(acknowledged) == acknowledged

    await ws_alpha.send_to(text_data=p.encode(result(kill_alpha, data=REFUSED)).decode())
    await ws_beta.send_to(text_data=p.encode(result(kill_beta)).decode())

    assert await closed_with(ws_alpha) == 1011
    only_beta_answered = {"alpha": "acknowledged", "beta": "succeeded"}
    assert await settled(only_beta_answered) == only_beta_answered
    # beta's socket is still open.
    await ws_beta.send_to(text_data=p.encode(p.CommandAck(command_id=uuid.uuid4())).decode())
    assert await ws_beta.receive_nothing(timeout=0.2)
    await ws_beta.disconnect()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_answers_that_could_not_even_be_tried_close_their_sockets(make_engine, monkeypatch):
    alpha, alpha_token = await database_sync_to_async(make_engine)("alpha")
    kill = await database_sync_to_async(command)(alpha)
    ws, _ = await greeted(alpha_token)

    def broken(answers):
        raise RuntimeError("no database thread")

    monkeypatch.setattr(socket, "_store_answers", broken)
    await ws.send_to(text_data=p.encode(p.CommandAck(command_id=kill.pk)).decode())

    # Closed: on reconnecting the engine is sent the command again and acknowledges it again.
    assert await closed_with(ws) == 1011
    await database_sync_to_async(kill.refresh_from_db)()
    assert kill.status == "delivered"


# --- expiry, once -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_commands_past_their_expiry_expire_and_kills_never_do(fleet, operator, risk_manager):
    pause = issuing.command_issue(
        kind="pause",
        selector="engine:alpha",
        reason="x",
        actor=operator,
        expires_in=timedelta(seconds=30),
    ).commands.get()
    factories.kill(risk_manager, selector="engine:beta")

    assert lifecycle.commands_expire(now=timezone.now() + timedelta(seconds=29)) == 0
    assert lifecycle.commands_expire(now=timezone.now() + timedelta(seconds=31)) == 1

    pause.refresh_from_db()
    assert pause.status == "expired"
    assert Command.objects.get(kind="kill").status == "pending"


@pytest.mark.django_db
def test_the_gateway_and_the_periodic_task_expire_through_one_function(make_engine, monkeypatch):
    engine, _ = make_engine("alpha")
    late = Command.objects.create(
        engine=engine,
        kind="pause",
        reason="r",
        issued_by_label="o",
        expires_at=timezone.now() - timedelta(seconds=1),
    )
    calls = []
    expire = lifecycle.commands_expire

    def counted(**kwargs):
        calls.append(kwargs.get("engine_id"))
        return expire(**kwargs)

    monkeypatch.setattr(lifecycle, "commands_expire", counted)

    # What a hello, a heartbeat that finds commands waiting, and an engine's poll hand over.
    assert delivery.pending_commands(engine.pk) == []
    assert tasks.expire_commands() == 0  # the gateway expired it already

    assert calls == [engine.pk, None]
    late.refresh_from_db()
    assert (late.status, late.detail) == ("expired", "expired before delivery")


def test_no_module_but_the_lifecycle_writes_a_command_status():
    root = Path(__file__).resolve().parents[3]
    lifecycle_path = root / "controlplane" / "commands" / "lifecycle.py"
    writers = []
    for app in ("controlplane", "risk", "alerts", "dashboard", "engine_sdk"):
        for path in (root / app).rglob("*.py"):
            if "migrations" in path.parts or path in (lifecycle_path,):
                continue
            source = path.read_text()
            sql_writes = re.findall(r"UPDATE controlplane_command\b(.*?)(?:\"\"\"|$)", source, re.S)
            orm_writes = re.findall(r"\.update\([^)]*\bstatus=Command\.", source)
            if any(re.search(r"\bstatus\s*=", sql) for sql in sql_writes) or orm_writes:
                writers.append(str(path.relative_to(root)))
            expires = re.search(r"\bEvent\.EXPIRE\b|\bStatus\.EXPIRED\b", source)
            if expires and path.name != "models.py":
                writers.append(f"{path.relative_to(root)} (expiry)")
    assert writers == []


# --- the table --------------------------------------------------------------------------------

Status, Event = Command.Status, Command.Event
RESULTS = {event: status for status, event in Command.RESULT_EVENTS.items()}
# The kind each event is tried on: one it can apply to.
KIND = {Event.EXPIRE: "pause", Event.SUPERSEDE: "resume", Event.REPLACE: "set_limits"}


def _apply(event: str, engine: Engine, command: Command) -> None:
    """``event`` happens to ``command``, through the code that makes it happen."""
    if event == Event.DELIVER:
        lifecycle.mark_delivered([(engine.pk, command.pk)])
    elif event == Event.ACKNOWLEDGE:
        lifecycle.command_answers([(engine.pk, p.CommandAck(command_id=command.pk))])
    elif event in RESULTS:
        lifecycle.command_answers([(engine.pk, result(command, RESULTS[event]))])
    elif event == Event.EXPIRE:
        lifecycle.commands_expire(now=timezone.now())
    elif event == Event.SUPERSEDE:
        issuing.command_issue(
            kind="pause", selector=f"engine:{engine.name}", reason="newer", actor_label="t"
        )
    elif event == Event.REPLACE:
        lifecycle.limits_replace(engine_id=engine.pk, now=timezone.now())
    else:
        raise AssertionError(f"no code path for {event}")


@pytest.mark.django_db
@pytest.mark.parametrize("event", list(Event))
@pytest.mark.parametrize("status", list(Status))
def test_every_status_and_event_moves_as_the_table_says_or_not_at_all(make_engine, status, event):
    engine, _ = make_engine("alpha")
    expires_at = timezone.now() - timedelta(seconds=1) if event == Event.EXPIRE else None
    subject = Command.objects.create(
        engine=engine,
        kind=KIND.get(event, "pause"),
        reason="r",
        issued_by_label="o",
        status=status,
        expires_at=expires_at,
    )

    _apply(event, engine, subject)

    subject.refresh_from_db()
    assert subject.status == (Command.moved(status, event) or status)


@pytest.mark.django_db
@pytest.mark.parametrize("status", list(Status))
def test_handing_commands_over_delivers_as_the_table_says(make_engine, status):
    engine, _ = make_engine("alpha")
    subject = command(engine, kind="pause", status=status)

    delivery.pending_commands(engine.pk)

    subject.refresh_from_db()
    assert subject.status == (Command.moved(status, Event.DELIVER) or status)


def test_the_open_statuses_are_those_an_event_still_moves_and_a_result_names_an_event():
    assert set(Command.OPEN) == {status for status, _ in Command.TRANSITIONS}
    assert set(Command.RESULT_EVENTS) == set(typing.get_args(p.CommandResultStatus))
    assert {event for _, event in Command.TRANSITIONS} == set(Event)
    assert Command.sources(Event.EXPIRE) == [Status.PENDING, Status.DELIVERED]


def test_the_sql_of_a_move_is_built_from_the_table():
    assert lifecycle.transition_sql(Event.EXPIRE) == (
        "status IN ('pending', 'delivered')",
        "'expired'",
    )
    condition, new_status = lifecycle.transition_sql(
        Event.SUCCEED, Event.FAIL, status="c.status", event="r.event"
    )
    assert condition.startswith("(r.event, c.status) IN (('succeed', 'pending'), ")
    assert condition.count("(") == 2 + 6
    assert new_status.startswith("CASE WHEN r.event = 'succeed' AND c.status = 'pending' THEN ")
    with pytest.raises(ValueError, match="not a status or event"):
        lifecycle._quoted("pending'; DROP TABLE controlplane_command; --")
