"""The NautilusTrader adapter (engine_sdk.adapters.nautilus), driving a real BacktestEngine.

NautilusTrader lives in its own virtual environment (.venv-engines: the SDK and the frameworks,
no Django), so the engine side runs as a subprocess, tests/engines/nautilus_run.py, with this
checkout's engine_sdk on its path. Against a real control plane (uvicorn on the test database) a
backtest trades synthetic quotes, is killed by the control plane at a step boundary, trades on,
and must end flat and HALTED with the same fills and positions on both sides. Offline (nothing
listening), the same engine runs, and its gate and commands are driven directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from controlplane.commands import issuing
from controlplane.models import (
    AccountSnapshot,
    Command,
    Engine,
    Fill,
    Instrument,
    Order,
    Position,
)
from tests.servers import REPO_ROOT, UvicornServer

ENGINES_PYTHON = REPO_ROOT / ".venv-engines" / "bin" / "python"
SCRIPT = REPO_ROOT / "tests" / "engines" / "nautilus_run.py"
# Upper bounds, not waits: importing NautilusTrader alone takes seconds on a loaded machine.
TIMEOUT_S = 90.0

uses_database = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def engines_venv() -> None:
    if not ENGINES_PYTHON.exists():
        pytest.fail(
            f"{ENGINES_PYTHON} is missing: `make install` builds it (tests/engines/"
            "requirements.txt)",
            pytrace=False,
        )


def start(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "nautilus.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        # This checkout's engine_sdk, not an installed one.
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(ENGINES_PYTHON), str(SCRIPT), *args, "--dir", str(tmp_path / "run")],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


def wait_for(
    condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if process.poll() is not None and not condition():
            raise AssertionError(
                f"{what}: the engine exited ({process.returncode}):\n"
                f"{log.read_text(errors='replace')[-6000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what} within {TIMEOUT_S:.0f}s:\n{log.read_text(errors='replace')[-6000:]}"
            )
        # Another process writes the files and the database: there is no event to await.
        time.sleep(0.05)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def fill_key(side: str, quantity: Any, price: Any, client_order_id: str) -> tuple[Any, ...]:
    return (client_order_id, side, Decimal(str(quantity)), Decimal(str(price)))


@uses_database
def test_backtest_killed_by_the_control_plane_ends_flat_halted_and_reconciled(
    uvicorn_server: UvicornServer,
    make_engine: Callable[..., tuple[Engine, str]],
    tmp_path: Path,
) -> None:
    engine, token = make_engine("nautilus-bt", mode="backtest")
    process, log = start(
        tmp_path,
        "backtest",
        "--url",
        f"{uvicorn_server.ws_url}/ws/engine/v1",
        "--token",
        token,
    )
    run = tmp_path / "run"
    try:

        def ready() -> bool:
            said = read_json(run / "ready.json")
            return (
                said is not None
                and said["fills"] > 0
                and Fill.objects.filter(engine=engine).count() == said["fills"]
            )

        wait_for(ready, "the backtest trading, its fills stored", process, log)
        issuing.command_issue(
            kind="kill", selector="engine:nautilus-bt", reason="adapter test", actor_label="test"
        )
        kill = Command.objects.get(engine=engine, kind="kill")
        wait_for(lambda: (run / "record.json").exists(), "the backtest's record", process, log)

        def kill_done() -> bool:
            kill.refresh_from_db()
            return kill.completed_at is not None

        wait_for(kill_done, "the kill's result", process, log)
        assert process.stdin is not None
        process.stdin.write(b"done\n")
        process.stdin.flush()
        assert process.wait(timeout=TIMEOUT_S) == 0, log.read_text(errors="replace")[-6000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    record = read_json(run / "record.json")
    engine.refresh_from_db()

    # The kill: acknowledged, done, and the engine HALTED and flat on both sides.
    assert kill.status == Command.Status.SUCCEEDED, (kill.status, kill.detail, kill.result)
    assert kill.acknowledged_at is not None
    assert kill.state_after == "HALTED"
    assert kill.result["left"] == {} and kill.result["working"] == []
    assert record["trading_state"] == "HALTED"
    assert engine.reported_state == "HALTED"
    assert set(record["positions"].values()) <= {"0"}
    # The strategy kept trying after the kill; the gate denied it, and the denials are stored.
    assert record["denied"] > 0
    rejected = Order.objects.filter(engine=engine, status="rejected")
    assert rejected.count() == record["denied"]
    assert all("HALTED" in o.reject_reason for o in rejected)

    # Run, capabilities, strategy.
    assert engine.run_id == record["run_id"] != ""
    assert "kill" in engine.capabilities["commands"]
    assert "max_order_qty" in engine.capabilities["limit_kinds"]

    # Fills: the same on both sides (count, ids, side, quantity, price, fee and its currency).
    stored = list(Fill.objects.filter(engine=engine).select_related("order").order_by("seq"))
    assert len(stored) == len(record["fills"]) > record["fills_at_kill"] > 0
    assert sorted(
        fill_key(f.side, f.quantity, f.price, f.order.client_order_id) for f in stored
    ) == sorted(
        fill_key(f["side"], f["quantity"], f["price"], f["client_order_id"])
        for f in record["fills"]
    )
    assert {(f.strategy_id, f.fee_currency) for f in stored} == {("WalkTrader-000", "USD")}
    assert set(Order.objects.filter(engine=engine).values_list("strategy_id", flat=True)) == {
        "WalkTrader-000"
    }
    assert sum(f.fee for f in stored) == sum(Decimal(f["fee"]) for f in record["fills"])

    # Positions reconcile: the control plane's ledger (from the fills) and the engine's report.
    instrument = Instrument.objects.get(symbol="EUR/USD.SIM")
    position = Position.objects.get(engine=engine, instrument=instrument)
    assert position.quantity == Decimal(record["positions"]["EUR/USD.SIM"]) == 0
    assert position.reported_quantity == 0
    assert instrument.asset_class == "fx"
    assert instrument.currency == "USD"
    assert instrument.tick_size == Decimal("0.00001")
    assert AccountSnapshot.objects.filter(engine=engine, currency="USD").exists()

    # No fill after the kill's acknowledgement added exposure: each one after the halt (the
    # state event precedes the ack) brings the position closer to zero without crossing it.
    held = Decimal(0)
    after_kill = 0
    for fill in stored:
        signed = fill.quantity if fill.side == "buy" else -fill.quantity
        if fill.seq > record["halt_seq"]:
            after_kill += 1
            assert abs(held + signed) < abs(held), (fill.seq, held, signed)
            assert held + signed == 0 or (held + signed > 0) == (held > 0)
        held += signed
    assert Decimal(record["position_at_kill"]["EUR/USD.SIM"]) != 0
    assert after_kill == len(stored) - record["fills_at_kill"] >= 1
    assert held == 0


def test_offline_the_node_runs_and_the_gate_and_commands_hold(tmp_path: Path) -> None:
    """Nothing listens (port 9): the node runs all the same. The gate is set directly."""
    process, log = start(tmp_path, "offline")
    try:
        assert process.wait(timeout=TIMEOUT_S) == 0, log.read_text(errors="replace")[-6000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    result = read_json(tmp_path / "run" / "offline.json")
    assert result["connected"] is False
    steps = {s["name"]: s for s in result["steps"]}

    def outcome(name: str) -> tuple[str, list[str]]:
        return steps[name]["position"], steps[name]["denied"]

    assert outcome("active: buy 30000") == ("30000", [])
    # PAUSED: nothing that adds risk; a reducing order passes.
    position, denied = outcome("paused: buy 10000")
    assert position == "30000" and "PAUSED" in denied[0]
    assert outcome("paused: sell 10000") == ("20000", [])
    position, denied = outcome("paused: sell 50000")
    assert position == "20000" and "only orders that reduce" in denied[0]
    # REDUCING: never across zero, counting the reducing orders already working.
    position, denied = outcome("reducing: sell 30000")
    assert position == "20000" and "would cross zero" in denied[0]
    position, denied = outcome("reducing: two sells of 15000")
    assert position == "5000" and len(denied) == 1
    assert outcome("active: sell 40000") == ("-35000", [])
    # A pre-trade limit the SDK enforces (set_limits below) refuses the order, named.
    position, denied = outcome("active: buy 200000 over the limit")
    assert position == "-35000" and "max_order_qty (#1)" in denied[0]

    commands = result["commands"]
    unknown, bad_target, limits, reduce, kill = commands
    assert unknown["status"] == "failed"
    assert "NoSuchStrategy-999" in unknown["detail"] and "WalkTrader-000" in unknown["detail"]
    assert bad_target["status"] == "failed" and "target_pct" in bad_target["detail"]
    # A limit kind it cannot enforce: partial, naming it; the one it can is in force.
    assert limits["status"] == "partial"
    assert "max_daily_turnover (#2)" in limits["detail"]
    assert limits["data"]["limits_version"] == 3
    # Reduce one strategy to half: through the strategy, leaving the engine's state alone.
    assert reduce["status"] == "succeeded" and reduce["state"] == "ACTIVE"
    assert reduce["data"]["traded"] == {"EUR/USD.SIM": "17500"}
    assert steps["after reduce"]["position"] == "-17500"
    # Kill: flat, HALTED; nothing passes afterwards.
    assert kill["status"] == "succeeded" and kill["state"] == "HALTED"
    assert kill["data"]["left"] == {} and kill["data"]["traded"] == {"EUR/USD.SIM": "17500"}
    position, denied = outcome("halted: buy 10000")
    assert position == "0" and "HALTED" in denied[0]


@uses_database
def test_live_node_answers_commands_on_its_own_loop_and_stops_on_purpose(
    uvicorn_server: UvicornServer,
    make_engine: Callable[..., tuple[Engine, str]],
    tmp_path: Path,
) -> None:
    """A TradingNode (no venue): the client runs on the node's loop; a pause and a flatten of
    a strategy the node does not have, issued by the control plane, are answered there."""
    engine, token = make_engine("nautilus-live", mode="paper")
    process, log = start(
        tmp_path, "live", "--url", f"{uvicorn_server.ws_url}/ws/engine/v1", "--token", token
    )
    run = tmp_path / "run"
    try:

        def ready() -> bool:
            engine.refresh_from_db()
            return (run / "ready.json").exists() and engine.connected

        wait_for(ready, "the live node connected", process, log)
        issuing.command_issue(
            kind="pause", selector="engine:nautilus-live", reason="news", actor_label="test"
        )
        issuing.command_issue(
            kind="flatten",
            selector="engine:nautilus-live",
            reason="one strategy",
            params={"strategy_id": "NoSuchStrategy-1"},
            actor_label="test",
        )
        commands = Command.objects.filter(engine=engine)

        def answered() -> bool:
            return (run / "live.json").exists() and all(
                c.completed_at is not None for c in commands.all()
            )

        wait_for(answered, "both commands answered", process, log)
        assert process.stdin is not None
        process.stdin.write(b"done\n")
        process.stdin.flush()
        assert process.wait(timeout=TIMEOUT_S) == 0, log.read_text(errors="replace")[-6000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    live = read_json(run / "live.json")
    engine.refresh_from_db()
    pause = commands.get(kind="pause")
    flatten = commands.get(kind="flatten")
    assert pause.status == Command.Status.SUCCEEDED and pause.state_after == "PAUSED"
    assert flatten.status == Command.Status.FAILED
    assert "NoSuchStrategy-1" in flatten.detail and "WalkTrader-000" in flatten.detail
    # Handled on the node's own thread (its loop), not on a thread of the adapter's.
    assert {thread for _, _, thread in live["answers"]} == {live["loop_thread"]}
    assert live["trading_state"] == "PAUSED"
    # A live node keeps the engine's one run; it said what it enforces; it stopped on purpose.
    assert engine.run_id == ""
    assert "flatten" in engine.capabilities["commands"]
    assert engine.reported_state == "PAUSED"
    assert engine.stopped_at is not None and not engine.connected
