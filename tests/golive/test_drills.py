"""The kill drill (golive.drills) against a real uvicorn, PostgreSQL, Redis and the SDK's client:
on a paper engine a real kill that the drill releases, on a real-money engine the SDK's check of
its halt path; the latencies recorded, the gate's criterion then passing; and its refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from controlplane.commands import issuing
from controlplane.commands.errors import CommandInvalid, CommandRefused
from controlplane.models import AuditEvent, Command, Engine
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient, HelloInfo
from golive import drills, gates, preflight
from golive.models import KillDrill, PromotionCriterion
from tests.servers import UvicornServer

pytestmark = pytest.mark.django_db(transaction=True)

MakeEngine = Callable[..., tuple[Engine, str]]


class Engine_:
    """An engine's command handler: obeys kills and resumes, and records what it was asked."""

    def __init__(self) -> None:
        self.handled: list[p.Command] = []
        self.resumed = asyncio.Event()

    async def on_command(self, command: p.Command) -> CommandOutcome:
        self.handled.append(command)
        if command.kind == "kill":
            return CommandOutcome(
                status="succeeded", data={"cancelled": []}, trading_state="HALTED"
            )
        if command.kind == "resume":
            self.resumed.set()
            return CommandOutcome(status="succeeded", trading_state="ACTIVE")
        return CommandOutcome(status="failed", detail=f"not expected: {command.kind}")


def client_for(server: UvicornServer, token: str, journal: Path, mode: str, handler: Any) -> Any:
    config = ClientConfig(batch_interval_s=0.005, backoff_initial_s=0.05, fsync=False)
    hello = HelloInfo(engine_build="t", config_hash="t", mode=mode, broker="sim", account="a")
    return EngineClient(
        f"{server.ws_url}/ws/engine/v1",
        token,
        journal_dir=journal,
        hello=hello,
        config=config,
        on_command=handler,
    )


async def drill_settled(drill_id: int) -> KillDrill:
    async with asyncio.timeout(20):
        while True:
            drill = await asyncio.to_thread(KillDrill.objects.get, pk=drill_id)
            if drill.status not in KillDrill.OPEN:
                return drill
            # The drill's outcome is written by the server's process: the row is all there is.
            await asyncio.sleep(0.02)


async def connected(client: EngineClient, engine: Engine) -> None:
    await client.start()
    await client.wait_connected(timeout=10)
    async with asyncio.timeout(10):
        online = Engine.objects.filter(pk=engine.pk, connected=True).exists
        while not await asyncio.to_thread(online):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def test_a_paper_engine_s_drill_kills_releases_and_passes_the_criterion(
    uvicorn_server: UvicornServer, make_engine: MakeEngine, risk_manager: User, tmp_path: Path
) -> None:
    engine, token = make_engine("drilled", mode="paper")
    handler = Engine_()

    async def run() -> KillDrill:
        client = client_for(uvicorn_server, token, tmp_path, "paper", handler.on_command)
        try:
            await connected(client, engine)
            drill = await asyncio.to_thread(
                drills.drill_start, engine=engine, actor=risk_manager, reason="monthly drill"
            )
            async with asyncio.timeout(20):
                await handler.resumed.wait()
            settled = await drill_settled(drill.pk)
            assert client.trading_state == "ACTIVE"
            return settled
        finally:
            await client.close()

    drill = asyncio.run(run())
    assert [c.kind for c in handler.handled] == ["kill", "resume"]
    kill, release = handler.handled
    assert kill.reason == "kill drill: monthly drill" and kill.params == {"flatten": True}
    assert release.params["approved_by"] == "kill drill of rita-risk"
    assert drill.status == "passed", drill.detail
    assert drill.kind == "kill_release" and drill.stage == "paper"
    assert drill.ack_ms is not None and drill.done_ms is not None
    assert drill.ack_ms <= drill.done_ms < 10_000
    assert drill.release_ms is not None and drill.released_at is not None
    assert str(drill.command_id) == str(kill.command_id)
    assert str(drill.release_id) == str(release.command_id)
    engine.refresh_from_db()
    assert (engine.desired_state, engine.reported_state) == ("ACTIVE", "ACTIVE")
    outcome = AuditEvent.objects.get(action="kill_drill_outcome")
    assert outcome.outcome == "passed" and outcome.data["done_ms"] == drill.done_ms
    assert AuditEvent.objects.filter(action="kill_drill_start", outcome="ok").count() == 1

    # At small capital, the criterion of the next step reads this drill.
    Engine.objects.filter(pk=engine.pk).update(stage="small_capital")
    engine.refresh_from_db()
    PromotionCriterion.objects.get_or_create(
        from_stage="small_capital", key="kill_drill_days", defaults={"threshold": 30}
    )
    (criterion,) = [
        c for c in gates.report(engine, timezone.now()).criteria if c.key == "kill_drill_days"
    ]
    assert criterion.passed is True and criterion.value == 0
    assert f"done in {drill.done_ms:,} ms" in criterion.value_text
    check = {c.key: c for c in preflight.checks(engine, timezone.now())}["kill_switch_drilled"]
    assert check.passed is True and f"done in {drill.done_ms:,} ms" in check.detail


def test_a_real_money_engine_s_drill_sends_kill_drill_and_nothing_changes(
    uvicorn_server: UvicornServer, make_engine: MakeEngine, risk_manager: User, tmp_path: Path
) -> None:
    engine, token = make_engine("live-one", stage="small_capital", mode="live")
    handler = Engine_()

    async def run() -> KillDrill:
        client = client_for(uvicorn_server, token, tmp_path, "live", handler.on_command)
        try:
            await connected(client, engine)
            drill = await asyncio.to_thread(
                drills.drill_start, engine=engine, actor=risk_manager, reason="pre-full drill"
            )
            settled = await drill_settled(drill.pk)
            assert client.trading_state == "ACTIVE"
            return settled
        finally:
            await client.close()

    drill = asyncio.run(run())
    assert handler.handled == []  # the SDK answered it; the engine's handler never saw it
    assert drill.kind == "halt_path" and drill.status == "passed", drill.detail
    assert drill.done_ms is not None and drill.release_ms is None
    command = Command.objects.get(pk=drill.command_id)
    assert command.kind == "kill_drill" and command.status == "succeeded"
    assert command.state_after == "ACTIVE" and command.expires_at is not None
    assert set(command.result["checks"]) >= {"command_handler", "halt_gate", "state_store"}
    engine.refresh_from_db()
    assert engine.desired_state == "ACTIVE"
    assert not Command.objects.filter(engine=engine, kind__in=["kill", "resume"]).exists()
    # Its batch and the engine's commands are shown as any command's.
    client = Client()
    client.force_login(risk_manager)
    page = client.get(f"/commands/batches/{command.batch_id}/")
    assert page.status_code == 200 and "1 of 1 engine drilled" in page.content.decode()
    assert client.get("/engines/live-one/commands/").status_code == 200


def test_refusals_are_named_and_audited(
    make_engine: MakeEngine, risk_manager: User, operator: User, viewer: User
) -> None:
    engine, _ = make_engine("offline", mode="paper")

    with pytest.raises(CommandRefused, match="needs the issue_kill permission"):
        drills.drill_start(engine=engine, actor=operator, reason="try")
    with pytest.raises(CommandInvalid, match="not connected"):
        drills.drill_start(engine=engine, actor=risk_manager, reason="try")

    Engine.objects.filter(pk=engine.pk).update(connected=True)
    issuing.command_issue(
        kind="kill",
        selector="engine:offline",
        reason="a real incident",
        actor=risk_manager,
        confirmation="offline",
    )
    with pytest.raises(CommandInvalid, match="already HALTED by a kill"):
        drills.drill_start(engine=engine, actor=risk_manager, reason="try")
    Engine.objects.filter(pk=engine.pk).update(desired_state="ACTIVE")
    with pytest.raises(CommandInvalid, match="say why"):
        drills.drill_start(engine=engine, actor=risk_manager, reason="  ")

    # A drill already running.
    KillDrill.objects.create(
        engine=engine, kind="kill_release", stage="paper", reason="r", actor_label="rex"
    )
    with pytest.raises(CommandInvalid, match="started by rex is still running"):
        drills.drill_start(engine=engine, actor=risk_manager, reason="try")
    assert KillDrill.objects.count() == 1
    assert Command.objects.filter(engine=engine).count() == 1  # the real kill alone

    refused = AuditEvent.objects.filter(action="kill_drill_start", outcome="refused")
    words = [event.data["refusal"] for event in refused.order_by("pk")]
    assert len(words) == 4
    assert "otto-operator may not drill" in words[0] and "not connected" in words[1]
    assert "already HALTED" in words[2] and "still running" in words[3]

    # Over HTTP: a viewer is refused with a 403, recorded.
    client = Client()
    client.force_login(viewer)
    answer = client.post("/engines/offline/go-live/kill-drill/", {"reason": "try"})
    assert answer.status_code == 403
    assert refused.filter(actor=viewer.username).exists()


def test_a_kill_drill_is_no_command_a_person_issues(make_engine: MakeEngine, risk_manager: User):
    make_engine("plain", mode="paper")
    with pytest.raises(CommandInvalid, match="started from the engine's go-live page"):
        issuing.command_issue(
            kind="kill_drill", selector="engine:plain", reason="x", actor=risk_manager
        )
    assert not Command.objects.exists()


def test_a_drill_s_release_is_refused_after_another_kill(
    make_engine: MakeEngine, risk_manager: User
) -> None:
    engine, _ = make_engine("twice", mode="paper")
    first = issuing.command_issue(
        kind="kill",
        selector="engine:twice",
        reason="kill drill: x",
        actor=risk_manager,
        confirmation="twice",
    ).commands.get()
    issuing.command_issue(
        kind="kill", selector="engine:twice", reason="real", actor=None, actor_label="risk"
    )
    with pytest.raises(CommandRefused, match="killed again after the drill's kill"):
        issuing.command_issue(
            kind="resume",
            selector="engine:twice",
            reason="release",
            actor=risk_manager,
            releases_drill_kill=first,
        )
    engine.refresh_from_db()
    assert engine.desired_state == "HALTED"


def test_a_drill_left_unanswered_fails_after_the_timeout(make_engine: MakeEngine) -> None:
    engine, _ = make_engine("silent", mode="paper")
    drill = KillDrill.objects.create(
        engine=engine, kind="kill_release", stage="paper", reason="r", actor_label="rex"
    )
    KillDrill.objects.filter(pk=drill.pk).update(
        created_at=timezone.now() - drills.DRILL_TIMEOUT - timezone.timedelta(seconds=1)
    )
    assert drills.drills_expire() == 1
    drill.refresh_from_db()
    assert drill.status == "failed" and "no answer to its kill in 5 min" in drill.detail
    assert drills.last_passed([engine.pk]) == {}
