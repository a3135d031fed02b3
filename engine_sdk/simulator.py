"""A paper trading engine: random-walk prices, a small strategy and a simulated broker.

``PaperEngine`` trades a small equity universe through an ``EngineClient`` and reports what a real
engine reports: orders and their status changes, fills, its own positions, account equity, health
metrics, logs. Every order passes the client's trading-state gate and pre-trade limits first; an
order they refuse never reaches the simulated broker, and one a limit refuses is reported as a
rejected order. ``submit_manual`` places an order by hand through the same path. Commands (pause,
reduce, flatten, cancel_all, kill...) act on the simulated book for real.

One ``tick()`` is one simulated step; with a seed (and a fixed clock) the events it emits are the
same on every run. ``run()`` ticks on a timer until told to stop.

The book (cash, positions, working orders, the order counter) is kept in a small JSON file when a
``book_path`` is given, so a restarted engine keeps the positions the server's ledger knows about
and never reuses an order or fill id. A crash can still leave the file one tick apart from the
journal; the server then shows a position mismatch, as it would for a real engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import msgspec

from engine_sdk import __version__
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient, HelloInfo
from engine_sdk.gate import OrderRejected
from engine_sdk.limits import LimitRejected
from engine_sdk.protocol import Command, Side, TradingState, utc_now

__all__ = [
    "STRATEGIES",
    "UNIVERSE",
    "Instrument",
    "PaperEngine",
    "SimClient",
    "SimOrder",
    "Strategy",
]

log = logging.getLogger(__name__)

Strategy = Literal["momentum", "mean-reversion"]
STRATEGIES: Final[tuple[Strategy, ...]] = ("momentum", "mean-reversion")


@dataclass(frozen=True)
class Instrument:
    symbol: str
    sector: str
    price: Decimal  # where the random walk starts
    volatility: float  # standard deviation of the log return per tick
    # Currency per point per unit held (a future's contract size); declared to the control
    # plane on the first tick with the rest of the instrument (an instrument event).
    multiplier: Decimal = Decimal(1)
    asset_class: p.AssetClass = "equity"


UNIVERSE: Final = (
    Instrument("AAPL", "Technology", Decimal("190.00"), 0.0020),
    Instrument("MSFT", "Technology", Decimal("420.00"), 0.0018),
    Instrument("NVDA", "Technology", Decimal("130.00"), 0.0035),
    Instrument("JPM", "Financials", Decimal("200.00"), 0.0018),
    Instrument("GS", "Financials", Decimal("480.00"), 0.0022),
    Instrument("XOM", "Energy", Decimal("115.00"), 0.0020),
    Instrument("CVX", "Energy", Decimal("155.00"), 0.0020),
    Instrument("JNJ", "Health Care", Decimal("155.00"), 0.0012),
    Instrument("PFE", "Health Care", Decimal("28.00"), 0.0018),
    Instrument("AMZN", "Consumer", Decimal("185.00"), 0.0025),
)

ZERO: Final = Decimal(0)
CENT: Final = Decimal("0.01")
AVG_PLACES: Final = Decimal("0.0001")
MARKET_PLACES: Final = Decimal("0.0001")
STARTING_CASH: Final = Decimal("1000000")
FEE_PER_SHARE: Final = Decimal("0.0035")
MIN_FEE: Final = Decimal("0.35")
# Sizing: each order is 0.2-1% of equity, a position at most 5%, gross exposure at most 2x.
ORDER_PCT: Final = (0.002, 0.01)
MAX_POSITION_PCT: Final = Decimal("0.05")
MAX_GROSS_LEVERAGE: Final = Decimal(2)
ORDER_PROBABILITY: Final = 0.35
LIMIT_ORDER_SHARE: Final = 0.6
BROKER_REJECT_RATE: Final = 0.03
# A tick now and then loses market data on a symbol (an error-level log).
DATA_GAP_RATE: Final = 0.004
# A resting limit order the market has not reached after this many ticks is cancelled.
ORDER_TTL_TICKS: Final = 25
BROKER_REJECT_REASONS: Final = (
    "price outside the exchange collar",
    "exchange throttle: too many messages",
    "symbol temporarily halted",
)


class SimClient(Protocol):
    """What PaperEngine needs of its client; EngineClient is the real one."""

    @property
    def trading_state(self) -> TradingState: ...

    @property
    def backlog(self) -> int: ...

    @property
    def error(self) -> BaseException | None: ...

    @property
    def config(self) -> ClientConfig: ...

    def emit(self, event: p.Event) -> int: ...

    def check_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        *,
        price: Decimal | int | None = None,
        reference_price: Decimal | int | None = None,
        sector: str | None = None,
        liquidating: bool = False,
    ) -> None: ...


class SimOrder(msgspec.Struct, kw_only=True):
    client_order_id: str
    symbol: str
    side: Side
    order_type: Literal["market", "limit"]
    quantity: Decimal
    expected_price: Decimal
    limit_price: Decimal | None = None
    status: p.OrderStatus = "new"
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    fills: int = 0
    broker_order_id: str | None = None
    reject_reason: str | None = None
    placed_tick: int = 0

    @property
    def remaining(self) -> Decimal:
        return self.quantity - self.filled

    @property
    def avg_fill_price(self) -> Decimal | None:
        return (self.notional / self.filled).quantize(AVG_PLACES) if self.filled else None


class _Book(msgspec.Struct, kw_only=True):
    id_prefix: str
    next_order_no: int = 1
    ticks: int = 0
    cash: Decimal
    positions: dict[str, Decimal] = {}
    avg_prices: dict[str, Decimal] = {}
    prices: dict[str, Decimal] = {}
    working: list[SimOrder] = []


def _signed(side: Side, quantity: Decimal) -> Decimal:
    return quantity if side == "buy" else -quantity


def _reducing_side(position: Decimal) -> Side:
    return "sell" if position > 0 else "buy"


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT)


class PaperEngine:
    def __init__(
        self,
        client: SimClient,
        *,
        strategy: Strategy = "momentum",
        seed: int | str | None = None,
        starting_cash: Decimal = STARTING_CASH,
        universe: Iterable[Instrument] = UNIVERSE,
        id_prefix: str | None = None,
        report_every: int = 5,
        book_path: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] = utc_now,
        order_probability: float = ORDER_PROBABILITY,
        broker_reject_rate: float = BROKER_REJECT_RATE,
        data_gap_rate: float = DATA_GAP_RATE,
        market_prices: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")
        if report_every < 1:
            raise ValueError("report_every must be at least 1")
        for name, rate in (
            ("order_probability", order_probability),
            ("broker_reject_rate", broker_reject_rate),
            ("data_gap_rate", data_gap_rate),
        ):
            if not 0 <= rate <= 1:
                raise ValueError(f"{name} must be a probability from 0 to 1, not {rate!r}")
        self.order_probability = order_probability
        self.broker_reject_rate = broker_reject_rate
        self.data_gap_rate = data_gap_rate
        self.client = client
        self.strategy = strategy
        self.universe = tuple(universe)
        self.sectors = {i.symbol: i.sector for i in self.universe}
        self.report_every = report_every
        self.book_path = Path(book_path) if book_path is not None else None
        self._rng = random.Random(seed)
        self._clock = clock
        self._volatility = {i.symbol: i.volatility for i in self.universe}
        self._multipliers = {i.symbol: i.multiplier for i in self.universe}
        # Its fills are simulated (paper, shadow): each says what a real order would have got, the
        # far side of the quote, for the control plane to hold against the modelled slippage.
        # The quote is the mid (its price) and a half-spread that grows with the instrument's
        # volatility: 2.2 bps for the calmest of the universe, 4.5 for the liveliest.
        self.market_prices = market_prices
        self._half_spread = {
            i.symbol: Decimal(1 + i.volatility * 1000) / 10_000 for i in self.universe
        }

        book = self._load_book()
        if book is None:
            book = _Book(
                id_prefix=id_prefix or uuid.uuid4().hex[:8],
                cash=starting_cash,
                prices={i.symbol: i.price for i in self.universe},
            )
        self.id_prefix = book.id_prefix
        self.cash = book.cash
        self.ticks = book.ticks
        self.prices = {i.symbol: book.prices.get(i.symbol, i.price) for i in self.universe}
        self._positions = dict(book.positions)
        self._avg_prices = dict(book.avg_prices)
        self._next_order_no = book.next_order_no
        self.working: dict[str, SimOrder] = {o.client_order_id: o for o in book.working}
        self._trend = {s: float(price) for s, price in self.prices.items()}
        # Added to what the engine reports (never to its book): a mismatch for demos and tests.
        self._position_skew: dict[str, Decimal] = {}
        # Working orders the simulated broker refuses to cancel (see inject_stuck_orders).
        self.stuck_orders: set[str] = set()
        self.blocked_orders = 0
        self.limit_rejected_orders = 0
        self._blocked_in_state: TradingState | None = None
        self._memory_mb = 240.0
        self._book_lock = threading.Lock()
        self._started = False

    @classmethod
    def create(
        cls,
        url: str,
        token: str,
        *,
        journal_dir: str | os.PathLike[str],
        account: str = "paper",
        strategy: Strategy = "momentum",
        hello: HelloInfo | None = None,
        engine_options: dict[str, Any] | None = None,
        **client_options: Any,
    ) -> PaperEngine:
        """An engine with its own EngineClient, whose commands it handles.

        The book is kept beside the client's journal. ``engine_options`` go to PaperEngine,
        everything else to EngineClient.
        """
        engine: PaperEngine | None = None

        async def on_command(command: Command) -> CommandOutcome:
            assert engine is not None
            return await engine.handle_command(command)

        client = EngineClient(
            url,
            token,
            journal_dir=journal_dir,
            hello=hello
            or HelloInfo(
                engine_build=f"paper-sim/{__version__}",
                config_hash=strategy,
                mode="paper",
                broker="paper-sim",
                account=account,
            ),
            on_command=on_command,
            **client_options,
        )
        options = {"book_path": Path(journal_dir) / "paper_book.json", **(engine_options or {})}
        engine = cls(client, strategy=strategy, **options)
        return engine

    # --- the book ------------------------------------------------------------------------------

    @property
    def positions(self) -> dict[str, Decimal]:
        """Open positions, signed (negative is short)."""
        return {s: q for s, q in self._positions.items() if q != 0}

    @property
    def market_value(self) -> Decimal:
        mult = self._multipliers
        return sum((q * self.prices[s] * mult[s] for s, q in self._positions.items()), ZERO)

    @property
    def gross_exposure(self) -> Decimal:
        mult = self._multipliers
        return sum((abs(q) * self.prices[s] * mult[s] for s, q in self._positions.items()), ZERO)

    @property
    def equity(self) -> Decimal:
        return self.cash + self.market_value

    def inject_position_mismatch(self, symbol: str, quantity: Decimal | int) -> None:
        """Report ``symbol`` off by ``quantity`` from now on, as a broken engine would."""
        self._position_skew[symbol] = Decimal(quantity)
        self._report_positions(self._clock(), {symbol})

    def inject_stuck_orders(self, count: int) -> list[str]:
        """Make up to ``count`` working orders uncancellable, as a broker that lost them would.

        Commands that cancel them then report them as still working (a partial result).
        """
        stuck = sorted(self.working)[:count]
        self.stuck_orders.update(stuck)
        return stuck

    # --- stepping ------------------------------------------------------------------------------

    def tick(self) -> None:
        """One simulated step: prices move, orders work, the strategy trades, reports go out."""
        now = self._clock()
        self.ticks += 1
        if not self._started:
            self._started = True
            self._declare_instruments(now)
            self._log(now, "info", f"paper engine started ({self.strategy})", equity=self.equity)
        self._move_prices()
        changed = self._work_orders(now)
        if self._rng.random() < self.order_probability:
            changed |= self._trade(now)
        full_report = self.ticks % self.report_every == 1 or self.report_every == 1
        if full_report:
            changed |= set(self.positions) | set(self._position_skew)
        self._report_positions(now, changed)
        if full_report:
            self._report_account(now)
            self._report_metrics(now)
        if self._rng.random() < self.data_gap_rate:
            symbol = self._rng.choice(self.universe).symbol
            self._log(now, "error", f"market data gap on {symbol}; resubscribed", symbol=symbol)
        self._save_book()

    async def run(self, stop: asyncio.Event, tick_interval_s: float = 0.2) -> None:
        """Tick every ``tick_interval_s`` until ``stop`` is set.

        Raises the client's error if it stops for good (bad token, replaced): nothing the engine
        does could be reported any more.
        """
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        skipping = False
        while not stop.is_set():
            if self.client.error is not None:
                raise self.client.error
            # A real engine stops trading when it cannot report; events must not be dropped.
            if self.client.backlog >= self.client.config.max_unacked_events // 2:
                if not skipping:
                    log.warning("paper engine: %d events unsent; not trading", self.client.backlog)
                skipping = True
            else:
                skipping = False
                self.tick()
            next_at = max(next_at + tick_interval_s, loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_at - loop.time()):
                    await stop.wait()
        self._save_book()

    def _move_prices(self) -> None:
        for symbol, price in self.prices.items():
            moved = float(price) * math.exp(self._rng.gauss(0.0, self._volatility[symbol]))
            self.prices[symbol] = Decimal(f"{max(moved, 0.01):.2f}")
            self._trend[symbol] = 0.9 * self._trend[symbol] + 0.1 * moved

    def _work_orders(self, now: datetime) -> set[str]:
        changed: set[str] = set()
        for order in list(self.working.values()):
            price = self.prices[order.symbol]
            limit = order.limit_price
            assert limit is not None  # only limit orders rest
            if (order.side == "buy" and price <= limit) or (
                order.side == "sell" and price >= limit
            ):
                # A resting order gets its own price, in the market as here.
                self._fill(
                    order, self._fill_size(order.remaining), limit, now, "maker", market=limit
                )
                changed.add(order.symbol)
            elif self.ticks - order.placed_tick >= ORDER_TTL_TICKS:
                self._cancel(order, now)
        return changed

    def _fill_size(self, remaining: Decimal) -> Decimal:
        if remaining < 2 or self._rng.random() < 0.5:
            return remaining
        part = int(remaining * Decimal(self._rng.uniform(0.25, 0.75)))
        return Decimal(max(part, 1))

    def _trade(self, now: datetime) -> set[str]:
        symbol = self._rng.choice(self.universe).symbol
        price = self.prices[symbol]
        rising = float(price) > self._trend[symbol]
        side: Side = "buy" if rising == (self.strategy == "momentum") else "sell"
        equity = self.equity
        notional = equity * Decimal(self._rng.uniform(*ORDER_PCT))
        quantity = Decimal(max(int(notional / price), 1))
        position = self._positions.get(symbol, ZERO)
        cap = Decimal(int(equity * MAX_POSITION_PCT / price))
        if abs(position + _signed(side, quantity)) > cap and position != 0:
            # At the cap the strategy takes some off instead of adding.
            side = _reducing_side(position)
            quantity = min(quantity, abs(position))
        if self._rng.random() < LIMIT_ORDER_SHARE:
            # Mostly passive, now and then marketable.
            offset = Decimal(self._rng.uniform(-0.0005, 0.002))
            limit = price * (1 - offset) if side == "buy" else price * (1 + offset)
            order_type: Literal["market", "limit"] = "limit"
            limit_price: Decimal | None = max(_money(limit), CENT)
        else:
            order_type, limit_price = "market", None
        state = self.client.trading_state
        if state == "ACTIVE":
            self._blocked_in_state = None
        order = self._place(symbol, side, quantity, order_type, limit_price, now)
        if isinstance(order, str):
            return set()
        return {symbol} if order.filled else set()

    def submit_manual(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        *,
        order_type: Literal["market", "limit"] = "market",
        limit_price: Decimal | None = None,
    ) -> SimOrder | str:
        """Place an order by hand, through the same gate and pre-trade limits as the strategy's.

        Returns the order sent to the simulated broker (which may still reject it), or the
        reason the engine refused it. A limit's refusal is also reported as a rejected order.
        """
        if symbol not in self.prices:
            raise ValueError(f"{symbol!r} is not in this engine's universe")
        if order_type == "limit" and limit_price is None:
            raise ValueError("a limit order needs a limit_price")
        if order_type == "market" and limit_price is not None:
            raise ValueError("a market order has no limit_price")
        now = self._clock()
        order = self._place(symbol, side, Decimal(quantity), order_type, limit_price, now)
        if not isinstance(order, str):
            self._report_positions(now, {order.symbol} if order.filled else set())
        self._save_book()
        return order

    def _place(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        order_type: Literal["market", "limit"],
        limit_price: Decimal | None,
        now: datetime,
    ) -> SimOrder | str:
        """Check a new order with the client, then send it; the refusal's reason if refused."""
        state = self.client.trading_state
        try:
            self.client.check_order(
                symbol,
                side,
                quantity,
                self._gate_position(symbol),
                price=limit_price,
                reference_price=self.prices[symbol],
                sector=self.sectors.get(symbol),
            )
        except LimitRejected as exc:
            self._reject_by_limit(symbol, side, quantity, order_type, limit_price, now, exc)
            return exc.reason
        except OrderRejected as exc:
            self.blocked_orders += 1
            if self._blocked_in_state != state:
                # Once per spell in a state, or a paused engine would log on every tick.
                self._blocked_in_state = state
                self._log(now, "info", f"order held back by the gate: {exc.reason}", state=state)
            return exc.reason
        return self._submit(symbol, side, quantity, order_type, limit_price, now)

    def _reject_by_limit(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        order_type: Literal["market", "limit"],
        limit_price: Decimal | None,
        now: datetime,
        exc: LimitRejected,
    ) -> None:
        # Reported like any rejected order (it never reached the broker), so the server counts it.
        self.limit_rejected_orders += 1
        number = self._next_order_no
        self._next_order_no += 1
        order = SimOrder(
            client_order_id=f"{self.id_prefix}-{number}",
            symbol=symbol,
            side=side,
            order_type=order_type,
            quantity=quantity,
            limit_price=limit_price,
            expected_price=self.prices[symbol],
            status="rejected",
            reject_reason=exc.reason[:1024],
            placed_tick=self.ticks,
        )
        self._emit_order(order, now)
        self._log(
            now,
            "warning",
            f"order {order.client_order_id} rejected by a pre-trade limit: {exc.reason}",
            limit_id=exc.limit_id,
            limit_kind=exc.limit_kind,
        )

    def _gate_position(self, symbol: str) -> Decimal:
        # The gate wants the position net of working orders that already reduce it, so that two
        # reducing orders cannot together cross zero.
        position = self._positions.get(symbol, ZERO)
        net = position
        for order in self.working.values():
            signed = _signed(order.side, order.remaining)
            if order.symbol == symbol and position != 0 and (signed > 0) != (position > 0):
                net += signed
        return net

    # --- the simulated broker ------------------------------------------------------------------

    def _submit(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        order_type: Literal["market", "limit"],
        limit_price: Decimal | None,
        now: datetime,
        *,
        forced: bool = False,
    ) -> SimOrder:
        """Send an order the gate allowed; ``forced`` orders (from commands) fill in full."""
        number = self._next_order_no
        self._next_order_no += 1
        price = self.prices[symbol]
        order = SimOrder(
            client_order_id=f"{self.id_prefix}-{number}",
            symbol=symbol,
            side=side,
            order_type=order_type,
            quantity=quantity,
            limit_price=limit_price,
            expected_price=price,
            placed_tick=self.ticks,
        )
        self._emit_order(order, now)
        reason = None if forced else self._broker_reject_reason(order)
        if reason is not None:
            order.status, order.reject_reason = "rejected", reason
            self._emit_order(order, now)
            self._log(now, "warning", f"broker rejected {order.client_order_id}: {reason}")
            return order
        order.status, order.broker_order_id = "accepted", f"PB{self.id_prefix}{number}"
        self._emit_order(order, now)
        if order_type == "market":
            while order.remaining:
                part = order.remaining if forced else self._fill_size(order.remaining)
                slip = price * Decimal(self._rng.uniform(0, 0.0005))
                fill_price = max(_money(price + slip if side == "buy" else price - slip), CENT)
                self._fill(order, part, fill_price, now, "taker", market=self._touch(symbol, side))
        elif limit_price is not None and (
            (side == "buy" and limit_price >= price) or (side == "sell" and limit_price <= price)
        ):
            self._fill(
                order,
                self._fill_size(quantity),
                price,
                now,
                "taker",
                market=self._touch(symbol, side),
            )
        if order.remaining and order.status in ("accepted", "partially_filled"):
            self.working[order.client_order_id] = order
        return order

    def _broker_reject_reason(self, order: SimOrder) -> str | None:
        position = self._positions.get(order.symbol, ZERO)
        after = position + _signed(order.side, order.quantity)
        added = (abs(after) - abs(position)) * self.prices[order.symbol]
        added *= self._multipliers[order.symbol]
        if added > 0 and self.gross_exposure + added > self.equity * MAX_GROSS_LEVERAGE:
            return "insufficient buying power"
        if self._rng.random() < self.broker_reject_rate:
            return self._rng.choice(BROKER_REJECT_REASONS)
        return None

    def _fill(
        self,
        order: SimOrder,
        quantity: Decimal,
        price: Decimal,
        now: datetime,
        liquidity: Literal["maker", "taker"],
        *,
        market: Decimal,
    ) -> None:
        fee = max(_money(quantity * FEE_PER_SHARE), MIN_FEE)
        order.fills += 1
        order.filled += quantity
        order.notional += quantity * price
        order.status = "filled" if order.remaining == 0 else "partially_filled"
        self.client.emit(
            p.FillEvent(
                ts=now,
                fill_id=f"{order.client_order_id}-{order.fills}",
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side,
                quantity=quantity,
                price=price,
                fee=fee,
                liquidity=liquidity,
                market_price=market if self.market_prices else None,
            )
        )
        self._book_fill(order.symbol, order.side, quantity, price, fee)
        self._emit_order(order, now)
        if order.status == "filled":
            self.working.pop(order.client_order_id, None)

    def _touch(self, symbol: str, side: Side) -> Decimal:
        """The far side of the quote: what a real marketable order would pay or get now."""
        mid = self.prices[symbol]
        half = mid * self._half_spread[symbol]
        return (mid + half if side == "buy" else mid - half).quantize(MARKET_PLACES)

    def _book_fill(
        self, symbol: str, side: Side, quantity: Decimal, price: Decimal, fee: Decimal
    ) -> None:
        signed = _signed(side, quantity)
        self.cash -= signed * price * self._multipliers[symbol] + fee
        old = self._positions.get(symbol, ZERO)
        new = old + signed
        avg = self._avg_prices.get(symbol, ZERO)
        if old == 0 or (old > 0) == (signed > 0):
            avg = ((abs(old) * avg + quantity * price) / abs(new)).quantize(AVG_PLACES)
        elif new == 0:
            avg = ZERO
        elif (new > 0) != (old > 0):
            avg = price
        self._positions[symbol] = new
        self._avg_prices[symbol] = avg

    def _cancel(self, order: SimOrder, now: datetime) -> None:
        order.status = "cancelled"
        self.working.pop(order.client_order_id, None)
        self._emit_order(order, now)

    def _emit_order(self, order: SimOrder, now: datetime) -> None:
        self.client.emit(
            p.OrderEvent(
                ts=now,
                client_order_id=order.client_order_id,
                symbol=order.symbol,
                side=order.side,
                order_type=order.order_type,
                quantity=order.quantity,
                limit_price=order.limit_price,
                status=order.status,
                filled_quantity=order.filled,
                avg_fill_price=order.avg_fill_price,
                expected_price=order.expected_price,
                broker_order_id=order.broker_order_id,
                reject_reason=order.reject_reason,
            )
        )

    # --- reports -------------------------------------------------------------------------------

    def _report_positions(self, now: datetime, symbols: set[str]) -> None:
        for symbol in sorted(symbols):
            quantity = self._positions.get(symbol, ZERO)
            self.client.emit(
                p.PositionEvent(
                    ts=now,
                    symbol=symbol,
                    quantity=quantity + self._position_skew.get(symbol, ZERO),
                    avg_price=self._avg_prices.get(symbol, ZERO),
                    source="engine",
                )
            )

    def _declare_instruments(self, now: datetime) -> None:
        # What the control plane's exposure, limits and P&L need to know of each symbol.
        for instrument in self.universe:
            self.client.emit(
                p.InstrumentEvent(
                    ts=now,
                    symbol=instrument.symbol,
                    asset_class=instrument.asset_class,
                    multiplier=instrument.multiplier,
                    currency="USD",
                    tick_size=CENT,
                    sector=instrument.sector,
                )
            )

    def _report_account(self, now: datetime) -> None:
        self.client.emit(
            p.AccountEvent(
                ts=now,
                equity=_money(self.equity),
                cash=_money(self.cash),
                # Reg T style: a quarter of the gross exposure is held as margin.
                margin_used=_money(self.gross_exposure / 4),
            )
        )

    def _report_metrics(self, now: datetime) -> None:
        rng = self._rng
        latency = rng.lognormvariate(math.log(3.0), 0.4) * (10 if rng.random() < 0.01 else 1)
        quote_age = rng.uniform(20, 200) if rng.random() > 0.01 else rng.uniform(600, 1500)
        self._memory_mb = min(max(self._memory_mb + rng.gauss(0, 1.5), 180.0), 600.0)
        values = {
            "latency_ms": latency,
            "md_latency_ms": rng.lognormvariate(math.log(1.2), 0.3),
            "quote_age_ms": quote_age,
            "cpu_pct": min(max(12 + 3 * len(self.working) + rng.gauss(0, 4), 1.0), 99.0),
            "memory_mb": self._memory_mb,
            "queue_depth": float(len(self.working) + rng.randint(0, 3)),
            # The simulated broker is up whenever the engine runs (golive.preflight reads it).
            "broker_connected": 1.0,
        }
        for name, value in values.items():
            self.client.emit(p.MetricEvent(ts=now, name=name, value=round(value, 3)))
        if quote_age > 500:
            self._log(now, "warning", f"stale quotes: newest is {quote_age:.0f} ms old")

    def _log(self, now: datetime, level: p.LogLevel, message: str, **context: Any) -> None:
        context = {k: str(v) if isinstance(v, Decimal) else v for k, v in context.items()}
        self.client.emit(p.LogEvent(ts=now, level=level, message=message, context=context))

    # --- commands ------------------------------------------------------------------------------

    async def handle_command(self, command: Command) -> CommandOutcome:
        """The EngineClient command handler: act on the book, say what was done.

        The client applies ``trading_state`` from the outcome once this returns. Everything here
        runs without awaiting, so no tick sees a half-handled command.
        """
        now = self._clock()
        try:
            outcome = self._apply_command(command.kind, command.params, now)
        finally:
            self._save_book()
        message = f"{command.kind}: {outcome.status}. {outcome.detail}".strip()
        self._log(now, "info", message, command_id=str(command.command_id), data=outcome.data)
        return outcome

    def _apply_command(self, kind: str, params: dict[str, Any], now: datetime) -> CommandOutcome:
        state = self.client.trading_state
        symbols = params.get("symbols")
        if symbols is not None and not (
            isinstance(symbols, list) and all(isinstance(s, str) for s in symbols)
        ):
            return CommandOutcome(status="failed", detail="symbols must be a list of symbols")
        wanted = set(symbols) if symbols else None
        match kind:
            case "pause":
                cancelled = self._cancel_all(wanted, now) if params.get("cancel_open") else []
                if state in ("REDUCING", "HALTED"):
                    detail = f"already {state}, which is at least as strict; state unchanged"
                    return CommandOutcome("succeeded", detail, {"cancelled": cancelled})
                return CommandOutcome(
                    "succeeded", "", {"cancelled": cancelled}, trading_state="PAUSED"
                )
            case "resume":
                return CommandOutcome("succeeded", trading_state="ACTIVE")
            case "cancel_all":
                cancelled = self._cancel_all(wanted, now)
                working = self._still_working(wanted)
                data = {"cancelled": cancelled, "working": working}
                if working:
                    return CommandOutcome(
                        "partial", f"{len(cancelled)} cancelled, {len(working)} still working", data
                    )
                return CommandOutcome("succeeded", f"{len(cancelled)} cancelled", data)
            case "reduce" | "flatten":
                target = params.get("target_pct", 0) if kind == "reduce" else 0
                if isinstance(target, bool) or not isinstance(target, int | float):
                    return CommandOutcome("failed", "target_pct must be a number from 0 to 100")
                if not 0 <= target <= 100:
                    return CommandOutcome("failed", "target_pct must be a number from 0 to 100")
                outcome = self._reduce(wanted, Decimal(str(target)), now)
                if state != "HALTED":
                    outcome.trading_state = "REDUCING"
                return outcome
            case "kill":
                flatten = params.get("flatten", True) is not False
                outcome = self._reduce(None, ZERO, now, flatten=flatten)
                outcome.trading_state = "HALTED"
                return outcome
            case "set_limits":
                return CommandOutcome("succeeded")
            case _:
                return CommandOutcome("failed", f"paper engine does not handle {kind!r}")

    def _cancel_all(self, symbols: set[str] | None, now: datetime) -> list[str]:
        cancelled = []
        for order in list(self.working.values()):
            if symbols is None or order.symbol in symbols:
                if order.client_order_id in self.stuck_orders:
                    self._log(now, "error", f"broker refused to cancel {order.client_order_id}")
                    continue
                self._cancel(order, now)
                cancelled.append(order.client_order_id)
        return cancelled

    def _still_working(self, symbols: set[str] | None) -> list[str]:
        return sorted(
            order.client_order_id
            for order in self.working.values()
            if symbols is None or order.symbol in symbols
        )

    def _reduce(
        self, symbols: set[str] | None, target_pct: Decimal, now: datetime, *, flatten: bool = True
    ) -> CommandOutcome:
        """Cancel working orders, then trade each position down to ``target_pct`` of its size."""
        cancelled = self._cancel_all(symbols, now)
        traded: dict[str, str] = {}
        left: dict[str, str] = {}
        problems: list[str] = []
        for symbol, position in sorted(self.positions.items()):
            if not flatten or (symbols is not None and symbol not in symbols):
                continue
            keep = (abs(position) * target_pct / 100).to_integral_value(rounding=ROUND_DOWN)
            quantity = abs(position) - keep
            if quantity <= 0:
                continue
            side = _reducing_side(position)
            try:
                self.client.check_order(symbol, side, quantity, position, liquidating=True)
            except OrderRejected as exc:
                left[symbol] = str(position)
                problems.append(exc.reason)
                continue
            self._submit(symbol, side, quantity, "market", None, now, forced=True)
            traded[symbol] = str(_signed(side, quantity))
        self._report_positions(now, set(traded))
        self._report_account(now)
        working = self._still_working(symbols)
        data: dict[str, Any] = {
            "cancelled": cancelled,
            "traded": traded,
            "left": left,
            "working": working,
        }
        detail = f"{len(cancelled)} orders cancelled, {len(traded)} positions reduced"
        if working:
            detail += f", {len(working)} orders still working"
        if left:
            detail += f", {len(left)} left: " + "; ".join(problems)
        if working or left:
            return CommandOutcome("partial", detail, data)
        return CommandOutcome("succeeded", detail, data)

    # --- persistence ---------------------------------------------------------------------------

    def _load_book(self) -> _Book | None:
        if self.book_path is None:
            return None
        try:
            return msgspec.json.decode(self.book_path.read_bytes(), type=_Book)
        except FileNotFoundError:
            return None
        except msgspec.MsgspecError as exc:
            # A fresh id prefix at least keeps new ids apart from the ones the server has.
            log.warning(
                "paper engine: unreadable book %s (%s); starting afresh", self.book_path, exc
            )
            return None

    def _save_book(self) -> None:
        if self.book_path is None:
            return
        book = _Book(
            id_prefix=self.id_prefix,
            next_order_no=self._next_order_no,
            ticks=self.ticks,
            cash=self.cash,
            positions=self._positions,
            avg_prices=self._avg_prices,
            prices=self.prices,
            working=list(self.working.values()),
        )
        # Written whole and renamed, so a crash leaves the old book or the new one, never half.
        # One save at a time: a hand-placed order (submit_manual, from another thread) saves too,
        # and two writers of the one temporary file had one rename find it gone.
        with self._book_lock:
            self.book_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.book_path.with_suffix(".tmp")
            tmp.write_bytes(msgspec.json.encode(book))
            os.replace(tmp, self.book_path)
