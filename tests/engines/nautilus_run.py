"""A NautilusTrader BacktestEngine wired to the control plane through engine_sdk.adapters.nautilus.

Run with the engines' virtual environment (.venv-engines, which has NautilusTrader and the SDK but
no Django), PYTHONPATH at the repository root:

    .venv-engines/bin/python tests/engines/nautilus_run.py backtest --url ws://... --token ... \
        --dir /tmp/run
    .venv-engines/bin/python tests/engines/nautilus_run.py offline --dir /tmp/run

``backtest`` trades a seeded random walk of EUR/USD quotes (made here: no network, no data files)
in steps against a real control plane, and paces itself for the test that drives it:

1. after ``--steps-before-kill`` steps it flushes, writes ``ready.json`` (its fills so far) and
   waits, without trading, until the adapter has received a kill (the test issues it);
2. it notes the highest seq emitted before the kill (``halt_seq``), runs the remaining steps
   (the strategy keeps trying to trade; the kill's cancel and flatten are done at the pumps),
   waits until the kill was handled, and writes ``record.json``: what NautilusTrader itself
   reports (its fills, positions, denied orders, the adapter's trading state);
3. it waits for a line on stdin before closing, so that the kill's result is sent first.

``offline`` runs the same engine with the control plane unreachable, and drives the adapter's gate
and command handler directly: it writes ``offline.json`` with what each order and command got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig, TradingNodeConfig
from nautilus_trader.live.node import TradingNode
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import QuoteTick
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide, PositionSide
from nautilus_trader.model.identifiers import Venue
from nautilus_trader.model.objects import Money, Quantity
from nautilus_trader.test_kit.providers import TestInstrumentProvider
from nautilus_trader.trading.strategy import Strategy

from engine_sdk import protocol as p
from engine_sdk.adapters.nautilus import ControlPlaneAdapter
from engine_sdk.client import ClientConfig

VENUE = Venue("SIM")
START = datetime(2024, 1, 2, tzinfo=UTC)
STEP_QUOTES = 200
WAIT_S = 60.0


class WalkConfig(StrategyConfig, frozen=True):
    instrument_id: str
    seed: int = 7
    every: int = 5
    scripted: bool = False


class WalkTrader(Strategy):
    """Every ``every`` quotes, a market order of 10,000 or 20,000, mostly buys (so that a
    position is open when the kill comes). ``scripted``: only the orders put in ``plan``."""

    def __init__(self, config: WalkConfig) -> None:
        super().__init__(config)
        self.instrument_id = TestInstrumentProvider.default_fx_ccy("EUR/USD", VENUE).id
        self.rng = random.Random(config.seed)
        self.count = 0
        self.plan: list[tuple[OrderSide, int]] = []
        self.sent: list[str] = []

    def on_start(self) -> None:
        self.subscribe_quote_ticks(self.instrument_id)

    def on_quote_tick(self, tick: QuoteTick) -> None:
        self.count += 1
        if self.config.scripted:
            while self.plan:
                side, qty = self.plan.pop(0)
                self._send(side, qty)
            return
        if self.count % self.config.every:
            return
        side = OrderSide.BUY if self.rng.random() < 0.65 else OrderSide.SELL
        self._send(side, self.rng.choice((10_000, 20_000)))

    def _send(self, side: OrderSide, qty: int) -> None:
        order = self.order_factory.market(self.instrument_id, side, Quantity.from_int(qty))
        self.sent.append(order.client_order_id.value)
        self.submit_order(order)


def quotes(instrument: Any, seed: int, steps: int = 60) -> Iterator[list[QuoteTick]]:
    """Up to ``steps`` lists of STEP_QUOTES quotes, one a second: a seeded random walk."""
    rng = random.Random(seed)
    mid = 1.1000
    t = START
    for _ in range(steps):
        chunk = []
        for _ in range(STEP_QUOTES):
            mid = max(0.5, mid + rng.choice((-1, 0, 1)) * 0.00005)
            ns = int(t.timestamp() * 1e9)
            chunk.append(
                QuoteTick(
                    instrument_id=instrument.id,
                    bid_price=instrument.make_price(mid - 0.00005),
                    ask_price=instrument.make_price(mid + 0.00005),
                    bid_size=Quantity.from_int(5_000_000),
                    ask_size=Quantity.from_int(5_000_000),
                    ts_event=ns,
                    ts_init=ns,
                )
            )
            t += timedelta(seconds=1)
        yield chunk


def build(args: argparse.Namespace, *, scripted: bool) -> tuple[Any, Any, WalkTrader, Any]:
    engine = BacktestEngine(
        BacktestEngineConfig(trader_id="NT-001", logging=LoggingConfig(log_level="ERROR"))
    )
    engine.add_venue(
        venue=VENUE,
        oms_type=OmsType.NETTING,
        account_type=AccountType.MARGIN,
        base_currency=USD,
        starting_balances=[Money(1_000_000, USD)],
    )
    instrument = TestInstrumentProvider.default_fx_ccy("EUR/USD", VENUE)
    engine.add_instrument(instrument)
    strategy = WalkTrader(WalkConfig(instrument_id=instrument.id.value, scripted=scripted))
    engine.add_strategy(strategy)
    adapter = ControlPlaneAdapter(
        url=args.url,
        token=args.token,
        journal_dir=Path(args.dir) / "journal",
        engine_build="nautilus-walk-1",
        config_hash="walk-seed-7",
        mode="backtest",
        broker="sim",
        account="SIM-001",
        client_config=ClientConfig(fsync=False, batch_interval_s=0.005, backoff_max_s=0.5),
        command_timeout_s=20.0,
    )
    adapter.install(engine)
    return engine, instrument, strategy, adapter


def nautilus_fills(engine: Any) -> list[dict[str, str]]:
    fills = []
    for order in engine.cache.orders():
        for event in order.events:
            if type(event).__name__ == "OrderFilled":
                fills.append(
                    {
                        "client_order_id": event.client_order_id.value,
                        "side": "buy" if event.order_side == OrderSide.BUY else "sell",
                        "quantity": str(event.last_qty.as_decimal()),
                        "price": str(event.last_px.as_decimal()),
                        "fee": str(event.commission.as_decimal()),
                        "fee_currency": event.commission.currency.code,
                        "strategy_id": event.strategy_id.value,
                        "ts_ns": event.ts_event,
                    }
                )
    return sorted(fills, key=lambda f: (f["ts_ns"], f["client_order_id"]))


def net_positions(engine: Any) -> dict[str, str]:
    net: dict[str, Decimal] = {}
    for position in engine.cache.positions():
        qty = position.quantity.as_decimal()
        signed = qty if position.side == PositionSide.LONG else -qty
        symbol = position.instrument_id.value
        net[symbol] = net.get(symbol, Decimal(0)) + (signed if position.is_open else 0)
    return {k: str(v) for k, v in net.items()}


def write(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def run_backtest(args: argparse.Namespace) -> None:
    out = Path(args.dir)
    engine, instrument, strategy, adapter = build(args, scripted=False)
    halted = threading.Event()
    adapter.client.on_state_change(lambda c: halted.set() if c.new == "HALTED" else None)
    adapter.wait_connected(WAIT_S)
    chunks = quotes(instrument, seed=11)

    def step() -> None:
        chunk = next(chunks, None)
        if chunk is None:
            raise SystemExit("out of quotes")
        engine.add_data(chunk)
        engine.run(streaming=True)
        engine.clear_data()
        adapter.pump()

    for _ in range(args.steps_before_kill):
        step()
    adapter.flush(WAIT_S)
    write(out / "ready.json", {"fills": len(nautilus_fills(engine))})
    if not halted.wait(WAIT_S):
        raise SystemExit("no kill received")
    # The engine is not running: every event so far was emitted before the halt, and any fill
    # after it has a higher seq.
    halt_seq = adapter.client.last_seq
    fills_at_kill = len(nautilus_fills(engine))
    position_at_kill = net_positions(engine)

    def kill_handled() -> bool:
        return any(kind == "kill" for kind, _ in adapter.handled)

    # Trading goes on after the kill (the strategy keeps trying), at least --steps-after-kill
    # steps, and until the kill's cancel and flatten are done: they need quotes to fill.
    for _ in range(args.steps_after_kill):
        step()
    while not adapter.pump_until(kill_handled, 0.5):
        step()
    engine.end()
    adapter.flush(WAIT_S)
    write(
        out / "record.json",
        {
            "run_id": adapter.run_id,
            "fills": nautilus_fills(engine),
            "positions": net_positions(engine),
            "trading_state": adapter.client.trading_state,
            "halt_seq": halt_seq,
            "fills_at_kill": fills_at_kill,
            "position_at_kill": position_at_kill,
            "handled": adapter.handled,
            "denied": len(adapter.denied),
            "orders_sent": len(strategy.sent),
        },
    )
    print("recorded", flush=True)
    sys.stdin.readline()
    adapter.close(flush_timeout=10)
    engine.dispose()


def run_offline(args: argparse.Namespace) -> None:
    """The control plane unreachable: the node runs; the gate and commands, driven directly."""
    out = Path(args.dir)
    engine, instrument, strategy, adapter = build(args, scripted=True)
    chunks = quotes(instrument, seed=3)
    steps: list[dict[str, Any]] = []

    def step(name: str, orders: list[tuple[OrderSide, int]]) -> None:
        before = len(adapter.denied)
        strategy.plan = list(orders)
        engine.add_data(next(chunks))
        engine.run(streaming=True)
        engine.clear_data()
        adapter.pump()
        steps.append(
            {
                "name": name,
                "state": adapter.client.trading_state,
                "denied": [reason for _, reason in adapter.denied[before:]],
                "position": net_positions(engine).get(instrument.id.value, "0"),
            }
        )

    def command(kind: str, **params: Any) -> dict[str, Any]:
        cmd = p.Command(
            command_id=uuid.uuid4(),
            kind=kind,  # type: ignore[arg-type]
            params=params,
            issued_by="offline",
            issued_at=p.utc_now(),
        )
        assert adapter._loop_thread is not None
        if kind == "kill":
            # As the SDK does on receipt, before the ack.
            adapter.client.state.halt_for(cmd)
        future = asyncio.run_coroutine_threadsafe(
            adapter.client.runner.run_command(cmd), adapter._loop_thread.loop
        )
        # Closing orders fill on the quotes that follow: trade on until the command is done.
        while not adapter.pump_until(future.done, 0.5):
            step("(while " + kind + ")", [])
        result = future.result()
        return {
            "kind": kind,
            "status": result.status,
            "detail": result.detail,
            "data": result.data,
            "state": result.trading_state,
        }

    commands = []
    step("active: buy 30000", [(OrderSide.BUY, 30_000)])
    adapter.client.gate.set_state("PAUSED", reason="offline test")
    step("paused: buy 10000", [(OrderSide.BUY, 10_000)])
    step("paused: sell 10000", [(OrderSide.SELL, 10_000)])
    step("paused: sell 50000", [(OrderSide.SELL, 50_000)])
    adapter.client.gate.set_state("REDUCING", reason="offline test")
    step("reducing: sell 30000", [(OrderSide.SELL, 30_000)])
    step("reducing: two sells of 15000", [(OrderSide.SELL, 15_000), (OrderSide.SELL, 15_000)])
    adapter.client.gate.set_state("ACTIVE", reason="offline test")
    step("active: sell 40000", [(OrderSide.SELL, 40_000)])
    commands.append(command("flatten", strategy_id="NoSuchStrategy-999"))
    commands.append(command("reduce", target_pct=150))
    commands.append(
        command(
            "set_limits",
            limits_version=3,
            limits=[
                {"id": 1, "kind": "max_order_qty", "scope": "all", "threshold": "100000"},
                {"id": 2, "kind": "max_daily_turnover", "scope": "all", "threshold": "1"},
            ],
        )
    )
    step("active: buy 200000 over the limit", [(OrderSide.BUY, 200_000)])
    commands.append(command("reduce", target_pct=50, strategy_id=strategy.id.value))
    step("after reduce", [])
    commands.append(command("kill"))
    step("halted: buy 10000", [(OrderSide.BUY, 10_000)])
    write(
        out / "offline.json",
        {
            "steps": steps,
            "commands": commands,
            "connected": adapter.client.connected,
            "strategy_id": strategy.id.value,
        },
    )
    engine.end()
    adapter.close(flush_timeout=0)
    engine.dispose()


def run_live(args: argparse.Namespace) -> None:
    """A live TradingNode (no venue: nothing to trade) whose client runs on the node's loop:
    it answers the control plane's commands there, and stops on purpose."""
    out = Path(args.dir)
    node = TradingNode(
        config=TradingNodeConfig(
            trader_id="NT-LIVE",
            logging=LoggingConfig(log_level="ERROR"),
            # No venue to wait for: stopping need not wait for one.
            timeout_disconnection=1.0,
            timeout_post_stop=0.5,
        )
    )
    strategy = WalkTrader(WalkConfig(instrument_id="EUR/USD.SIM", scripted=True))
    node.trader.add_strategy(strategy)
    node.build()
    adapter = ControlPlaneAdapter(
        url=args.url,
        token=args.token,
        journal_dir=out / "journal-live",
        engine_build="nautilus-live-1",
        config_hash="live",
        mode="paper",
        broker="sim",
        account="LIVE-001",
        client_config=ClientConfig(fsync=False, batch_interval_s=0.005),
    )
    adapter.install(node)
    loop = node.get_event_loop()
    handled: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
    inner = adapter.client.on_command
    assert inner is not None

    async def counted(command: p.Command) -> Any:
        outcome = await inner(command)
        handled.put_nowait((command.kind, outcome.status, threading.current_thread().name))
        return outcome

    adapter.client.on_command = counted

    async def main() -> None:
        node_task = asyncio.ensure_future(node.run_async())
        await adapter.connected(WAIT_S)
        write(out / "ready.json", {"run_id": adapter.run_id})
        answers = []
        async with asyncio.timeout(WAIT_S):
            while len(answers) < args.commands:
                answers.append(await handled.get())
        write(
            out / "live.json",
            {
                "answers": answers,
                "trading_state": adapter.client.trading_state,
                "loop_thread": threading.current_thread().name,
            },
        )
        await loop.run_in_executor(None, sys.stdin.readline)
        await adapter.client.shutdown("test over")
        await node.stop_async()
        node_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node_task

    loop.run_until_complete(main())
    node.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("backtest", "offline", "live"))
    parser.add_argument("--url", default="ws://127.0.0.1:9/ws/engine/v1")
    parser.add_argument("--token", default="unreachable")
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps-before-kill", type=int, default=3)
    parser.add_argument("--steps-after-kill", type=int, default=2)
    parser.add_argument("--commands", type=int, default=2)
    args = parser.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    if args.scenario == "backtest":
        run_backtest(args)
    elif args.scenario == "live":
        run_live(args)
    else:
        run_offline(args)


if __name__ == "__main__":
    main()
