"""The command runner (engine_sdk/commands.py): acked, handled once, answered within bounds."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from engine_sdk import protocol as p
from engine_sdk.client import CommandOutcome, EngineClient
from engine_sdk.commands import CommandRunner
from engine_sdk.state import StateStore
from tests.sdk.conftest import FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]


@pytest.mark.asyncio
async def test_a_command_delivered_twice_is_handled_once(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    handled: list[p.Command] = []

    async def on_command(command: p.Command) -> CommandOutcome:
        handled.append(command)
        return CommandOutcome(status="succeeded", detail="paused", trading_state="PAUSED")

    client = make_client(control_plane.url, on_command=on_command)
    await client.start()
    await client.wait_connected(timeout=5)
    command = a_command("pause")

    await control_plane.send(command)
    await control_plane.send(command)
    await control_plane.wait_for(lambda: len(control_plane.command_results) >= 1)
    await control_plane.wait_for(lambda: len(control_plane.command_acks) == 2)
    # Delivered again in the welcome of a later connection.
    control_plane.welcome_commands = [command]
    await control_plane.drop()
    await control_plane.wait_for(lambda: len(control_plane.command_acks) == 3)
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 2)

    assert handled == [command]
    assert {r.command_id for r in control_plane.command_results} == {command.command_id}
    assert all(r.status == "succeeded" for r in control_plane.command_results)
    assert client.trading_state == "PAUSED"
    await client.close()


@pytest.mark.asyncio
async def test_a_handled_command_is_not_run_again_after_a_restart(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    handled: list[p.Command] = []

    async def on_command(command: p.Command) -> CommandOutcome:
        handled.append(command)
        return CommandOutcome(status="succeeded", trading_state="HALTED")

    command = a_command("kill", flatten=True)
    first = make_client(control_plane.url, on_command=on_command)
    await first.start()
    await first.wait_connected(timeout=5)
    await control_plane.send(command)
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)
    await first.close()

    control_plane.welcome_commands = [command]
    second = make_client(control_plane.url, on_command=on_command)
    assert second.trading_state == "HALTED"  # the kill survives the restart
    await second.start()
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 2)

    assert handled == [command]
    assert second.trading_state == "HALTED"
    assert control_plane.hellos[-1].trading_state == "HALTED"
    await second.close()


@pytest.mark.asyncio
async def test_a_command_handled_as_the_client_closes_is_still_recorded(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Any
) -> None:
    # The record waits for a thread of the loop's pool (one, and busy); close cancels the
    # command worker meanwhile. The record must still be written, or a restart would run the
    # command's handler again.
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    busy = threading.Event()
    handled: list[p.Command] = []

    async def on_command(command: p.Command) -> CommandOutcome:
        handled.append(command)
        return CommandOutcome(status="succeeded", trading_state="PAUSED")

    client = make_client(control_plane.url, on_command=on_command, journal_dir=tmp_path / "j")
    await client.start()
    await client.wait_connected(timeout=5)
    holding = loop.run_in_executor(None, busy.wait, 5)
    command = a_command("pause", duration=60)
    await control_plane.send(command)
    for _ in range(500):  # until the record waits in the pool's queue
        if handled and pool._work_queue.qsize():
            break
        await asyncio.sleep(0.01)
    worker = next(task for task in client._tasks if task.get_name() == "engine-sdk-commands")
    closing = asyncio.create_task(client.close())
    await asyncio.wait([worker])  # cancelled by close
    busy.set()
    await holding
    await closing
    pool.shutdown(wait=True)

    restarted = make_client(control_plane.url, journal_dir=tmp_path / "j")
    assert restarted.runner.store.result(command.command_id) is not None


@pytest.mark.asyncio
async def test_the_handler_decides_the_trading_state_and_a_timed_pause_ends_by_itself(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)  # the default handler changes only the state
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.send(a_command("pause", duration=0.2))
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)
    assert control_plane.command_results[0].trading_state == "PAUSED"
    await control_plane.wait_for(
        lambda: (
            [e.trading_state for e in control_plane.events_of(p.StateEvent)] == ["PAUSED", "ACTIVE"]
        )
    )
    assert client.trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_a_command_of_an_unknown_kind_is_answered_as_failed(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    frame = p.encode(a_command("pause")).replace(b'"kind":"pause"', b'"kind":"hedge"')
    assert control_plane.connection is not None

    await control_plane.connection.send(frame.decode())

    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)
    assert control_plane.command_results[0].status == "failed"
    assert client.trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_a_result_out_of_bounds_still_reaches_the_server_without_its_data(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    # The server would refuse this result (U+0000, JSON nested too deep): the command would stay
    # open and come back on every reconnection.
    deep: Any = 1
    for _ in range(p.MAX_JSON_DEPTH):
        deep = [deep]

    async def on_command(command: p.Command) -> CommandOutcome:
        return CommandOutcome(
            status="succeeded",
            detail="broker said \x00",
            data={"deep": deep},
            trading_state="PAUSED",
        )

    client = make_client(control_plane.url, on_command=on_command)
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.send(a_command("pause"))
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)

    (result,) = control_plane.command_results  # decoded by the server's own decoder
    assert (result.status, result.data, result.trading_state) == ("succeeded", {}, "PAUSED")
    assert result.detail.startswith("broker said \ufffd; result data dropped: Expected JSON nested")
    await client.close()


@pytest.mark.asyncio
async def test_the_runner_works_on_its_own_with_a_state_store(tmp_path: Path) -> None:
    reported: list[p.Event] = []

    def emit(event: p.Event) -> int:
        reported.append(event)
        return len(reported)

    state = StateStore(tmp_path, fsync=False, emit=emit)
    delivered: list[p.CommandResult] = []
    done = asyncio.Event()

    async def deliver(result: p.CommandResult) -> None:
        delivered.append(result)
        done.set()

    runner = CommandRunner(tmp_path, fsync=False, state=state, handler=None, deliver=deliver)
    sent: list[p.EngineFrame] = []

    async def send(data: bytes) -> None:
        sent.append(p.decode_engine_frame(data))

    pause = a_command("pause", duration=60)
    worker = asyncio.create_task(runner.run())
    try:
        await runner.receive(pause, send)
        await runner.receive(pause, send)  # still in flight: acked again, not run twice
        await asyncio.wait_for(done.wait(), 5)
        await runner.receive(pause, send)  # handled: answered from the command store
    finally:
        worker.cancel()

    assert [type(frame).__name__ for frame in sent] == [
        "CommandAck",
        "CommandAck",
        "CommandAck",
        "CommandResult",
    ]
    (result,) = delivered
    assert (result.status, result.trading_state) == ("succeeded", "PAUSED")
    assert sent[-1] == result
    until = state.gate.paused_until
    assert until is not None and 55 < (until - p.utc_now()).total_seconds() <= 60
    assert reported == [
        p.StateEvent(ts=reported[0].ts, trading_state="PAUSED", reason="pause by rita: test")
    ]
