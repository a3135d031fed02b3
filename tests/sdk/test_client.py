"""The client as a whole (engine_sdk/client.py): order ids, shutting down on purpose, threads."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk.client import (
    EngineClient,
    EngineClientError,
)
from engine_sdk.gate import OrderRejected
from tests.sdk.conftest import FakeControlPlane, a_metric

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
