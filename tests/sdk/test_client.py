"""The client as a whole (engine_sdk/client.py): order ids, shutting down on purpose, threads."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk import state as state_module
from engine_sdk.client import EngineClient, EngineClientError
from engine_sdk.gate import OrderRejected
from engine_sdk.journal import Journal
from engine_sdk.limits import LimitRejected
from tests.sdk.conftest import FakeControlPlane, a_command, a_metric

MakeClient = Callable[..., EngineClient]


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
        sys.executable,
        str(script),
        control_plane.url,
        control_plane.token,
        str(tmp_path / "journal"),
        cwd=root,
        env={"PYTHONPATH": str(root)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
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
        "o-0",
        "o-1",
        "o-2",
    ]
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


# --- emit and check_order from an engine's own threads ----------------------------------------

THREADS = 8
PER_THREAD = 400


def hammer_emit(client: EngineClient, thread: int, start: threading.Barrier) -> list[int]:
    """Emit PER_THREAD metrics whose value names the thread and the count; return their seqs."""
    start.wait()
    return [client.emit(a_metric(thread * 1_000_000 + i)) for i in range(PER_THREAD)]


def sent_values(by_thread: list[list[int]]) -> dict[int, float]:
    """The value hammer_emit gave the event of each seq."""
    return {
        seq: float(thread * 1_000_000 + i)
        for thread, seqs in enumerate(by_thread)
        for i, seq in enumerate(seqs)
    }


@pytest.mark.asyncio
async def test_threads_emitting_at_once_lose_and_repeat_no_seq(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Path
) -> None:
    client = make_client(control_plane.url, journal_dir=tmp_path / "j", batch_max_events=64)
    await client.start()
    await client.wait_connected(timeout=5)
    loop = asyncio.get_running_loop()
    start = threading.Barrier(THREADS)
    on_loop: list[tuple[int, float]] = []

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [
            loop.run_in_executor(pool, hammer_emit, client, t, start) for t in range(THREADS)
        ]
        # The loop emits too, meanwhile, as an engine's own coroutines would.
        while not all(f.done() for f in futures):
            if len(on_loop) < PER_THREAD:
                value = -float(len(on_loop) + 1)
                on_loop.append((client.emit(a_metric(value)), value))
            await asyncio.sleep(0)
        by_thread = await asyncio.gather(*futures)

    expected = sent_values(by_thread)
    expected.update(on_loop)
    total = THREADS * PER_THREAD + len(on_loop)
    # Every call got a seq of its own, the seqs have no gap, and each thread's are in its order.
    assert len(expected) == total and sorted(expected) == list(range(1, total + 1))
    assert all(seqs == sorted(seqs) for seqs in by_thread)

    await client.flush(timeout=20)
    # The server got each seq once, each with the event it was given to.
    assert sorted(control_plane.received_seqs) == list(range(1, total + 1))
    assert {seq: e.value for seq, e in control_plane.stored.items()} == expected
    await client.close()

    journal = Journal(tmp_path / "j")
    assert (journal.last_seq, journal.acked_seq, len(journal)) == (total, total, 0)
    journal.close()


@pytest.mark.asyncio
async def test_events_emitted_from_threads_offline_are_journaled_in_seq_order_and_sent_later(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Path
) -> None:
    offline = make_client("ws://127.0.0.1:9/", journal_dir=tmp_path / "j", batch_max_events=50)
    await offline.start()
    start = threading.Barrier(THREADS)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        by_thread = list(pool.map(lambda t: hammer_emit(offline, t, start), range(THREADS)))
    await offline.close()

    total = THREADS * PER_THREAD
    journal = Journal(tmp_path / "j")
    seqs = [seq for seq, _ in journal.unacked]
    assert seqs == list(range(1, total + 1))
    journaled = {seq: p.decode_event(raw) for seq, raw in journal.unacked}
    values = {seq: e.value for seq, e in journaled.items() if isinstance(e, p.MetricEvent)}
    assert values == sent_values(by_thread)
    journal.close()

    restarted = make_client(control_plane.url, journal_dir=tmp_path / "j")
    await restarted.start()
    await restarted.flush(timeout=20)
    assert sorted(control_plane.stored) == list(range(1, total + 1))
    await restarted.close()


@pytest.mark.asyncio
async def test_threads_checking_orders_at_once_pass_no_more_than_the_rate_limit(
    control_plane: FakeControlPlane, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    control_plane.limits = [
        {"id": 1, "kind": "max_order_rate", "threshold": "50", "scope": "all", "scope_value": None}
    ]
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    # Every check at the same instant: the whole run is inside one rate window.
    monkeypatch.setattr(state_module, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    start = threading.Barrier(THREADS)

    def trade(thread: int) -> tuple[int, int]:
        start.wait()
        passed = refused = 0
        for _ in range(100):
            try:
                client.check_order("AAPL", "buy", 1, 0)
                passed += 1
            except LimitRejected as exc:
                assert exc.limit_kind == "max_order_rate"
                refused += 1
        return passed, refused

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        counts = list(pool.map(trade, range(THREADS)))

    assert sum(passed for passed, _ in counts) == 50
    assert sum(refused for _, refused in counts) == THREADS * 100 - 50
    await client.close()


def test_order_ids_made_on_many_threads_are_all_different(make_client: MakeClient) -> None:
    client = make_client("ws://127.0.0.1:9/")
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        ids = list(pool.map(lambda _: client.new_order_id(), range(THREADS * 500)))
    assert len(set(ids)) == len(ids)


@pytest.mark.asyncio
async def test_threads_emitting_and_checking_orders_while_commands_change_limits_and_state(
    control_plane: FakeControlPlane, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rate(threshold: int) -> list[dict[str, Any]]:
        return [{"id": 1, "kind": "max_order_rate", "threshold": str(threshold), "scope": "all"}]

    control_plane.limits_version, control_plane.limits = 1, rate(200)
    client = await connected_client(control_plane, make_client)
    changes: list[tuple[str, str]] = []
    client.on_state_change(lambda change: changes.append((change.old, change.new)))
    # Every check at the same instant: every order that ever passed stays in the rate window,
    # across each new version of the limits.
    monkeypatch.setattr(state_module, "time", SimpleNamespace(monotonic=lambda: 1000.0))
    loop = asyncio.get_running_loop()
    start, stop = threading.Barrier(THREADS + 1), threading.Event()

    def work(thread: int) -> tuple[list[int], int]:
        start.wait()
        seqs: list[int] = []
        passed = 0
        # Until the commands are done, and at least a few rounds each.
        while (not stop.is_set() or len(seqs) < 20) and len(seqs) < 5_000:
            seqs.append(client.emit(a_metric(thread * 1_000_000 + len(seqs))))
            try:
                client.check_order("AAPL", "buy", 1, 0)
                passed += 1
            except OrderRejected:  # PAUSED, or a LimitRejected from the rate
                pass
        return seqs, passed

    async def command(kind: p.CommandKind, **params: Any) -> p.CommandResult:
        sent = a_command(kind, **params)
        await control_plane.send(sent)
        await control_plane.wait_for(
            lambda: any(r.command_id == sent.command_id for r in control_plane.command_results)
        )
        return next(r for r in control_plane.command_results if r.command_id == sent.command_id)

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [loop.run_in_executor(pool, work, t) for t in range(THREADS)]
        await asyncio.to_thread(start.wait)
        thresholds = [300, 150, 600, 100, 450]
        for version, threshold in enumerate(thresholds, start=2):
            result = await command("set_limits", limits_version=version, limits=rate(threshold))
            assert (result.status, result.data["limits_version"]) == ("succeeded", version)
            assert (await command("pause")).status == "succeeded"
            assert (await command("resume")).status == "succeeded"
        stop.set()
        done = await asyncio.gather(*futures)

    by_thread = [seqs for seqs, _ in done]
    passed = sum(count for _, count in done)
    expected = sent_values(by_thread)
    await client.flush(timeout=30)
    stored = dict(control_plane.stored)
    states = sorted((seq, e) for seq, e in stored.items() if isinstance(e, p.StateEvent))
    # Each emit and each state change took a seq of its own, with no gap, and each thread's
    # seqs follow its calls; the server got every event once, each under its own seq.
    total = len(expected) + len(states)
    assert sorted([*expected, *(seq for seq, _ in states)]) == list(range(1, total + 1))
    assert all(seqs == sorted(seqs) for seqs in by_thread)
    assert sorted(control_plane.received_seqs) == list(range(1, total + 1))
    assert {s: e.value for s, e in stored.items() if isinstance(e, p.MetricEvent)} == expected
    # The hook saw every change, in the order of the state events.
    assert changes == [("ACTIVE", "PAUSED"), ("PAUSED", "ACTIVE")] * len(thresholds)
    assert [(e.trading_state) for _, e in states] == [new for _, new in changes]
    # Every order that passed was counted once in the rate window, whatever version was in
    # force: a limit of exactly one more lets one order through, and no second.
    assert 0 < passed <= max(200, *thresholds)
    await command("set_limits", limits_version=10, limits=rate(passed + 1))
    client.check_order("AAPL", "buy", 1, 0)
    with pytest.raises(LimitRejected, match=f"{passed + 2} orders within 1 s"):
        client.check_order("AAPL", "buy", 1, 0)
    await client.close()


async def connected_client(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> EngineClient:
    client = make_client(control_plane.url, batch_max_events=64)
    await client.start()
    await client.wait_connected(timeout=5)
    return client
