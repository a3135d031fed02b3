"""The state store (engine_sdk/state.py): the trading state, its file, the state-change hook."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk import state as state_module
from engine_sdk.client import EngineClient
from engine_sdk.gate import OrderRejected, StateChange
from tests.sdk.conftest import FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]


@pytest.mark.asyncio
async def test_a_kill_is_acked_once_halted_is_on_disk_and_the_write_does_not_stall_the_loop(
    control_plane: FakeControlPlane, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
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


# --- the state-change hook ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_hook_sees_each_change_with_its_cause_after_it_is_reported(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    seen: list[tuple[str, str, str, int]] = []

    def hook(change: StateChange) -> None:
        # The change is in force and its state event already has a seq when the hook runs.
        assert client.trading_state == change.new
        seen.append((change.old, change.new, change.reason, client.last_seq))

    remove = client.on_state_change(hook)
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.send(a_command("pause", duration=0.3))
    await control_plane.wait_for(lambda: len(seen) == 2)
    assert seen == [
        ("ACTIVE", "PAUSED", "pause by rita: test", 1),
        ("PAUSED", "ACTIVE", "pause ended", 2),
    ]
    await client.flush(timeout=5)
    states = [(e.trading_state, e.reason) for e in control_plane.events_of(p.StateEvent)]
    assert states == [("PAUSED", "pause by rita: test"), ("ACTIVE", "pause ended")]

    remove()
    await control_plane.send(a_command("kill"))
    await control_plane.wait_for(lambda: client.trading_state == "HALTED")
    assert len(seen) == 2
    remove()  # twice is harmless
    await client.close()


def test_a_failing_hook_neither_stops_the_change_nor_the_hooks_after_it(
    tmp_path: Path, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client("ws://127.0.0.1:9/", journal_dir=tmp_path / "j")
    later: list[StateChange] = []

    def broken(change: StateChange) -> None:
        raise RuntimeError("hook bug")

    client.on_state_change(broken)
    client.on_state_change(later.append)
    assert client.gate.pause(reason="by hand")

    assert client.trading_state == "PAUSED"
    assert [(c.old, c.new, c.reason) for c in later] == [("ACTIVE", "PAUSED", "by hand")]
    assert client.last_seq == 1  # reported all the same
    assert "state change listener failed" in caplog.text


def test_the_end_of_a_timed_pause_is_reported_once_whichever_thread_notices_it(
    tmp_path: Path, make_client: MakeClient
) -> None:
    client = make_client("ws://127.0.0.1:9/", journal_dir=tmp_path / "j")
    changes: list[StateChange] = []
    client.on_state_change(changes.append)
    # The test moves the gate's clock, not the machine's load: every thread is refused by the
    # pause first, then the pause's end is passed for all of them at once.
    now = [p.utc_now()]
    client.gate._clock = lambda: now[0]
    client.gate.pause(until=now[0] + timedelta(seconds=1), reason="short")
    refused_once = threading.Barrier(9)

    def trade() -> int:
        refused = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                client.check_order("AAPL", "buy", 1, 0)
            except OrderRejected:
                refused += 1
                if refused == 1:
                    refused_once.wait(timeout=5)
                continue
            return refused
        raise AssertionError("the pause never ended")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [pool.submit(trade) for _ in range(8)]
        refused_once.wait(timeout=5)
        now[0] += timedelta(seconds=2)
        refusals = [result.result() for result in results]

    assert all(count >= 1 for count in refusals)  # each thread saw the pause
    assert [(c.old, c.new, c.reason) for c in changes] == [
        ("ACTIVE", "PAUSED", "short"),
        ("PAUSED", "ACTIVE", "pause ended"),
    ]
    assert client.last_seq == 2  # one state event each, no more
