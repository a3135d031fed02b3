"""A real Freqtrade dry-run bot, offline on a synthetic exchange, followed by the bridge
(engine_sdk.adapters.freqtrade) into a real control plane: fills equal on both sides, positions
reconcile, a kill halts it flat, and a bot restarted while killed is paused again with an alert.

The bot and the bridge run in .venv-engines (Freqtrade and the SDK, no Django), as an engine
developer runs them; the control plane is a real uvicorn on the test database.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps

from alerts import evaluation
from alerts.models import Alert, AlertRule
from controlplane import services
from controlplane.models import Command, Engine, EngineLog, Fill, MetricSample, Position
from engine_sdk.adapters.freqtrade import client_order_id
from risk import services as risk_services
from risk.models import RiskLimit
from tests.engines.freqtrade_bot import (
    ENGINES_PYTHON,
    FREQTRADE,
    MARKETS,
    ROOT,
    bot_config,
    start_bot,
    write_bot,
)
from tests.engines.synthetic_exchange import SyntheticExchange, SyntheticMarket
from tests.servers import UvicornServer, free_port

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = "ft-churn"
BOT_USER, BOT_PASSWORD = "bridge", "a-test-password"
# Upper bounds, not waits: a loaded machine takes seconds to import Freqtrade.
START_TIMEOUT_S = 60.0
TIMEOUT_S = 30.0
Q8 = Decimal("0.00000001")


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, logs: list[Path]) -> Any:
    start = time.monotonic()
    deadline = start + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists()
            )
            raise AssertionError(f"{what} within {timeout:.0f}s\n{tails}")
        # Other processes write what is awaited (the bot, the bridge, the server).
        time.sleep(0.1)
    print(f"{what}: {time.monotonic() - start:.1f} s")
    return value


class Bot:
    """The bot's REST API, as the test reads it (the bridge has its own client)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1"
        self.auth = "Basic " + base64.b64encode(f"{BOT_USER}:{BOT_PASSWORD}".encode()).decode()

    def get(self, path: str) -> Any:
        req = urllib.request.Request(self.url + path, headers={"Authorization": self.auth})
        with urllib.request.urlopen(req, timeout=5) as response:
            return json.loads(response.read(), parse_float=Decimal)

    def up(self) -> bool:
        try:
            return bool(self.get("/ping"))
        except (urllib.error.URLError, OSError):
            return False

    def state(self) -> str:
        return self.get("/show_config")["state"]

    def trades(self) -> list[dict[str, Any]]:
        closed = self.get("/trades?limit=500&order_by_id=true")["trades"]
        return sorted(closed + self.get("/status"), key=lambda t: t["trade_id"])


@pytest.fixture
def exchange() -> Iterator[SyntheticExchange]:
    ex = SyntheticExchange(SyntheticMarket(MARKETS, seed=7)).start()
    try:
        yield ex
    finally:
        ex.stop()


class BotProcess:
    """The bot's process, its files, and a way to crash and restart it on the same database."""

    def __init__(self, exchange: SyntheticExchange, tmp_path: Path) -> None:
        self.port = free_port()
        self.userdir = tmp_path / "bot"
        config = bot_config(
            ccxt_urls=exchange.ccxt_urls(),
            api_port=self.port,
            username=BOT_USER,
            password=BOT_PASSWORD,
            db_url=f"sqlite:///{self.userdir}/trades.sqlite",
        )
        self.config_path = write_bot(self.userdir, config)
        self.log = tmp_path / "bot.log"
        self.api = Bot(self.port)
        self.process = start_bot(self.userdir, self.config_path, self.log)

    def crash_and_restart(self) -> None:
        self.process.kill()  # a crash, or a person's kill -9: the bot comes back as configured
        self.process.wait()
        self.process = start_bot(self.userdir, self.config_path, self.log)


@pytest.fixture
def ft_bot(exchange: SyntheticExchange, tmp_path: Path) -> Iterator[BotProcess]:
    """Started before the control plane (a fixture listed before it): Freqtrade takes seconds
    to start, and nothing of it needs the control plane."""
    # Not a skip: a missing framework is a gap to fix, not a test to leave out.
    assert FREQTRADE.exists(), f"{FREQTRADE} is missing: `make install` builds .venv-engines"
    bot = BotProcess(exchange, tmp_path)
    try:
        yield bot
    finally:
        # Killed, not stopped: its graceful shutdown costs seconds and shows nothing here.
        bot.process.kill()
        bot.process.wait()


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_bridge(
    tmp_path: Path, server: UvicornServer, token: str, bot_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        # The worktree's SDK, not an installed copy.
        "PYTHONPATH": str(ROOT),
        "ENGINE_TOKEN": token,
        "FREQTRADE_PASSWORD": BOT_PASSWORD,
    }
    cmd = [
        str(ENGINES_PYTHON),
        "-m",
        "engine_sdk.adapters.freqtrade",
        "--bot-url",
        f"http://127.0.0.1:{bot_port}",
        "--bot-user",
        BOT_USER,
        "--url",
        f"ws://127.0.0.1:{server.port}/ws/engine/v1",
        "--journal-dir",
        str(tmp_path / "bridge"),
        "--broker",
        "binance",
        "--account",
        "churn",
        "--poll-interval",
        "0.25",
        "--no-fsync",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)


def api_post(server: UvicornServer, token: str, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        server.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def filled_orders(trades: list[dict[str, Any]]) -> dict[str, tuple[dict, dict]]:
    """Every bot order with a filled amount, by the client order id the bridge gives it."""
    return {
        client_order_id(t["trade_id"], o["order_id"]): (t, o)
        for t in trades
        for o in t["orders"]
        if o["filled"]
    }


def is_entry(trade: dict[str, Any], order: dict[str, Any]) -> bool:
    return order["ft_order_side"] == ("sell" if trade["is_short"] else "buy")


def assert_fills_equal(engine: Engine, trades: list[dict[str, Any]]) -> None:
    """The control plane's fills are the bot's filled orders: amounts, prices and fees."""
    orders = filled_orders(trades)
    fills: dict[str, list[Fill]] = {}
    for fill in Fill.objects.filter(engine=engine).select_related("order"):
        fills.setdefault(fill.order.client_order_id, []).append(fill)
    assert set(fills) == set(orders)
    for coid, (trade, order) in orders.items():
        mine = fills[coid]
        filled = Decimal(order["filled"])
        assert sum(f.quantity for f in mine) == filled, coid
        cost = sum(f.quantity * f.price for f in mine)
        assert abs(cost - order["cost"]) <= Q8 * filled + Q8, coid
        if "average" in order:  # /trades gives it, /status (open trades) does not
            assert abs(order["average"] - order["cost"] / filled) <= Q8 * order["average"], coid
        entry = is_entry(trade, order)
        # The bot charges fee rate x cost on each order (fee_open on entries, fee_close on exits).
        rate = trade["fee_open"] if entry else trade["fee_close"]
        assert sum(f.fee for f in mine) == (order["cost"].quantize(Q8) * rate).quantize(Q8), coid
        side = "buy" if entry != trade["is_short"] else "sell"
        assert {f.side for f in mine} == {side}
    # And the bot's own fee totals per trade (what its profit is counted with) agree.
    for trade in trades:
        entry = [f for o in trade["orders"] if is_entry(trade, o) and o["filled"]
                 for f in fills[client_order_id(trade["trade_id"], o["order_id"])]]  # fmt: skip
        if trade.get("fee_open_cost") is not None and entry:
            assert abs(sum(f.fee for f in entry) - trade["fee_open_cost"]) <= Q8


def stored_as_filled(engine: Engine, bot: Bot) -> list[dict[str, Any]] | None:
    """The bot's trades once the control plane holds one fill per filled order, else None (the
    bot keeps trading: a count read alone could be a moment old)."""
    trades = bot.trades()
    return (
        trades if Fill.objects.filter(engine=engine).count() == len(filled_orders(trades)) else None
    )


def exposure_after(engine: Engine, ack_ms: int, trades: list[dict[str, Any]]) -> list[str]:
    """Fills after the kill's ack that grew a position, unless their order was placed before
    the ack (an entry Freqtrade had begun: the kill's force-exit closes it)."""
    placed = {coid: o["order_timestamp"] for coid, (_, o) in filled_orders(trades).items()}
    position: dict[str, Decimal] = {}
    offending = []
    for fill in Fill.objects.filter(engine=engine).select_related("order").order_by("seq"):
        before = position.get(fill.instrument_id, Decimal(0))
        after = before + (fill.quantity if fill.side == "buy" else -fill.quantity)
        position[fill.instrument_id] = after
        late = fill.ts.timestamp() * 1000 > ack_ms
        if late and abs(after) > abs(before) and placed[fill.order.client_order_id] > ack_ms:
            offending.append(f"{fill.fill_id} {fill.side} {fill.quantity} at {fill.ts}")
    return offending


def test_a_freqtrade_bot_is_followed_killed_flat_and_paused_again_after_a_restart(
    ft_bot: BotProcess,
    exchange: SyntheticExchange,
    uvicorn_server: UvicornServer,
    make_engine: Callable[..., tuple[Engine, str]],
    risk_manager: Any,
    tmp_path: Path,
) -> None:
    engine, token = make_engine(ENGINE, broker="binance", account="churn")
    # The shipped Critical log line rule pages at the bridge's line saying the latch was broken.
    # A committing test's database is emptied after it, the migrations' rows with it: the rule
    # is written again as its migration writes it.
    importlib.import_module("alerts.migrations.0012_critical_log_rule").create(django_apps, None)
    assert AlertRule.objects.filter(name="Critical log line", enabled=True).exists()
    _, api_token = services.api_token_create(user=risk_manager, name="test")
    bot_log, bridge_log = ft_bot.log, tmp_path / "bridge.log"
    logs = [bot_log, bridge_log, uvicorn_server.log_path]
    bot = ft_bot.api
    bot_port = ft_bot.port

    t0 = time.monotonic()
    bridge = start_bridge(tmp_path, uvicorn_server, token, bot_port, bridge_log)
    try:
        wait_for(bot.up, timeout=START_TIMEOUT_S, what="the bot's API up", logs=logs)
        print(f"freqtrade answered its API after {time.monotonic() - t0:.1f} s")

        # 1. Trades become fills in the control plane: three entries and an exit, and two
        # positions open for the kill to close.
        wait_for(
            lambda: (
                Fill.objects.filter(engine=engine).count() >= 4
                and Position.objects.filter(engine=engine).exclude(quantity=0).count() >= 2
            ),
            timeout=START_TIMEOUT_S,
            what="fills from the bot in the control plane",
            logs=logs,
        )
        engine.refresh_from_db()
        assert engine.connected and engine.reported_state == "ACTIVE"

        # 2. Pause and resume through the operators' API: /pause and /start.
        def command(kind: str, **extra: Any) -> Command:
            body = {"kind": kind, "selector": f"engine:{ENGINE}", "reason": f"test {kind}"}
            batch = api_post(uvicorn_server, api_token, "/api/v1/commands", body | extra)
            pk = batch["commands"][0]["id"]
            wait_for(
                lambda: Command.objects.get(pk=pk).status not in Command.OPEN,
                timeout=TIMEOUT_S,
                what=f"the {kind}'s result",
                logs=logs,
            )
            return Command.objects.get(pk=pk)

        pause = command("pause")
        assert (pause.status, pause.state_after) == ("succeeded", "PAUSED"), pause.detail
        assert bot.state() == "paused"
        resume = command("resume")
        assert (resume.status, resume.state_after) == ("succeeded", "ACTIVE"), resume.detail
        assert bot.state() == "running"
        # Not something the bridge can do: failed at once by the control plane, not sent.
        reduce = command("reduce", params={"target_pct": 50})
        assert reduce.status == "failed" and "does not handle" in reduce.detail, reduce.detail
        engine.refresh_from_db()
        assert engine.capabilities["limit_kinds"] == []
        # A pre-trade limit reaches the engine as set_limits, answered as not enforceable: the
        # bot's orders never pass the SDK's check_order.
        risk_services.limit_save(
            limit=RiskLimit(kind="max_order_qty", threshold=Decimal(500)),
            reason="desk policy",
            actor=risk_manager,
        )
        set_limits = wait_for(
            lambda: (
                Command.objects.filter(engine=engine, kind="set_limits")
                .exclude(status__in=Command.OPEN)
                .first()
            ),
            timeout=TIMEOUT_S,
            what="the set_limits answered",
            logs=logs,
        )
        assert set_limits.status == "failed", set_limits.detail
        assert "cannot enforce pre-trade limits" in set_limits.detail

        # 3. The bridge crashes and comes back: it reads every trade again (its first poll) and
        # reports none of the fills twice.
        bridge.kill()
        bridge.wait()
        first_polls = MetricSample.objects.filter(engine=engine, name="broker_connected").count()
        bridge = start_bridge(tmp_path, uvicorn_server, token, bot_port, bridge_log)
        wait_for(
            lambda: (
                MetricSample.objects.filter(engine=engine, name="broker_connected").count()
                > first_polls
            ),
            timeout=START_TIMEOUT_S,
            what="the restarted bridge's first poll stored",
            logs=logs,
        )
        trades = wait_for(
            lambda: stored_as_filled(engine, bot),
            timeout=TIMEOUT_S,
            what="the control plane's fills matching the bot's",
            logs=logs,
        )
        assert_fills_equal(engine, trades)

        # 4. A kill through the operators' API.
        kill_body = {
            "kind": "kill",
            "selector": f"engine:{ENGINE}",
            "reason": "test kill",
            "confirm": ENGINE,
        }
        batch = api_post(uvicorn_server, api_token, "/api/v1/commands", kill_body)
        kill = Command.objects.get(pk=batch["commands"][0]["id"])
        wait_for(
            lambda: Command.objects.get(pk=kill.pk).status not in Command.OPEN,
            timeout=TIMEOUT_S,
            what="the kill's result",
            logs=logs,
        )
        kill.refresh_from_db()
        assert "bot paused (/pause)" in kill.detail and "force-exited" in kill.detail
        assert kill.status == Command.Status.SUCCEEDED, kill.detail
        assert kill.state_after == "HALTED"
        assert len(kill.result["traded"]) >= 2, kill.result
        assert bot.state() == "paused"
        assert bot.get("/status") == []  # every trade force-exited

        trades = bot.trades()
        wait_for(
            lambda: Fill.objects.filter(engine=engine).count() == len(filled_orders(trades)),
            timeout=TIMEOUT_S,
            what="every filled order of the bot stored",
            logs=logs,
        )
        engine.refresh_from_db()
        assert engine.reported_state == "HALTED"
        assert_fills_equal(engine, trades)
        ack_ms = int(kill.acknowledged_at.timestamp() * 1000)
        assert exposure_after(engine, ack_ms, trades) == []
        # Flat on both sides, and the ledger agrees with what the bridge reports of the bot.
        wait_for(
            lambda: (
                not Position.objects.filter(engine=engine).exclude(reported_quantity=0).exists()
            ),
            timeout=TIMEOUT_S,
            what="the bot's flat position reported",
            logs=logs,
        )
        for position in Position.objects.filter(engine=engine):
            assert position.quantity == position.reported_quantity == 0
            assert position.mismatch_since is None
        count_at_kill = len(trades)

        # 5. The bot restarted locally while killed: paused again at once, and an alert.
        ft_bot.crash_and_restart()
        relatch = wait_for(
            lambda: EngineLog.objects.filter(
                engine=engine, level="critical", context__relatched=True
            ).first(),
            timeout=START_TIMEOUT_S,
            what="the bridge pausing the restarted bot again",
            logs=logs,
        )
        assert "paused it again" in relatch.message
        wait_for(bot.up, timeout=TIMEOUT_S, what="the restarted bot's API", logs=logs)
        assert bot.state() == "paused"
        wait_for(
            lambda: bot.get("/status") == [],
            timeout=TIMEOUT_S,
            what="the restarted bot flat",
            logs=logs,
        )
        # The worker's evaluation (Celery runs it in production; no worker runs here).
        evaluation.evaluate_engine(engine.pk)
        alert = Alert.objects.get(engine=engine, rule__name="Critical log line")
        assert (alert.state, alert.severity) == ("firing", "critical")
        trades = bot.trades()
        print(f"trades: {count_at_kill} at the kill, {len(trades)} after the restart")
        wait_for(
            lambda: Fill.objects.filter(engine=engine).count() == len(filled_orders(trades)),
            timeout=TIMEOUT_S,
            what="the restarted bot's fills stored",
            logs=logs,
        )
        assert_fills_equal(engine, trades)
        engine.refresh_from_db()
        assert engine.reported_state == "HALTED"
        assert not Position.objects.filter(engine=engine).exclude(quantity=0).exists()
        assert exchange.unknown == [], "the bot asked the exchange for something it does not serve"
        # And it tried no other host (a websocket stream, a price service): offline for real.
        bot_output = bot_log.read_text(errors="replace")
        for sign in ("Name or service not known", "Cannot connect to host", "NetworkError"):
            assert sign not in bot_output
    finally:
        stop(bridge)
    print(f"whole run {time.monotonic() - t0:.1f} s")
