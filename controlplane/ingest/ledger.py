"""The ingest's arithmetic on plain values: an engine's position ledger, its session figures
from its account snapshots, and the counts its row keeps.

The store (controlplane.ingest.store) reads the values under the engine's row lock, applies a
batch's events with these functions, and writes the results back; nothing here touches the
database or Django, so each rule is tested on its own (tests/controlplane/ingest/test_ledger.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from controlplane.trading_math import DEFAULT_ACCOUNT_CURRENCY, convert

ZERO = Decimal(0)
# As the position table holds prices and the engine table the drawdown.
PRICE_PLACES = Decimal("0.00000001")
MONEY_PLACES = Decimal("0.00000001")
DRAWDOWN_PLACES = Decimal("0.000001")


@dataclass
class Position:
    """One instrument's ledger for one engine: from our own fills, and as last reported."""

    instrument_id: int
    quantity: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    last_price: Decimal | None = None
    reported_quantity: Decimal | None = None
    reported_avg_price: Decimal | None = None
    reported_at: datetime | None = None
    mismatch_since: datetime | None = None


def signed_quantity(side: str, quantity: Decimal) -> Decimal:
    """A fill's quantity as it changes a position: positive bought, negative sold."""
    return quantity if side == "buy" else -quantity


def fee_in_instrument_currency(
    fee: Decimal,
    *,
    fee_currency: str | None,
    currency: str,
    account_currency: str,
    fx_rates: Mapping[str, Any],
) -> Decimal | None:
    """A fill's fee in its instrument's currency, the currency of the position's realised P&L
    (price x multiplier). The fee is in ``fee_currency`` when the engine named one, else in the
    account's currency; it is converted at the engine's latest rates. None when a rate it needs
    is unknown: the fee is then left out of the P&L rather than counted at a rate of 1 (a fee
    of 0.01 BNB is not 0.01 dollars)."""
    if not fee:
        return ZERO
    converted = convert(
        fee,
        fee_currency or account_currency or DEFAULT_ACCOUNT_CURRENCY,
        currency,
        account_currency,
        fx_rates,
    )
    return None if converted is None else converted.quantize(MONEY_PLACES)


def apply_fill(
    pos: Position,
    *,
    side: str,
    quantity: Decimal,
    price: Decimal,
    fee: Decimal,
    multiplier: Decimal,
) -> None:
    """Update a position ledger with one fill: weighted average on increase, realised P&L on
    decrease, and a new average at the fill price when the position flips sign. ``fee`` is in
    the instrument's currency, as the P&L is (``fee_in_instrument_currency``)."""
    signed = signed_quantity(side, quantity)
    old = pos.quantity
    new = old + signed
    if old == 0 or (old > 0) == (signed > 0):
        total_cost = abs(old) * pos.avg_price + quantity * price
        pos.avg_price = (total_cost / abs(new)).quantize(PRICE_PLACES)
    else:
        closed = min(quantity, abs(old))
        direction = Decimal(1) if old > 0 else Decimal(-1)
        pos.realized_pnl += closed * (price - pos.avg_price) * direction * multiplier
        if new == 0:
            pos.avg_price = ZERO
        elif (new > 0) != (old > 0):
            pos.avg_price = price
    pos.quantity = new
    pos.realized_pnl -= fee
    pos.last_price = price


def apply_report(pos: Position, *, quantity: Decimal, avg_price: Decimal, ts: datetime) -> None:
    """Record the position as the engine (its broker) reported it."""
    pos.reported_quantity = quantity
    pos.reported_avg_price = avg_price
    pos.reported_at = ts


def flag_mismatch(pos: Position, now: datetime) -> None:
    """Note since when the reported quantity has disagreed with the ledger's (the first batch
    that found them apart), or clear it once they agree or nothing was reported."""
    agrees = pos.reported_quantity is None or pos.reported_quantity == pos.quantity
    if agrees:
        pos.mismatch_since = None
    elif pos.mismatch_since is None:
        pos.mismatch_since = now


@dataclass(frozen=True)
class Session:
    """The trading session's base and the equity's high-water mark, as the engine row keeps
    them (all None before the first snapshot)."""

    start_at: datetime | None
    start_equity: Decimal | None
    high_water_mark: Decimal | None


def advance_session(session: Session, ts: datetime, equity: Decimal) -> Session:
    """The session after one account snapshot. The trading session starts at 00:00 UTC: the
    first equity of a new day is its base."""
    start_at, start_equity, hwm = session.start_at, session.start_equity, session.high_water_mark
    if start_at is None or ts.astimezone(UTC).date() > start_at.astimezone(UTC).date():
        start_at, start_equity = ts, equity
    if hwm is None or equity > hwm:
        hwm = equity
    return Session(start_at, start_equity, hwm)


def day_pnl(session: Session, equity: Decimal) -> Decimal:
    assert session.start_equity is not None
    return equity - session.start_equity


def drawdown_pct(high_water_mark: Decimal | None, equity: Decimal) -> Decimal:
    """How far ``equity`` is below the high-water mark, in percent of it."""
    hwm = high_water_mark
    drawdown = (hwm - equity) / hwm * 100 if hwm and hwm > 0 else ZERO
    return drawdown.quantize(DRAWDOWN_PLACES)


@dataclass(frozen=True)
class Counts:
    """The engine row's counts (see Engine.counts_day): the UTC day they count, its orders and
    rejected orders created that day, its fills that day, and the orders working."""

    day: date | None
    orders: int
    rejected: int
    fills: int
    working: int


class OrderState(NamedTuple):
    """What the counts need of an order row: whether it works or was rejected, when it was
    created, and the seq of the report it holds."""

    working: bool
    rejected: bool
    created_at: datetime
    seq: int


def count(
    before: Counts,
    orders: Iterable[tuple[OrderState | None, OrderState]],
    fill_times: Iterable[datetime],
    now: datetime,
) -> Counts:
    """The counts after a batch: ``orders`` pairs each order's row as stored (None: a new one)
    with its row as the batch's latest report makes it, ``fill_times`` are the times of the
    fills stored. A stored row changes only for a newer report (a higher seq), as the orders'
    upsert does. Today is the UTC day of ``now``; the day's counts start again at zero on the
    first batch of a new day (orders created, and fills made, since midnight)."""
    today = now.astimezone(UTC).date()
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    fresh_day = before.day != today
    created = 0 if fresh_day else before.orders
    rejected = 0 if fresh_day else before.rejected
    fills = 0 if fresh_day else before.fills
    working = before.working
    for old, new in orders:
        if old is None:
            working += new.working
            if new.created_at >= midnight:
                created += 1
                rejected += new.rejected
            continue
        if old.seq >= new.seq:
            continue  # the stored report is as new: the upsert leaves the row as it is
        working += new.working - old.working
        if old.created_at >= midnight:
            rejected += new.rejected - old.rejected
    fills += sum(1 for ts in fill_times if ts >= midnight)
    return Counts(today, created, rejected, fills, working)
