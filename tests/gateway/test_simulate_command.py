"""`manage.py simulate` as a real process against a real uvicorn serving the test database."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.conf import settings

from controlplane.management.commands.simulate import engine_ws_url
from controlplane.models import (
    AccountSnapshot,
    Command,
    Engine,
    EngineEvent,
    Fill,
    Instrument,
    MetricSample,
    Order,
    Position,
)
from engine_sdk.journal import Journal
from golive import preflight
from tests.servers import REPO_ROOT, UvicornServer, current_database_url, free_port, server_env

# The subprocesses see only what is committed.
uses_database = pytest.mark.django_db(transaction=True)

NAMES = ["sim-1", "sim-2"]
RUNNING_TIMEOUT_S = 45.0
# Upper bounds, not waits: a loaded machine takes seconds just to import Django.
EXIT_TIMEOUT_S = 60.0


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            output = log.read_text(errors="replace")
            raise AssertionError(f"{what} within {timeout:.0f}s; simulate said:\n{output}")
        # Polling the database another process writes to: there is no event to await.
        time.sleep(0.1)


def simulate(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "simulate.log"
    env = server_env(
        DATABASE_URL=current_database_url(),
        REDIS_URL=settings.REDIS_URL,
        CONTROLPLANE_DATA_DIR=str(tmp_path / "data"),
    )
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "simulate", *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


def engines_are_trading() -> bool:
    engines = Engine.objects.filter(name__in=NAMES, connected=True)
    return engines.count() == len(NAMES) and all(
        Fill.objects.filter(engine=e).exists()
        and AccountSnapshot.objects.filter(engine=e).exists()
        and MetricSample.objects.filter(engine=e).exists()
        for e in engines
    )


def run_until(
    tmp_path: Path, url: str, condition: Callable[[], bool], stop_with: int, *args: str
) -> str:
    """Run two engines until ``condition`` holds, stop them with a signal, return the output."""
    process, log = simulate(tmp_path, "--engines", "2", "--url", url, "--tick", "0.05", *args)
    try:
        wait_for(condition, timeout=RUNNING_TIMEOUT_S, what="the simulation to get there", log=log)
        process.send_signal(stop_with)
        process.wait(EXIT_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output
    wait_for(
        lambda: not Engine.objects.filter(name__in=NAMES, connected=True).exists(),
        timeout=10,
        what="engines marked offline",
        log=log,
    )
    return output


@uses_database
def test_simulated_engines_trade_against_the_server_and_go_offline_on_ctrl_c(
    uvicorn_server: UvicornServer, tmp_path: Path
) -> None:
    output = run_until(
        tmp_path,
        uvicorn_server.url,
        engines_are_trading,
        signal.SIGINT,
        "--wait-for-server",
        "--seed",
        "7",
    )

    assert "engine connected as" not in output, "one line per connection, not two"
    for name in NAMES:
        assert f"{name} connected to ws://127.0.0.1:{uvicorn_server.port}/ws/engine/v1" in output
    engines = {e.name: e for e in Engine.objects.filter(name__in=NAMES)}
    assert engines["sim-1"].strategy_tags == ["momentum"]
    assert engines["sim-2"].strategy_tags == ["mean-reversion"]
    assert {(e.mode, e.broker) for e in engines.values()} == {("paper", "paper-sim")}
    for engine in engines.values():
        journal_dir = tmp_path / "data" / "sim" / engine.name
        assert (journal_dir / "paper_book.json").exists()
        # Everything the engine journaled was stored before it exited.
        journal = Journal(journal_dir, fsync=False)
        try:
            assert journal.last_seq == engine.last_seq > 0
        finally:
            journal.close()
        assert engine.equity is not None
        # The engine's book agrees with the server's ledger.
        positions = Position.objects.filter(engine=engine)
        assert positions.filter(reported_quantity__isnull=False).exists()
        assert not positions.filter(mismatch_since__isnull=False).exists()
        assert not Fill.objects.filter(engine=engine, expected_price__isnull=True).exists()
        # The pre-flight check "broker connected" is known: the simulator reports its broker up.
        broker = {c.key: c for c in preflight.checks(engine, datetime.now(UTC))}["broker_connected"]
        assert (broker.passed, broker.detail) == (True, "connected")
    assert Instrument.objects.get(symbol="JPM").sector == "Financials"


@uses_database
def test_a_restarted_simulation_resumes_its_books_and_carries_out_a_kill_sent_meanwhile(
    uvicorn_server: UvicornServer, tmp_path: Path
) -> None:
    def sim_1_holds_positions() -> bool:
        open_positions = Position.objects.filter(engine__name="sim-1").exclude(quantity=0)
        return engines_are_trading() and open_positions.exists()

    run_until(tmp_path, uvicorn_server.url, sim_1_holds_positions, signal.SIGTERM)
    first_tokens = set(Engine.objects.values_list("token_hash", flat=True))
    sim_2_fills = Fill.objects.filter(engine__name="sim-2").count()
    # What a kill issued while the engine is offline leaves behind; it is delivered on connect.
    sim_1 = Engine.objects.get(name="sim-1")
    Engine.objects.filter(pk=sim_1.pk).update(desired_state="HALTED")
    kill = Command.objects.create(
        engine=sim_1, kind="kill", params={"flatten": True}, reason="test", issued_by_label="rita"
    )

    def kill_done_and_sim_2_trading() -> bool:
        kill.refresh_from_db()
        return (
            kill.status not in Command.OPEN
            and Fill.objects.filter(engine__name="sim-2").count() > sim_2_fills
            and Engine.objects.filter(name__in=NAMES, connected=True).count() == 2
        )

    run_until(tmp_path, uvicorn_server.url, kill_done_and_sim_2_trading, signal.SIGINT)

    assert kill.status == Command.Status.SUCCEEDED, kill.detail
    assert kill.result["traded"]
    sim_1.refresh_from_db()
    assert sim_1.reported_state == "HALTED"
    assert not Position.objects.filter(engine=sim_1).exclude(quantity=0).exists()
    assert not Order.objects.filter(engine=sim_1, status__in=Order.WORKING).exists()
    assert Engine.objects.count() == 2
    assert first_tokens.isdisjoint(Engine.objects.values_list("token_hash", flat=True))
    # The engines resumed their books: the server's ledger agrees with what they report.
    assert not Position.objects.filter(mismatch_since__isnull=False).exists()


@uses_database
def test_it_gives_up_with_a_clear_error_when_the_server_never_answers(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    process, log = simulate(
        tmp_path, "--engines", "1", "--url", url, "--wait-for-server", "--wait-timeout", "1"
    )
    process.wait(EXIT_TIMEOUT_S)
    output = log.read_text(errors="replace")

    assert process.returncode == 1, output
    assert f"Waiting for the control plane at {url}/healthz" in output
    assert "did not answer within 1 s" in output
    assert not Engine.objects.exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", "ws://127.0.0.1:8000/ws/engine/v1"),
        ("https://cp.example.com/", "wss://cp.example.com/ws/engine/v1"),
        ("http://proxy.internal/controlplane", "ws://proxy.internal/controlplane/ws/engine/v1"),
        ("localhost:8000", "ws://localhost:8000/ws/engine/v1"),
    ],
)
def test_the_web_url_becomes_the_engine_socket_url(url: str, expected: str) -> None:
    assert engine_ws_url(url) == expected


@uses_database
def test_sigterm_stops_the_engines_on_purpose_and_the_server_shows_them_stopped(
    uvicorn_server: UvicornServer, tmp_path: Path
) -> None:
    from dashboard.overview import fleet_rows

    def orders_working() -> bool:
        working = Order.objects.filter(engine__name__in=NAMES, status__in=Order.WORKING)
        return engines_are_trading() and working.exists()

    run_until(tmp_path, uvicorn_server.url, orders_working, signal.SIGTERM)

    # Each engine cancelled its working orders, said so, and said it stops: not down.
    assert not Order.objects.filter(engine__name__in=NAMES, status__in=Order.WORKING).exists()
    for engine in Engine.objects.filter(name__in=NAMES):
        assert engine.stopped_at is not None and not engine.connected
        final = EngineEvent.objects.filter(engine=engine, kind="state").order_by("-seq").first()
        assert final is not None
        assert final.payload["reason"].startswith("shutdown (SIGTERM): ")
        assert "working orders cancelled, 0 still working" in final.payload["reason"]
    assert {row.connection for row in fleet_rows()} == {"stopped"}


@pytest.mark.django_db
def test_the_demo_places_its_engines_at_their_stages_and_says_so() -> None:
    from controlplane.management.commands.simulate import Command as Simulate
    from controlplane.models import Engine, StageChange

    specs = Simulate()._prepare("staged", 3, ["paper", "shadow", "small_capital"])
    assert [(s.name, s.mode) for s in specs] == [
        ("staged-1", "paper"),
        ("staged-2", "shadow"),
        ("staged-3", "live"),
    ]
    engines = Engine.objects.filter(name__startswith="staged-").order_by("name")
    assert [(e.stage, e.mode) for e in engines] == [
        ("paper", "paper"),
        ("shadow", "shadow"),
        ("small_capital", "live"),
    ]
    placed = StageChange.objects.get(engine__name="staged-3", to_stage="small_capital")
    assert placed.reason == "placed at small_capital by the simulator (simulate --stages)"


@pytest.mark.django_db
def test_an_unknown_stage_is_refused_by_name() -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="--stages: promoted is not a stage"):
        call_command("simulate", "--engines", "1", "--stages", "paper,promoted")


@pytest.mark.django_db
def test_the_demo_gives_its_paper_engine_a_recorded_past_once_and_runs_it_calm() -> None:
    from controlplane.management.commands.simulate import Command as Simulate
    from golive import gates

    placed = ["paper", "shadow", "paper"]
    specs = Simulate()._prepare("seeded", 3, placed, seed_history=True)

    assert [(s.name, s.calm) for s in specs] == [
        ("seeded-1", True),
        ("seeded-2", False),
        ("seeded-3", False),
    ]
    first = Engine.objects.get(name="seeded-1")
    assert gates.report(first, datetime.now(UTC)).ready
    assert not Fill.objects.filter(engine__name__in=["seeded-2", "seeded-3"]).exists()
    stored = first.last_seq

    # Restarted, the demo finds its candidate again and leaves its past as it is.
    again = Simulate()._prepare("seeded", 3, placed, seed_history=True)
    assert [s.calm for s in again] == [True, False, False]
    first.refresh_from_db()
    assert first.last_seq == stored
