"""The kill drill of a real-money engine (engine_sdk/drill.py): the SDK verifies the halt path
and answers without trading, the engine's handler never called, the trading state unchanged."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine_sdk import protocol as p
from engine_sdk.client import CommandOutcome, EngineClient
from engine_sdk.commands import CommandRunner
from engine_sdk.state import STATE_FILE, StateStore
from tests.sdk.conftest import FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]


async def _drill(
    tmp_path: Path, handler: Any, *, state_name: p.TradingState = "ACTIVE"
) -> tuple[p.CommandResult, StateStore, list[p.Event]]:
    reported: list[p.Event] = []

    def emit(event: p.Event) -> int:
        reported.append(event)
        return len(reported)

    state = StateStore(tmp_path, fsync=False, emit=emit)
    state.gate.set_state(state_name, reason="set up")
    await state.written()
    reported.clear()
    delivered: list[p.CommandResult] = []
    done = asyncio.Event()

    async def deliver(result: p.CommandResult) -> None:
        delivered.append(result)
        done.set()

    runner = CommandRunner(tmp_path, fsync=False, state=state, handler=handler, deliver=deliver)

    async def send(data: bytes) -> None:
        return None

    worker = asyncio.create_task(runner.run())
    try:
        await runner.receive(a_command("kill_drill"), send)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        worker.cancel()
    (result,) = delivered
    return result, state, reported


@pytest.mark.asyncio
async def test_with_a_handler_the_halt_path_is_verified_and_nothing_is_traded(
    tmp_path: Path,
) -> None:
    called: list[p.Command] = []

    async def on_command(command: p.Command) -> CommandOutcome:
        called.append(command)
        return CommandOutcome(status="succeeded", trading_state="HALTED")

    before = (tmp_path / STATE_FILE).read_bytes() if (tmp_path / STATE_FILE).exists() else None
    result, state, reported = await _drill(tmp_path, on_command)

    assert result.status == "succeeded", result.detail
    assert "nothing traded" in result.detail
    checks = result.data["checks"]
    assert set(checks) == {"command_handler", "halt_gate", "trading_gate", "state_store"}
    assert all(check["passed"] for check in checks.values())
    assert "on_command" in checks["command_handler"]["detail"]
    assert called == []  # the engine's handler never saw the drill
    assert result.trading_state == "ACTIVE" and state.state == "ACTIVE"
    assert reported == []  # no state event: the state never moved
    assert before is None or (tmp_path / STATE_FILE).read_bytes() == before
    assert not (tmp_path / "drill.tmp").exists()


@pytest.mark.asyncio
async def test_without_a_handler_the_drill_fails_naming_it(tmp_path: Path) -> None:
    result, state, reported = await _drill(tmp_path, None, state_name="PAUSED")
    assert result.status == "failed"
    assert "command_handler: no engine command handler" in result.detail
    assert result.data["checks"]["command_handler"]["passed"] is False
    assert result.data["checks"]["halt_gate"]["passed"] is True
    assert result.trading_state == "PAUSED" and state.state == "PAUSED"
    assert reported == []


@pytest.mark.asyncio
async def test_a_handler_that_is_not_a_coroutine_function_fails(tmp_path: Path) -> None:
    def on_command(command: p.Command) -> CommandOutcome:
        raise AssertionError("never called")

    result, _, _ = await _drill(tmp_path, on_command)
    assert result.status == "failed"
    assert "is not a coroutine function" in result.data["checks"]["command_handler"]["detail"]


@pytest.mark.asyncio
async def test_a_journal_directory_that_cannot_be_written_fails_the_drill(tmp_path: Path) -> None:
    async def on_command(command: p.Command) -> CommandOutcome:
        return CommandOutcome(status="succeeded")

    store = tmp_path / "journal"
    store.mkdir()
    runner_dir = tmp_path / "runner"
    runner_dir.mkdir()
    state = StateStore(store, fsync=False, emit=lambda event: 0)
    # Gone from under the engine (a volume unmounted): no state file could be written there.
    shutil.rmtree(store)
    delivered: list[p.CommandResult] = []
    done = asyncio.Event()

    async def deliver(result: p.CommandResult) -> None:
        delivered.append(result)
        done.set()

    async def send(data: bytes) -> None:
        return None

    runner = CommandRunner(
        runner_dir, fsync=False, state=state, handler=on_command, deliver=deliver
    )
    worker = asyncio.create_task(runner.run())
    try:
        await runner.receive(a_command("kill_drill"), send)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        worker.cancel()
    (result,) = delivered
    assert result.status == "failed"
    assert result.data["checks"]["state_store"]["passed"] is False
    assert "state_store:" in result.detail and "cannot be written" in result.detail
    assert state.state == "ACTIVE"


class _Engine:
    def __init__(self, broker_up: bool) -> None:
        self.broker_up = broker_up
        self.handled: list[p.Command] = []

    async def on_command(self, command: p.Command) -> CommandOutcome:
        self.handled.append(command)
        return CommandOutcome(status="succeeded")

    async def drill(self) -> dict[str, Any]:
        return {"broker_session": (self.broker_up, "cancel endpoint answers"), "orders": True}


@pytest.mark.asyncio
@pytest.mark.parametrize("broker_up", [True, False])
async def test_the_engine_s_own_probe_is_asked(tmp_path: Path, broker_up: bool) -> None:
    engine = _Engine(broker_up)
    result, _, _ = await _drill(tmp_path, engine.on_command)
    checks = result.data["checks"]
    assert checks["probe:broker_session"] == {
        "passed": broker_up,
        "detail": "cancel endpoint answers",
    }
    assert checks["probe:orders"]["passed"] is True
    assert result.status == ("succeeded" if broker_up else "failed")
    assert engine.handled == []


@pytest.mark.asyncio
async def test_over_a_socket_the_client_answers_the_drill_and_stays_as_it_is(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    handled: list[p.Command] = []

    async def on_command(command: p.Command) -> CommandOutcome:
        handled.append(command)
        return CommandOutcome(status="succeeded", trading_state="HALTED")

    client = make_client(control_plane.url, on_command=on_command)
    await client.start()
    await client.wait_connected(timeout=5)
    command = a_command("kill_drill")
    await control_plane.send(command)
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)
    (result,) = control_plane.command_results
    assert command.command_id in control_plane.command_acks
    assert (result.status, result.trading_state) == ("succeeded", "ACTIVE")
    assert handled == [] and client.trading_state == "ACTIVE"
    await client.close()
