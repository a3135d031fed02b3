from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk.client import (
    MAX_EVENT_BYTES,
    BackpressureError,
    CommandOutcome,
    EngineClient,
    EngineClientError,
    EngineReplaced,
    Unauthorized,
)
from engine_sdk.gate import OrderRejected
from tests.sdk.conftest import TOKEN, FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]


def a_metric(value: float = 1.0) -> p.MetricEvent:
    return p.MetricEvent(ts=datetime.now(UTC), name="latency_ms", value=value)


def a_fill(fill_id: str) -> p.FillEvent:
    return p.FillEvent(
        ts=datetime.now(UTC),
        fill_id=fill_id,
        client_order_id="o-1",
        symbol="AAPL",
        side="buy",
        quantity=Decimal("1"),
        price=Decimal("100.5"),
    )


@pytest.mark.asyncio
async def test_it_says_hello_then_streams_events_until_acked(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)

    seqs = [client.emit(a_metric(i)) for i in range(10)]
    await client.flush(timeout=5)

    assert seqs == list(range(1, 11))
    assert sorted(control_plane.stored) == seqs
    hello = control_plane.hellos[0]
    assert (hello.engine_build, hello.mode, hello.last_seq) == ("test-build", "paper", 0)
    assert hello.trading_state == "ACTIVE"
    assert client.acked_seq == 10
    assert (client.engine_id, client.limits_version) == (7, 3)
    await client.close()


@pytest.mark.asyncio
async def test_after_a_disconnect_it_resends_only_what_the_server_lacks(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    for i in range(5):
        client.emit(a_metric(i))
    await client.flush(timeout=5)

    # The server receives 6..10 but commits only up to 8 before the connection breaks.
    control_plane.ack_events = False
    control_plane.commit_limit = 8
    for i in range(5):
        client.emit(a_metric(i))
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 10)
    control_plane.ack_events = True
    await control_plane.drop()
    await client.flush(timeout=5)

    assert control_plane.received_seqs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 9, 10]
    assert control_plane.hellos[1].last_seq == 10
    assert sorted(control_plane.stored) == list(range(1, 11))
    await client.close()


@pytest.mark.asyncio
async def test_events_emitted_while_offline_survive_a_restart(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    offline = make_client("ws://127.0.0.1:9/ws/engine/v1")
    await offline.start()
    offline.emit(a_fill("f-1"))
    offline.emit(a_fill("f-2"))
    await offline.close()

    client = make_client(control_plane.url)
    assert client.last_seq == 2
    await client.start()
    assert client.emit(a_fill("f-3")) == 3
    await client.flush(timeout=5)

    assert [f.fill_id for f in control_plane.events_of(p.FillEvent)] == ["f-1", "f-2", "f-3"]
    await client.close()


@pytest.mark.asyncio
async def test_a_lost_journal_does_not_reuse_seqs_the_server_has(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Any
) -> None:
    old = make_client(control_plane.url, journal_dir=tmp_path / "old")
    await old.start()
    for i in range(4):
        old.emit(a_metric(i))
    await old.flush(timeout=5)
    await old.close()

    fresh = make_client(control_plane.url, journal_dir=tmp_path / "fresh")
    fresh.emit(a_fill("f-after-reset"))
    await fresh.start()
    await fresh.flush(timeout=5)

    assert control_plane.events_of(p.FillEvent)[0].seq == 5
    assert fresh.emit(a_metric()) == 6
    await fresh.close()


def test_a_client_whose_journal_was_lost_makes_order_ids_the_last_run_never_made(
    make_client: MakeClient, tmp_path: Any
) -> None:
    journal = tmp_path / "journal"
    first = make_client("ws://127.0.0.1:9/ws", journal_dir=journal)
    before = {first.new_order_id() for _ in range(1000)}
    shutil.rmtree(journal)

    again = make_client("ws://127.0.0.1:9/ws", journal_dir=journal)
    after = [again.new_order_id() for _ in range(1000)]

    assert len(before) == 1000 and len(set(after)) == 1000
    assert before.isdisjoint(after)
    assert all(len(order_id) <= 64 for order_id in after)  # the protocol's bound


@pytest.mark.asyncio
async def test_a_large_backlog_is_split_into_frames_within_the_limits(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url, batch_max_events=50)
    big = "x" * int(MAX_EVENT_BYTES * 0.9)  # four of these fill a frame
    for _ in range(6):
        client.emit(
            p.LogEvent(ts=datetime.now(UTC), level="info", message="big", context={"blob": big})
        )
    for i in range(120):
        client.emit(a_metric(i))
    await client.start()
    await client.flush(timeout=5)

    event_frames = [f for f in control_plane.frames if f.startswith(b'{"type":"events"')]
    assert all(len(f) <= p.MAX_FRAME_BYTES for f in event_frames)
    assert len(event_frames) >= 4
    assert sorted(control_plane.stored) == list(range(1, 127))
    await client.close()


@pytest.mark.asyncio
async def test_an_oversized_event_is_refused_at_emit(make_client: MakeClient) -> None:
    client = make_client("ws://127.0.0.1:9/")
    huge = p.LogEvent(
        ts=datetime.now(UTC), level="info", message="x", context={"b": "x" * MAX_EVENT_BYTES}
    )
    with pytest.raises(ValueError, match="bytes"):
        client.emit(huge)
    assert client.emit(a_metric()) == 1
    await client.close()


@pytest.mark.asyncio
async def test_it_refuses_to_queue_beyond_the_backlog_limit_and_emit_wait_waits(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.ack_events = False
    client = make_client(control_plane.url, max_unacked_events=3)
    await client.start()
    await client.wait_connected(timeout=5)
    for i in range(3):
        client.emit(a_metric(i))
    with pytest.raises(BackpressureError):
        client.emit(a_metric())

    waiting = asyncio.create_task(client.emit_wait(a_metric(), timeout=5))
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 3)
    assert not waiting.done()
    await control_plane.send(p.Ack(seq=3))
    assert await waiting == 4
    await client.close()


@pytest.mark.asyncio
async def test_it_stops_for_good_on_a_bad_token(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url, token="wrong")
    await client.start()

    with pytest.raises(Unauthorized):
        await client.wait_connected(timeout=5)

    assert isinstance(client.error, Unauthorized)
    assert control_plane.connection_attempts == 1
    # Events are still journaled for a later run with the right token.
    assert client.emit(a_metric()) == 1
    await client.close()


@pytest.mark.asyncio
async def test_it_stops_when_another_connection_takes_over_the_engine(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.drop(code=p.CLOSE_REPLACED)

    with pytest.raises(EngineReplaced):
        await client.wait_connected(timeout=5)
    assert control_plane.connection_attempts == 1
    await client.close()


class _Ceiling(random.Random):
    """Always picks the top of the jitter range, so the backoff schedule is predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_uses_full_jitter_under_an_exponential_cap(make_client: MakeClient) -> None:
    client = make_client("ws://127.0.0.1:9/", backoff_initial_s=0.2, backoff_max_s=10.0)
    delays = [client.connection.backoff_delay(attempt) for attempt in range(10) for _ in range(20)]
    caps = [min(10.0, 0.2 * 2**attempt) for attempt in range(10) for _ in range(20)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(delays[-20:]) > 5  # the cap is reached, jitter spreads below it


@pytest.mark.asyncio
async def test_it_reconnects_with_growing_delays_while_the_server_refuses(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    # The server refuses the engine (not with 4401) until it is fixed.
    control_plane.token = "rotated"
    control_plane.close_code_for_bad_token = 1011
    client = make_client(
        control_plane.url, backoff_initial_s=0.02, backoff_max_s=0.08, rng=_Ceiling()
    )
    await client.start()
    await control_plane.wait_for(lambda: control_plane.connection_attempts >= 5)

    gaps = [b - a for a, b in itertools.pairwise(control_plane.connection_times)]
    for gap, expected in zip(gaps, [0.02, 0.04, 0.08, 0.08], strict=False):
        assert gap >= expected * 0.9
    control_plane.token = TOKEN
    await client.wait_connected(timeout=5)
    await client.close()


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
async def test_the_dead_man_pauses_a_silent_engine_and_the_server_lifts_it(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    tripped = asyncio.Event()
    control_plane.send_heartbeats = False
    control_plane.heartbeat_interval_s = 10.0
    client = make_client(control_plane.url, dead_man_after_s=0.3, on_dead_man=tripped.set)
    await client.start()
    await client.wait_connected(timeout=5)

    await asyncio.wait_for(tripped.wait(), timeout=5)

    assert client.trading_state == "PAUSED"
    with pytest.raises(OrderRejected, match="PAUSED"):
        client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
    await control_plane.wait_for(lambda: bool(control_plane.events_of(p.StateEvent)))
    state_event = control_plane.events_of(p.StateEvent)[0]
    assert state_event.reason == "dead-man: no server for 0.3 s"

    await control_plane.send(p.ServerHeartbeat(ts=datetime.now(UTC)))
    await control_plane.wait_for(lambda: len(control_plane.events_of(p.StateEvent)) == 2)
    assert client.trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_a_server_that_sends_nothing_at_all_trips_the_dead_man(
    make_client: MakeClient,
) -> None:
    tripped = asyncio.Event()
    client = make_client("ws://127.0.0.1:9/", dead_man_after_s=0.2, on_dead_man=tripped.set)
    await client.start()
    await asyncio.wait_for(tripped.wait(), timeout=5)
    assert client.trading_state == "PAUSED"
    await client.close()


@pytest.mark.asyncio
async def test_it_sends_heartbeats_at_the_interval_the_server_asks_for(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.heartbeat_interval_s = 0.05
    client = make_client(control_plane.url, heartbeat_interval_s=30)
    await client.start()
    client.emit(a_metric())
    await control_plane.wait_for(lambda: len(control_plane.heartbeats) >= 2)
    assert control_plane.heartbeats[-1].last_seq == 1
    assert control_plane.heartbeats[-1].trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_server_errors_reach_the_error_callback(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    errors: list[p.Error] = []
    client = make_client(control_plane.url, on_error=errors.append)
    await client.start()
    await client.wait_connected(timeout=5)
    await control_plane.send(p.Error(code="invalid_event", message="bad", field="events[0].x"))
    # Frames arrive in order: once the ack for a later event is in, so is the error.
    client.emit(a_metric())
    await client.flush(timeout=5)
    assert [e.code for e in errors] == ["invalid_event"]
    await client.close()


@pytest.mark.asyncio
async def test_after_an_internal_error_it_reconnects_and_resends(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    control_plane.ack_events = False
    client.emit(a_metric())
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 1)
    control_plane.stored.clear()  # the server failed to store it
    control_plane.ack_events = True

    await control_plane.send(p.Error(code="internal_error", message="database unavailable"))

    await client.flush(timeout=5)
    assert control_plane.received_seqs == [1, 1]
    assert len(control_plane.hellos) == 2
    await client.close()


# --- shutting down on purpose ---------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
# A small engine of its own process: three working orders, a cancel_all handler that cancels
# them (reporting each), and the SDK's signal handlers. It prints "ready" once the server has
# its orders, and what check_order says after the signal.
ENGINE_SCRIPT = """
import asyncio, sys
from datetime import UTC, datetime
from decimal import Decimal

from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient, HelloInfo
from engine_sdk.gate import OrderRejected

working = {f"o-{i}" for i in range(3)}


def order(coid, status):
    return p.OrderEvent(
        ts=datetime.now(UTC), client_order_id=coid, symbol="AAPL", side="buy",
        order_type="limit", quantity=Decimal(10), limit_price=Decimal(100), status=status,
    )


async def main():
    client = None

    async def on_command(command):
        if command.kind != "cancel_all":
            return CommandOutcome(status="failed", detail="not here")
        cancelled = sorted(working)
        for coid in cancelled:
            client.emit(order(coid, "cancelled"))
        working.clear()
        return CommandOutcome(status="succeeded", data={"cancelled": cancelled, "working": []})

    def on_signal(signum):
        try:
            client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
        except OrderRejected as exc:
            print("refused:", exc.reason, flush=True)

    client = EngineClient(
        sys.argv[1], sys.argv[2], journal_dir=sys.argv[3], on_command=on_command,
        config=ClientConfig(fsync=False, heartbeat_interval_s=0.2),
        hello=HelloInfo(engine_build="b", config_hash="c", mode="paper", broker="s", account="a"),
    )
    await client.start()
    await client.wait_connected(timeout=20)
    client.install_signal_handlers(on_signal=on_signal)
    for coid in sorted(working):
        client.emit(order(coid, "accepted"))
    await client.flush(timeout=20)
    print("ready", flush=True)
    await client.wait_closed()
    print("closed", flush=True)


asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_sigterm_cancels_working_orders_says_why_and_closes_as_stopping(
    control_plane: FakeControlPlane, tmp_path: Any
) -> None:
    import signal
    import sys

    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    root = ROOT
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), control_plane.url, control_plane.token,
        str(tmp_path / "journal"), cwd=root, env={"PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or lines[-1] != "ready":
                line = await process.stdout.readline()
                assert line, "the engine exited early:\n" + "\n".join(lines)
                lines.append(line.decode().strip())
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            rest = (await process.stdout.read()).decode()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, rest
    assert "refused: engine shutting down (SIGTERM): no new orders" in rest
    assert rest.strip().endswith("closed")
    orders = control_plane.events_of(p.OrderEvent)
    assert sorted(o.client_order_id for o in orders if o.status == "cancelled") == [
        "o-0", "o-1", "o-2",
    ]  # fmt: skip
    (state,) = control_plane.events_of(p.StateEvent)
    assert state.reason == (
        "shutdown (SIGTERM): 3 working orders cancelled, 0 still working; trading state ACTIVE"
    )
    # Its last word, once all of that was acked: a heartbeat saying it stops, then close 1000.
    assert control_plane.heartbeats[-1].stopping is True
    assert not any(h.stopping for h in control_plane.heartbeats[:-1])
    assert control_plane.close_codes == [1000]
    last_frames = [msgspec.json.decode(raw)["type"] for raw in control_plane.frames[-1:]]
    assert last_frames == ["heartbeat"]


@pytest.mark.asyncio
async def test_shutdown_without_a_handler_says_orders_were_left_and_still_stops(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)

    await client.shutdown("maintenance", timeout=5)
    await client.shutdown("twice")  # a second call stops nothing more

    (state,) = control_plane.events_of(p.StateEvent)
    assert state.reason.startswith("shutdown (maintenance): no engine command handler")
    assert control_plane.heartbeats[-1].stopping is True
    with pytest.raises(OrderRejected, match="shutting down"):
        client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
    with pytest.raises(EngineClientError):
        client.emit(a_metric())


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "field"),
    [
        (p.LogEvent(ts=datetime.now(UTC), level="info", message="a\x00b"), "message"),
        (
            p.OrderEvent(
                ts=datetime.now(UTC),
                client_order_id="o-1",
                symbol="AAPL",
                side="buy",
                order_type="market",
                quantity=Decimal(1),
                status="rejected",
                reject_reason="broker said \x00",
            ),
            "reject_reason",
        ),
        (p.MetricEvent(ts=datetime.now(UTC), name="x" * 65, value=1.0), "name"),
        (p.LogEvent(ts=datetime.now(UTC), level="info", message="m" * 8193), "message"),
    ],
)
async def test_an_event_outside_the_protocol_bounds_is_refused_at_emit_naming_the_field(
    make_client: MakeClient, event: p.Event, field: str
) -> None:
    client = make_client("ws://127.0.0.1:9/")
    with pytest.raises(ValueError, match=rf"\(field {field}\)"):
        client.emit(event)
    # It took no seq and nothing was queued: the next event is seq 1.
    assert client.emit(a_metric()) == 1
    assert client.backlog == 1
    await client.close()


def test_events_outside_the_bounds_cannot_even_be_built() -> None:
    # Checked on construction (__post_init__), so no engine code can hold one.
    with pytest.raises(ValueError, match=r"0.00000001 - at `\$.price`"):
        p.FillEvent(
            ts=datetime.now(UTC), fill_id="f", client_order_id="o", symbol="A", side="buy",
            quantity=Decimal(1), price=Decimal("1e-9"),
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"UTC offset.*`\$.ts`"):
        p.MetricEvent(
            ts=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=20))), name="x", value=1.0
        )
    deep: object = 1
    for _ in range(p.MAX_JSON_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match=r"nested at most 16 deep - at `\$.context`"):
        p.LogEvent(ts=datetime.now(UTC), level="info", message="m", context={"a": deep})


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
            status="succeeded", detail="broker said \x00", data={"deep": deep},
            trading_state="PAUSED",
        )  # fmt: skip

    client = make_client(control_plane.url, on_command=on_command)
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.send(a_command("pause"))
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)

    (result,) = control_plane.command_results  # decoded by the server's own decoder
    assert (result.status, result.data, result.trading_state) == ("succeeded", {}, "PAUSED")
    assert result.detail.startswith("broker said \ufffd; result data dropped: Expected JSON nested")
    await client.close()
