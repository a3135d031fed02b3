"""The paper engine: driven tick by tick with an in-memory client, and over a real socket."""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient
from engine_sdk.gate import OrderRejected, StateChange, TradingGate
from engine_sdk.limits import PreTradeLimits
from engine_sdk.simulator import UNIVERSE, PaperEngine
from tests.sdk.conftest import TOKEN, FakeControlPlane, a_command

T0 = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
TERMINAL = {"filled", "cancelled", "rejected"}
# Every status an order may move to from each status.
TRANSITIONS = {
    None: {"new"},
    "new": {"accepted", "rejected"},
    "accepted": {"partially_filled", "filled", "cancelled"},
    "partially_filled": {"partially_filled", "filled", "cancelled"},
}


class RecordingClient:
    """The part of EngineClient a PaperEngine uses, keeping the events in memory."""

    config = ClientConfig(max_unacked_events=1_000_000)
    backlog = 0
    error: BaseException | None = None

    def __init__(self) -> None:
        self.events: list[p.Event] = []
        self.gate = TradingGate(on_change=self._state_changed)
        self.pretrade: PreTradeLimits | None = None

    @property
    def trading_state(self) -> p.TradingState:
        return self.gate.state

    def emit(self, event: p.Event) -> int:
        seq = len(self.events) + 1
        self.events.append(msgspec.structs.replace(event, seq=seq))
        return seq

    def check_order(
        self,
        symbol: str,
        side: p.Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        *,
        price: Decimal | int | None = None,
        reference_price: Decimal | int | None = None,
        sector: str | None = None,
        liquidating: bool = False,
    ) -> None:
        self.gate.check_order(symbol, side, quantity, current_position, liquidating=liquidating)
        if self.pretrade is not None and not liquidating:
            self.pretrade.check(symbol, side, quantity, price, reference_price, sector)
            self.pretrade.record(symbol, side, quantity, price, sector)

    def _state_changed(self, change: StateChange) -> None:
        self.emit(p.StateEvent(ts=change.at, trading_state=change.new, reason=change.reason))

    def of(self, kind: type[Any], since: int = 0) -> list[Any]:
        return [e for e in self.events[since:] if isinstance(e, kind)]


def fixed_clock() -> Any:
    ticks = itertools.count()
    return lambda: T0 + timedelta(milliseconds=200 * next(ticks))


def paper_engine(seed: int = 1, **options: Any) -> tuple[PaperEngine, RecordingClient]:
    client = RecordingClient()
    options.setdefault("id_prefix", "t")
    engine = PaperEngine(client, seed=seed, clock=fixed_clock(), **options)
    return engine, client


async def command(engine: PaperEngine, client: RecordingClient, kind: Any, **params: Any):
    """Handle a command as EngineClient does: the handler acts, then the state is applied."""
    outcome: CommandOutcome = await engine.handle_command(a_command(kind, **params))
    if outcome.trading_state is not None:
        client.gate.set_state(outcome.trading_state, reason=kind)
    return outcome


def tick_until(engine: PaperEngine, condition: Any, limit: int = 2000) -> None:
    for _ in range(limit):
        if condition():
            return
        engine.tick()
    raise AssertionError(f"condition not met within {limit} ticks")


def holding_and_working(engine: PaperEngine) -> bool:
    return len(engine.positions) >= 3 and len(engine.working) >= 1


def test_ticks_with_the_same_seed_emit_the_same_events() -> None:
    first, first_client = paper_engine(seed=42)
    second, second_client = paper_engine(seed=42)
    other, other_client = paper_engine(seed=43)
    for engine in (first, second, other):
        for _ in range(300):
            engine.tick()

    assert p.encode(p.Events(events=first_client.events)) == p.encode(
        p.Events(events=second_client.events)
    )
    assert first_client.events != other_client.events


def test_every_reported_position_equals_the_sum_of_the_fills_before_it() -> None:
    engine, client = paper_engine()
    for _ in range(1000):
        engine.tick()

    ledger: dict[str, Decimal] = defaultdict(Decimal)
    reports = 0
    for event in client.events:
        if isinstance(event, p.FillEvent):
            ledger[event.symbol] += event.quantity if event.side == "buy" else -event.quantity
        elif isinstance(event, p.PositionEvent):
            reports += 1
            assert event.source == "engine"
            assert event.quantity == ledger[event.symbol], (event.seq, event.symbol)
    assert reports > 100
    assert engine.positions == {s: q for s, q in ledger.items() if q != 0}


def test_orders_move_through_valid_statuses_and_their_fills_add_up() -> None:
    engine, client = paper_engine(seed=3)
    for _ in range(1000):
        engine.tick()

    status: dict[str, str | None] = defaultdict(lambda: None)
    filled: dict[str, Decimal] = defaultdict(Decimal)
    fill_ids = [f.fill_id for f in client.of(p.FillEvent)]
    for event in client.events:
        if isinstance(event, p.FillEvent):
            assert status[event.client_order_id] in ("accepted", "partially_filled")
            filled[event.client_order_id] += event.quantity
        elif isinstance(event, p.OrderEvent):
            coid = event.client_order_id
            assert event.status in TRANSITIONS[status[coid]], (coid, status[coid], event.status)
            assert event.filled_quantity == filled[coid]
            assert event.expected_price is not None and event.expected_price > 0
            status[coid] = event.status
    assert len(fill_ids) == len(set(fill_ids)), "fill ids are unique"
    seen = {e.status for e in client.of(p.OrderEvent)}
    assert seen == {"new", "accepted", "partially_filled", "filled", "cancelled", "rejected"}
    assert {e.order_type for e in client.of(p.OrderEvent)} == {"limit", "market"}
    still_working = {coid for coid, s in status.items() if s not in TERMINAL}
    assert still_working == set(engine.working)


def test_each_simulated_fill_says_what_a_real_order_would_have_got() -> None:
    engine, client = paper_engine(seed=5)
    for _ in range(600):
        engine.tick()

    orders = {e.client_order_id: e for e in client.of(p.OrderEvent)}
    fills = client.of(p.FillEvent)
    assert fills and all(f.market_price is not None for f in fills)
    beyond = []
    for fill in fills:
        order = orders[fill.client_order_id]
        if fill.liquidity == "maker":
            # A resting order gets its own price, in the market as in the simulation.
            assert fill.market_price == order.limit_price == fill.price
            continue
        # A marketable order pays the far side of the quote: above the mid it was sent at for a
        # buy, below for a sell, by the instrument's half-spread (2.2 to 4.5 bps here).
        assert order.expected_price is not None
        signed = (fill.market_price - order.expected_price) / order.expected_price * 10_000
        signed = signed if fill.side == "buy" else -signed
        assert Decimal("2.1") <= signed <= Decimal("4.6"), (fill, order)
        beyond.append(signed)
    assert beyond


def test_a_live_mode_simulation_reports_no_market_price() -> None:
    engine, client = paper_engine(seed=5, market_prices=False)
    for _ in range(300):
        engine.tick()
    assert client.of(p.FillEvent)
    assert all(f.market_price is None for f in client.of(p.FillEvent))


def test_account_equity_is_cash_plus_positions_marked_to_market() -> None:
    engine, client = paper_engine()
    checked = 0
    for _ in range(500):
        mark = len(client.events)
        engine.tick()
        for last in client.of(p.AccountEvent, mark):
            checked += 1
            marked = sum(q * engine.prices[s] for s, q in engine.positions.items())
            assert last.equity == (engine.cash + marked).quantize(Decimal("0.01"))
            assert last.cash == engine.cash.quantize(Decimal("0.01"))
    assert checked == 100

    first = client.of(p.AccountEvent)[0]
    assert first.equity == Decimal("1000000.00")
    fees = sum(f.fee for f in client.of(p.FillEvent))
    spent = sum(
        (f.quantity * f.price if f.side == "buy" else -f.quantity * f.price)
        for f in client.of(p.FillEvent)
    )
    assert engine.cash == Decimal(1_000_000) - spent - fees


def test_it_reports_metrics_logs_and_sizes_positions_within_five_percent_of_equity() -> None:
    engine, client = paper_engine(seed=5)
    for _ in range(1000):
        engine.tick()

    names = {m.name for m in client.of(p.MetricEvent)}
    assert names == {
        "latency_ms",
        "md_latency_ms",
        "quote_age_ms",
        "cpu_pct",
        "memory_mb",
        "queue_depth",
        "broker_connected",
    }
    # The simulated broker is up while the engine runs (the pre-flight check reads it).
    assert {m.value for m in client.of(p.MetricEvent) if m.name == "broker_connected"} == {1.0}
    assert {"info", "warning", "error"} <= {e.level for e in client.of(p.LogEvent)}
    for symbol, quantity in engine.positions.items():
        # A fill of the last order may take a position a little past the cap, never far.
        assert abs(quantity) * engine.prices[symbol] < engine.equity * Decimal("0.07"), symbol


def test_a_calm_engine_trades_at_its_own_rate_with_no_broker_rejection_or_data_gap() -> None:
    engine, client = paper_engine(
        seed=5, order_probability=0.05, broker_reject_rate=0.0, data_gap_rate=0.0
    )
    busy, busy_client = paper_engine(seed=5)
    for _ in range(2000):
        engine.tick()
        busy.tick()

    orders = {o.client_order_id for o in client.of(p.OrderEvent)}
    busy_orders = {o.client_order_id for o in busy_client.of(p.OrderEvent)}
    assert 0 < len(orders) < len(busy_orders) / 3
    assert not [o for o in client.of(p.OrderEvent) if o.status == "rejected"]
    assert [o for o in busy_client.of(p.OrderEvent) if o.status == "rejected"]
    assert not [e for e in client.of(p.LogEvent) if e.level == "error"]
    assert [e for e in busy_client.of(p.LogEvent) if e.level == "error"]


@pytest.mark.parametrize("option", ["order_probability", "broker_reject_rate", "data_gap_rate"])
@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_a_rate_outside_zero_to_one_is_refused_by_name(option: str, rate: float) -> None:
    with pytest.raises(ValueError, match=f"{option} must be a probability from 0 to 1"):
        paper_engine(**{option: rate})


@pytest.mark.asyncio
async def test_a_kill_cancels_working_orders_flattens_and_halts() -> None:
    engine, client = paper_engine()
    tick_until(engine, lambda: holding_and_working(engine))
    working = set(engine.working)
    held = dict(engine.positions)
    mark = len(client.events)

    outcome = await command(engine, client, "kill")

    assert outcome.status == "succeeded"
    assert set(outcome.data["cancelled"]) == working
    assert outcome.data["traded"] == {s: str(-q) for s, q in held.items()}
    assert engine.positions == {} and engine.working == {}
    assert client.trading_state == "HALTED"
    cancelled = {
        e.client_order_id for e in client.of(p.OrderEvent, mark) if e.status == "cancelled"
    }
    assert cancelled == working
    flatten_orders = [e for e in client.of(p.OrderEvent, mark) if e.status == "filled"]
    assert {e.order_type for e in flatten_orders} == {"market"}
    reported = {e.symbol: e.quantity for e in client.of(p.PositionEvent, mark)}
    assert reported == dict.fromkeys(held, Decimal(0))
    assert client.of(p.StateEvent, mark)[-1].trading_state == "HALTED"

    mark = len(client.events)
    for _ in range(200):
        engine.tick()
    assert client.of(p.OrderEvent, mark) == [], "a halted engine sends no orders"
    assert engine.blocked_orders > 0


@pytest.mark.asyncio
async def test_a_paused_engine_only_sends_orders_that_shrink_a_position() -> None:
    engine, client = paper_engine(seed=8)
    tick_until(engine, lambda: holding_and_working(engine))
    outcome = await command(engine, client, "pause", cancel_open=True)
    assert outcome.data["cancelled"] and engine.working == {}
    before = dict(engine.positions)
    mark = len(client.events)

    for _ in range(600):
        engine.tick()

    sizes = dict(before)
    sent = [e for e in client.of(p.OrderEvent, mark) if e.status == "new"]
    assert sent, "reducing orders still go out"
    for event in client.of(p.FillEvent, mark):
        signed = event.quantity if event.side == "buy" else -event.quantity
        after = sizes.get(event.symbol, Decimal(0)) + signed
        assert abs(after) < abs(sizes[event.symbol]), event
        assert after == 0 or (after > 0) == (sizes[event.symbol] > 0), "never crosses zero"
        sizes[event.symbol] = after
    assert engine.blocked_orders > 0
    assert set(engine.positions) <= set(before)


@pytest.mark.asyncio
async def test_reduce_trades_each_position_down_to_its_target_and_leaves_the_engine_reducing() -> (
    None
):
    engine, client = paper_engine(seed=4)
    tick_until(engine, lambda: holding_and_working(engine))
    before = dict(engine.positions)
    symbol = next(iter(before))

    partial = await command(engine, client, "reduce", target_pct=50, symbols=[symbol])
    assert partial.status == "succeeded"
    assert engine.positions[symbol] == int(before[symbol] / 2)
    assert {s: q for s, q in engine.positions.items() if s != symbol} == {
        s: q for s, q in before.items() if s != symbol
    }
    assert not [o for o in engine.working.values() if o.symbol == symbol]
    assert client.trading_state == "REDUCING"

    flattened = await command(engine, client, "flatten")
    assert flattened.status == "succeeded"
    assert engine.positions == {}
    assert client.trading_state == "REDUCING"


@pytest.mark.asyncio
async def test_a_flatten_after_a_kill_without_flatten_closes_positions_and_stays_halted() -> None:
    engine, client = paper_engine()
    tick_until(engine, lambda: holding_and_working(engine))
    await command(engine, client, "kill", flatten=False)
    assert engine.positions and engine.working == {}

    outcome = await command(engine, client, "flatten")

    assert outcome.status == "succeeded"
    assert engine.positions == {}
    assert client.trading_state == "HALTED"
    # The strategy itself still cannot trade: only the command's own orders passed the gate.
    with pytest.raises(OrderRejected):
        client.check_order("AAPL", "buy", 1, 0)


@pytest.mark.asyncio
async def test_a_kill_with_orders_the_broker_will_not_cancel_reports_what_is_still_working() -> (
    None
):
    engine, client = paper_engine()
    tick_until(engine, lambda: len(engine.working) >= 2)
    stuck = engine.inject_stuck_orders(2)

    outcome = await command(engine, client, "kill")

    assert outcome.status == "partial"
    assert outcome.data["working"] == stuck
    assert "2 orders still working" in outcome.detail
    assert sorted(engine.working) == stuck
    assert client.trading_state == "HALTED"


@pytest.mark.asyncio
async def test_a_command_with_bad_parameters_fails_and_changes_nothing() -> None:
    engine, client = paper_engine()
    tick_until(engine, lambda: holding_and_working(engine))
    before, working = dict(engine.positions), set(engine.working)

    for kind, params in [("reduce", {"target_pct": 150}), ("flatten", {"symbols": "AAPL"})]:
        outcome = await command(engine, client, kind, **params)
        assert outcome.status == "failed"
        assert outcome.trading_state is None

    assert engine.positions == before and set(engine.working) == working
    assert client.trading_state == "ACTIVE"


def test_an_injected_mismatch_shows_only_in_what_the_engine_reports() -> None:
    engine, client = paper_engine()
    tick_until(engine, lambda: "AAPL" in engine.positions)
    held = engine.positions["AAPL"]

    engine.inject_position_mismatch("AAPL", 7)
    engine.tick()

    assert engine.positions["AAPL"] == held
    last = [e for e in client.of(p.PositionEvent) if e.symbol == "AAPL"][-1]
    assert last.quantity == engine.positions["AAPL"] + 7


def test_a_restarted_engine_keeps_its_book_and_never_reuses_an_order_id(tmp_path: Path) -> None:
    book = tmp_path / "book.json"
    first, first_client = paper_engine(book_path=book, id_prefix=None)
    tick_until(first, lambda: holding_and_working(first))

    second, second_client = paper_engine(seed=2, book_path=book, id_prefix=None)

    assert second.positions == first.positions
    assert second.cash == first.cash
    assert set(second.working) == set(first.working)
    for _ in range(300):
        second.tick()
    ids = [e.client_order_id for e in first_client.of(p.OrderEvent) if e.status == "new"]
    ids += [e.client_order_id for e in second_client.of(p.OrderEvent) if e.status == "new"]
    assert len(ids) == len(set(ids))
    fills = [f.fill_id for f in first_client.of(p.FillEvent) + second_client.of(p.FillEvent)]
    assert len(fills) == len(set(fills))


def test_every_symbol_of_the_universe_belongs_to_a_sector() -> None:
    engine, _ = paper_engine()
    assert set(engine.sectors.values()) == {
        "Technology",
        "Financials",
        "Energy",
        "Health Care",
        "Consumer",
    }
    assert len({i.symbol for i in UNIVERSE}) == len(UNIVERSE)


# --- over a real socket ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_running_engine_obeys_a_kill_sent_by_the_server(
    control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    engine = PaperEngine.create(
        control_plane.url,
        TOKEN,
        journal_dir=tmp_path / "journal",
        engine_options={"seed": 11, "report_every": 1},
        config=ClientConfig(batch_interval_s=0.005, backoff_initial_s=0.01, fsync=False),
    )
    client = engine.client
    assert isinstance(client, EngineClient)
    assert (client.hello.mode, client.hello.broker) == ("paper", "paper-sim")
    await client.start()
    stop = asyncio.Event()
    running = asyncio.create_task(engine.run(stop, tick_interval_s=0.005))
    await control_plane.wait_for(lambda: holding_and_working(engine), within_s=20)
    # The market stops moving, so the working orders neither fill nor expire before the kill's
    # handler runs (a few ticks may pass while the engine writes its HALTED state to disk).
    engine._volatility = dict.fromkeys(engine._volatility, 0.0)

    await control_plane.send(a_command("kill"))
    await control_plane.wait_for(lambda: len(control_plane.command_results) == 1)
    result = control_plane.command_results[0]
    # The state event follows everything the kill did (the client applies the state last).
    await control_plane.wait_for(lambda: bool(control_plane.events_of(p.StateEvent)))
    kill_seq = control_plane.events_of(p.StateEvent)[0].seq
    # The engine keeps ticking; a few more account reports show it stays flat and halted.
    await control_plane.wait_for(
        lambda: len([e for e in control_plane.events_of(p.AccountEvent) if e.seq > kill_seq]) >= 5
    )
    stop.set()
    await running
    await client.close(flush_timeout=5)

    assert result.status == "succeeded", result.detail
    assert result.trading_state == "HALTED"
    assert result.data["cancelled"] and result.data["traded"]
    assert engine.positions == {} and engine.working == {}
    orders = control_plane.events_of(p.OrderEvent)
    last_status = {e.client_order_id: e.status for e in orders}
    assert set(last_status.values()) <= TERMINAL
    assert {e.client_order_id for e in orders if e.status == "new"} == set(last_status)
    # After the halt, the only new orders are the kill's own flattening ones.
    new_after_halt = [e for e in orders if e.seq > kill_seq and e.status == "new"]
    assert len(new_after_halt) == len(result.data["traded"])
    assert {e.symbol for e in new_after_halt} == set(result.data["traded"])
    states = [e.trading_state for e in control_plane.events_of(p.StateEvent)]
    assert states == ["HALTED"]
    ledger: dict[str, Decimal] = defaultdict(Decimal)
    for fill in control_plane.events_of(p.FillEvent):
        ledger[fill.symbol] += fill.quantity if fill.side == "buy" else -fill.quantity
    assert set(ledger.values()) == {Decimal(0)}


def test_it_declares_its_instruments_first_and_books_a_future_by_its_multiplier() -> None:
    from engine_sdk.simulator import Instrument

    future = Instrument("ES", "Index", Decimal("5000.00"), 0.001, Decimal(50), "future")
    engine, client = paper_engine(universe=(*UNIVERSE[:2], future), order_probability=0)
    engine.tick()
    declared = {e.symbol: e for e in client.of(p.InstrumentEvent)}
    assert set(declared) == {"AAPL", "MSFT", "ES"}
    es = declared["ES"]
    assert (es.asset_class, es.multiplier, es.currency, es.sector) == (
        "future",
        Decimal(50),
        "USD",
        "Index",
    )
    assert declared["AAPL"].multiplier == 1
    # Each declaration is within the protocol's bounds, and comes before any order.
    for event in declared.values():
        p.validate_event(msgspec.structs.replace(event, seq=1))
    assert not client.of(p.OrderEvent)
    # 2 contracts bought at 5,000: 500,000 of cash and of gross exposure, not 10,000.
    engine._book_fill("ES", "buy", Decimal(2), Decimal(5000), Decimal(0))
    engine.prices["ES"] = Decimal(5000)
    assert engine.cash == Decimal(500_000)
    assert engine.gross_exposure == Decimal(500_000)
    assert engine.equity == Decimal(1_000_000)
