"""Protocol events for tests, built with the SDK's own structs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from engine_sdk import protocol as p

T0 = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def order(
    seq: int,
    coid: str,
    *,
    symbol: str = "AAPL",
    side: str = "buy",
    qty: str = "100",
    status: str = "accepted",
    filled: str = "0",
    expected: str | None = "190",
) -> p.OrderEvent:
    return p.OrderEvent(
        seq=seq,
        ts=at(seq),
        client_order_id=coid,
        symbol=symbol,
        side=side,
        order_type="limit",
        quantity=Decimal(qty),
        limit_price=Decimal("190.50"),
        status=status,
        filled_quantity=Decimal(filled),
        expected_price=Decimal(expected) if expected else None,
    )


def fill(
    seq: int,
    fill_id: str,
    coid: str,
    *,
    symbol: str = "AAPL",
    side: str = "buy",
    qty: str = "10",
    price: str = "190.25",
    fee: str = "0",
    fee_currency: str | None = None,
) -> p.FillEvent:
    return p.FillEvent(
        seq=seq,
        ts=at(seq),
        fill_id=fill_id,
        client_order_id=coid,
        symbol=symbol,
        side=side,
        quantity=Decimal(qty),
        price=Decimal(price),
        fee=Decimal(fee),
        fee_currency=fee_currency,
    )


def position(
    seq: int, qty: str, *, symbol: str = "AAPL", avg: str | None = None
) -> p.PositionEvent:
    return p.PositionEvent(
        seq=seq,
        ts=at(seq),
        symbol=symbol,
        quantity=Decimal(qty),
        avg_price=Decimal(avg) if avg else None,
    )


def account(
    seq: int, equity: str, *, cash: str = "0", ts: datetime | None = None
) -> p.AccountEvent:
    return p.AccountEvent(seq=seq, ts=ts or at(seq), equity=Decimal(equity), cash=Decimal(cash))


def metric(seq: int, name: str = "latency_ms", value: float = 1.5) -> p.MetricEvent:
    return p.MetricEvent(seq=seq, ts=at(seq), name=name, value=value)


def log(seq: int, message: str = "hello", level: str = "info") -> p.LogEvent:
    return p.LogEvent(seq=seq, ts=at(seq), level=level, message=message, context={"k": 1})


def state(seq: int, trading_state: str = "PAUSED") -> p.StateEvent:
    return p.StateEvent(seq=seq, ts=at(seq), trading_state=trading_state, reason="test")


def events_frame(*events: p.Event) -> bytes:
    return p.encode(p.Events(events=list(events)))


def instrument(seq: int, symbol: str = "ES", **fields: str) -> p.InstrumentEvent:
    """An instrument declaration; decimal fields (multiplier, tick_size) given as strings."""
    values: dict[str, object] = dict(fields)
    for name in ("multiplier", "tick_size"):
        if name in values:
            values[name] = Decimal(str(values[name]))
    return p.InstrumentEvent(seq=seq, ts=at(seq), symbol=symbol, **values)  # type: ignore[arg-type]


def account_fx(
    seq: int, equity: str, rates: dict[str, str], currency: str = "USD"
) -> p.AccountEvent:
    return p.AccountEvent(
        seq=seq,
        ts=at(seq),
        equity=Decimal(equity),
        cash=Decimal(0),
        currency=currency,
        fx_rates={code: Decimal(rate) for code, rate in rates.items()},
    )
