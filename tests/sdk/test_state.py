"""The state store (engine_sdk/state.py): the trading state, its file, the state-change hook."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from engine_sdk.client import (
    EngineClient,
)
from tests.sdk.conftest import FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]


@pytest.mark.asyncio
async def test_a_kill_is_acked_once_halted_is_on_disk_and_the_write_does_not_stall_the_loop(
    control_plane: FakeControlPlane, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine_sdk import state as state_module

    written = threading.Event()
    release = threading.Event()
    state_writers: list[int] = []
    real_write = state_module._write_atomically

    def slow_write(path: Any, chunks: Any, *, fsync: bool) -> None:
        # A disk taking its time over the fsync: held until the test has looked at the loop.
        if path.name == state_module.STATE_FILE:
            state_writers.append(threading.get_ident())
            written.set()
            release.wait(5)
        real_write(path, chunks, fsync=fsync)

    monkeypatch.setattr(state_module, "_write_atomically", slow_write)
    client = make_client(control_plane.url, fsync=True)
    await client.start()
    await client.wait_connected(timeout=5)
    kill = a_command("kill", flatten=True)

    await control_plane.send(kill)
    await asyncio.to_thread(written.wait, 5)
    # Halted at once, but not acknowledged while HALTED is not on disk; the loop runs on.
    assert client.trading_state == "HALTED"
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert kill.command_id not in control_plane.command_acks
    assert state_writers and threading.get_ident() not in state_writers
    release.set()
    await control_plane.wait_for(lambda: kill.command_id in control_plane.command_acks)
    await client.close()

    restarted = make_client(control_plane.url)
    assert restarted.trading_state == "HALTED"


@pytest.mark.asyncio
async def test_the_clients_of_a_process_share_one_state_writer_and_each_keeps_its_order(
    tmp_path: Any, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine_sdk import state as state_module

    writes: list[tuple[int, str, str]] = []
    real_write = state_module._write_atomically

    def recording_write(path: Any, chunks: Any, *, fsync: bool) -> None:
        if path.name == state_module.STATE_FILE:
            state = msgspec.json.decode(b"".join(chunks))["trading_state"]
            writes.append((threading.get_ident(), path.parent.name, state))
        real_write(path, chunks, fsync=fsync)

    monkeypatch.setattr(state_module, "_write_atomically", recording_write)
    # Not started: a state change is written whether or not the server is reachable.
    a = make_client("ws://127.0.0.1:9/ws", journal_dir=tmp_path / "a")
    b = make_client("ws://127.0.0.1:9/ws", journal_dir=tmp_path / "b")
    for state in ("PAUSED", "REDUCING", "ACTIVE", "HALTED"):
        a.gate.set_state(state)
        b.gate.set_state(state)
    await a.close()
    await b.close()

    # One thread for both, not the event loop's, and every write in the order of the changes.
    assert len({ident for ident, _, _ in writes}) == 1
    assert threading.get_ident() not in {ident for ident, _, _ in writes}
    for name in ("a", "b"):
        assert [s for _, n, s in writes if n == name] == ["PAUSED", "REDUCING", "ACTIVE", "HALTED"]
    # On disk once close has returned; a change after it is written before it returns.
    assert make_client("ws://127.0.0.1:9/ws", journal_dir=tmp_path / "a").trading_state == "HALTED"
    a.gate.set_state("PAUSED")
    assert writes[-1] == (threading.get_ident(), "a", "PAUSED")


@pytest.mark.asyncio
async def test_a_cancelled_wait_for_the_state_write_does_not_cancel_the_write(
    tmp_path: Any, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reader waits for HALTED to be on disk before it acks a kill; when the connection drops
    # meanwhile, that wait is cancelled, and the write, still queued behind another, must happen.
    from engine_sdk import state as state_module

    started, release = threading.Event(), threading.Event()
    real_write = state_module._write_atomically

    def held_write(path: Any, chunks: Any, *, fsync: bool) -> None:
        if path.name == state_module.STATE_FILE and not started.is_set():
            started.set()
            release.wait(5)
        real_write(path, chunks, fsync=fsync)

    monkeypatch.setattr(state_module, "_write_atomically", held_write)
    client = make_client("ws://127.0.0.1:9/ws", journal_dir=tmp_path / "j")
    client.gate.set_state("PAUSED")  # being written, held
    await asyncio.to_thread(started.wait, 5)
    client.gate.set_state("HALTED")  # queued behind it
    waiter = asyncio.create_task(client.state.written())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    release.set()

    await client.close()  # waits for the last write, which was not cancelled
    assert make_client("ws://127.0.0.1:9/ws", journal_dir=tmp_path / "j").trading_state == "HALTED"
