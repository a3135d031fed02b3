"""The demo's recorded past: fifteen days of paper trading for one engine, so that a newcomer
sees an engine whose paper -> shadow gate passes (docs/going-live.md) and can promote it.

Only ``manage.py simulate --seed-history`` (which ``up --demo`` passes) calls this, once, for a
paper engine it has just created. What it writes is what a well-behaved paper engine would
have left behind, stored the way the gateway stores a live engine's frames
(controlplane.ingest.store.ingest_events, each frame with the time it was received):

- a backtest baseline (a year of daily equity, its return, win rate and trades per day);
- the stage history: registered at paper fifteen days ago;
- on every weekday, round trips (a market buy and its sell a few minutes later, each an order
  accepted then filled) whose count, win rate and total return agree with the baseline, two
  orders rejected by the broker over the period, account snapshots every two hours, the
  engine's position reports and health metrics, info and warning logs;
- one disconnect from the control plane four days ago: seven minutes of events held in the
  engine's journal and delivered in one frame after it reconnected, no seq lost.

The period ends flat at the simulator's starting cash, so the live engine that carries on
(engine_sdk.simulator.PaperEngine, a fresh book) agrees with the ledger.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import transaction

from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, StageChange
from dashboard.models import Baseline
from engine_sdk import protocol as p
from engine_sdk.simulator import FEE_PER_SHARE, MIN_FEE, STARTING_CASH, UNIVERSE
from golive import divergence

DAYS = 15
BASELINE_NAME = "bt 2026-11 momentum v2 (demo)"
ANNUAL_RETURN_PCT = 40.0
WIN_RATE_PCT = 56.0
TRADES_PER_DAY = 80  # fills per weekday: 40 round trips
REJECTED_ORDERS = 2
DISCONNECT_DAYS_AGO = 4
DISCONNECT = timedelta(minutes=7)
# A frame reaches the control plane this long after its last event (a live engine's is ~20 ms).
DELIVERY = timedelta(milliseconds=40)
CENT = Decimal("0.01")
TRADING_DAYS_PER_YEAR = 252


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def _fee(quantity: int) -> Decimal:
    return max(_money(quantity * FEE_PER_SHARE), MIN_FEE)


def weekdays_between(start: datetime, end: datetime) -> int:
    """Dates Monday to Friday (UTC) that [start, end) touches, as the gates count them."""
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return sum(
        1 for n in range((last - first).days + 1) if (first + timedelta(days=n)).weekday() < 5
    )


def deliver(engine_id: int, events: list[p.Event], outage: tuple[datetime, datetime]) -> int:
    """Number ``events`` in time order and store them as the frames the control plane would have
    received: a frame every time the engine sent (its events within DELIVERY of each other),
    except that what happened during ``outage`` waited in the journal and came in one frame when
    the engine reconnected. Returns the last seq."""
    events.sort(key=lambda event: event.ts)
    lost_at, back = outage
    frame: list[p.Event] = []
    held: list[p.Event] = []

    def store(batch: list[p.Event], received_at: datetime) -> None:
        result = ingest_events(engine_id=engine_id, events=batch, now=received_at)
        if result.errors or result.stored != len(batch):
            raise RuntimeError(f"the demo history was refused: {result.errors}")

    for seq, event in enumerate(events, start=1):
        event.seq = seq
        if lost_at <= event.ts < back:
            if frame:
                store(frame, frame[-1].ts + DELIVERY)
                frame = []
            held.append(event)
            continue
        if held:
            store(held, back)
            held = []
        if frame and event.ts - frame[0].ts > DELIVERY:
            store(frame, frame[-1].ts + DELIVERY)
            frame = []
        frame.append(event)
    if held:
        store(held, back)
    if frame:
        store(frame, frame[-1].ts + DELIVERY)
    return len(events)


@dataclass
class _Book:
    cash: Decimal
    prices: dict[str, Decimal]
    order_no: int = 0

    def next_id(self) -> str:
        self.order_no += 1
        return f"hist-{self.order_no}"


def _baseline_curve(end: datetime, rng: random.Random) -> list[list[str]]:
    """A year and a bit of daily backtest equity growing at ANNUAL_RETURN_PCT, gently noisy."""
    daily = (1 + ANNUAL_RETURN_PCT / 100) ** (1 / 365) - 1
    equity = 1_000_000.0
    curve = []
    for n in range(400, 0, -1):
        equity *= 1 + daily + rng.gauss(0, 0.004)
        curve.append([(end - timedelta(days=n)).isoformat(), f"{equity:.2f}"])
    return curve


def _trip_results(trips: int, target: Decimal, rng: random.Random) -> list[Decimal]:
    """Each round trip's P&L after fees: WIN_RATE_PCT of them winners, summing to ``target``."""
    wins = round(trips * WIN_RATE_PCT / 100)
    signs = [True] * wins + [False] * (trips - wins)
    rng.shuffle(signs)
    # A loser loses 0.8 of what a winner gains; the winners' size makes the total.
    win = target / (Decimal(wins) - Decimal("0.8") * (trips - wins))
    return [_money(win if won else -win * Decimal("0.8")) for won in signs]


def seeded(names: list[str]) -> set[str]:
    """Which of these engines were given the demo's recorded past."""
    rows = Baseline.objects.filter(engine__name__in=names, name=BASELINE_NAME)
    return set(rows.values_list("engine__name", flat=True))


@transaction.atomic
def seed_paper_history(engine: Engine, now: datetime, *, seed: int = 7) -> None:
    """Write ``engine``'s last DAYS days of paper trading, ending just before ``now``."""
    if engine.last_seq:
        raise ValueError(f"engine {engine.name} has reported events already; its past stands")
    rng = random.Random(seed)
    start = now - timedelta(days=DAYS)
    Engine.objects.filter(pk=engine.pk).update(created_at=start)
    changes = StageChange.objects.filter(engine=engine)
    if changes.count() != 1 or changes.get().to_stage != "paper":
        raise ValueError(f"engine {engine.name} is not a new paper engine")
    changes.update(
        at=start,
        reason="created with the demo's recorded past (simulate --seed-history): fifteen days of "
        "paper trading stored as the engine would have sent them",
    )
    # The gates count the weekdays from the stage's start to now; the period is to end at the
    # simulator's starting cash, so it opens that much lower.
    expected = ANNUAL_RETURN_PCT / 100 * weekdays_between(start, now) / TRADING_DAYS_PER_YEAR
    opening = _money(STARTING_CASH / Decimal(1 + expected))
    Baseline.objects.create(
        engine=engine,
        name=BASELINE_NAME,
        expected_annual_return_pct=ANNUAL_RETURN_PCT,
        sharpe=1.8,
        trades_per_day=TRADES_PER_DAY,
        win_rate_pct=WIN_RATE_PCT,
        equity_curve=_baseline_curve(start, rng),
        notes="Seeded with the demo's recorded history (manage.py simulate --seed-history).",
    )

    days = [start.date() + timedelta(days=n) for n in range(DAYS + 1)]
    trading = [d for d in days[1:-1] if d.weekday() < 5]  # whole weekdays inside the period
    trip_count = len(trading) * TRADES_PER_DAY // 2
    results = iter(_trip_results(trip_count, STARTING_CASH - opening, rng))
    rejected_on = {trading[len(trading) // 3], trading[2 * len(trading) // 3]}
    # The disconnect: in the afternoon of a weekday some days ago, in the middle of trading.
    outage_day = [d for d in trading if d <= (now - timedelta(days=DISCONNECT_DAYS_AGO)).date()][-1]
    lost_at = datetime(outage_day.year, outage_day.month, outage_day.day, 16, 37, tzinfo=UTC)
    outage = (lost_at, lost_at + DISCONNECT)

    events: list[p.Event] = []
    book = _Book(cash=opening, prices={i.symbol: i.price for i in UNIVERSE})
    events.append(
        p.LogEvent(
            ts=start + timedelta(seconds=5),
            level="info",
            message="paper engine started (momentum)",
            context={"equity": str(opening)},
        )
    )
    events.append(
        p.LogEvent(
            ts=lost_at + timedelta(seconds=1),
            level="warning",
            message="control plane connection lost; events kept in the journal",
        )
    )
    events.append(
        p.LogEvent(
            ts=outage[1] + timedelta(seconds=1),
            level="info",
            message="reconnected to the control plane; the journal's events were resent",
            context={"disconnected_s": int(DISCONNECT.total_seconds())},
        )
    )
    trips = TRADES_PER_DAY // 2
    step = timedelta(minutes=390) / (trips + 1)
    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        session = midnight + timedelta(hours=14, minutes=30)  # 9:30 in New York
        is_trading = day in trading
        for hour in range(0, 24, 2):
            at = midnight + timedelta(hours=hour, minutes=1)
            # While trading, the book is never flat between two snapshots: only outside.
            if start < at < now and not (is_trading and hour >= 14):
                _account(events, book, at)
                _health(events, at, rng)
        if not is_trading:
            continue
        for n in range(trips):
            at = session + step * (n + 1)
            _round_trip(events, book, at, next(results), rng)
            if n % 8 == 0:
                _health(events, at + timedelta(minutes=6), rng)
        if day in rejected_on:
            _rejected(events, book, session + timedelta(minutes=200, seconds=30))
        close = session + timedelta(minutes=391)
        _positions(events, book, close)
        for hour in range(22, 24, 2):
            _account(events, book, midnight + timedelta(hours=hour, minutes=1))
        _account(events, book, close)
        events.append(
            p.LogEvent(
                ts=close + timedelta(seconds=1),
                level="info",
                message=f"session closed flat: {trips} round trips",
                context={"equity": str(book.cash)},
            )
        )
    deliver(engine.pk, events, outage)
    # Its divergence log, as the nightly task would have written it day by day.
    engine.refresh_from_db()
    for day in trading:
        divergence.record_day(engine, day)


def _round_trip(
    events: list[p.Event], book: _Book, at: datetime, result: Decimal, rng: random.Random
) -> None:
    """A market buy, and its sell four minutes later, that together make ``result`` after fees."""
    symbol = rng.choice(UNIVERSE).symbol
    price = _money(book.prices[symbol] * Decimal(1 + rng.gauss(0, 0.002)))
    book.prices[symbol] = price
    quantity = max(int(Decimal(rng.uniform(3000, 9000)) / price), 1)
    fees = _fee(quantity) * 2
    exit_price = _money(price + (result + fees) / quantity)
    for side, fill_price, ts in (
        ("buy", price, at),
        ("sell", exit_price, at + timedelta(minutes=4)),
    ):
        _order(events, book, symbol, side, quantity, fill_price, ts)
    # Rounding to the cent leaves up to half a cent a share; the cash says what really happened.
    book.prices[symbol] = exit_price


def _order(
    events: list[p.Event],
    book: _Book,
    symbol: str,
    side: p.Side,
    quantity: int,
    price: Decimal,
    ts: datetime,
) -> None:
    order_id = book.next_id()
    common = {
        "client_order_id": order_id,
        "symbol": symbol,
        "side": side,
        "order_type": "market",
        "quantity": Decimal(quantity),
        "expected_price": price,
        "broker_order_id": f"PB{order_id}",
    }
    events.append(p.OrderEvent(ts=ts, status="accepted", **common))
    fee = _fee(quantity)
    fill_ts = ts + timedelta(milliseconds=8)
    events.append(
        p.FillEvent(
            ts=fill_ts,
            fill_id=f"{order_id}-1",
            client_order_id=order_id,
            symbol=symbol,
            side=side,
            quantity=Decimal(quantity),
            price=price,
            fee=fee,
            liquidity="taker",
        )
    )
    events.append(
        p.OrderEvent(
            ts=fill_ts,
            status="filled",
            filled_quantity=Decimal(quantity),
            avg_fill_price=price,
            **common,
        )
    )
    value = price * quantity
    book.cash += (value if side == "sell" else -value) - fee


def _rejected(events: list[p.Event], book: _Book, ts: datetime) -> None:
    order_id = book.next_id()
    reason = "price outside the exchange collar"
    common = {
        "client_order_id": order_id,
        "symbol": "NVDA",
        "side": "buy",
        "order_type": "market",
        "quantity": Decimal(40),
        "expected_price": book.prices["NVDA"],
    }
    events.append(p.OrderEvent(ts=ts, status="new", **common))
    events.append(p.OrderEvent(ts=ts, status="rejected", reject_reason=reason, **common))
    events.append(
        p.LogEvent(ts=ts, level="warning", message=f"broker rejected {order_id}: {reason}")
    )


def _positions(events: list[p.Event], book: _Book, ts: datetime) -> None:
    for instrument in UNIVERSE:
        events.append(
            p.PositionEvent(ts=ts, symbol=instrument.symbol, quantity=Decimal(0), source="engine")
        )


def _account(events: list[p.Event], book: _Book, ts: datetime) -> None:
    events.append(p.AccountEvent(ts=ts, equity=book.cash, cash=book.cash))


def _health(events: list[p.Event], ts: datetime, rng: random.Random) -> None:
    for name, value in (
        ("latency_ms", rng.lognormvariate(1.1, 0.3)),
        ("quote_age_ms", rng.uniform(20, 200)),
        ("broker_connected", 1.0),
    ):
        events.append(p.MetricEvent(ts=ts, name=name, value=round(value, 3)))
