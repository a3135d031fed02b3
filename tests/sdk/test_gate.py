from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine_sdk.gate import OrderRejected, StateChange, TradingGate

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_active_allows_any_order() -> None:
    gate = TradingGate()
    gate.check_order("AAPL", "buy", Decimal(10), Decimal(0))
    gate.check_order("AAPL", "sell", Decimal(10), Decimal(-50))


@pytest.mark.parametrize("quantity", [Decimal(0), Decimal(-1)])
def test_a_non_positive_quantity_is_refused_in_every_state(quantity: Decimal) -> None:
    with pytest.raises(OrderRejected, match="positive"):
        TradingGate().check_order("AAPL", "buy", quantity, Decimal(0))


@pytest.mark.parametrize("state", ["PAUSED", "REDUCING"])
@pytest.mark.parametrize(
    ("side", "quantity", "position"),
    [("sell", 40, 100), ("sell", 100, 100), ("buy", 5, -5), ("buy", 1, -10)],
)
def test_paused_and_reducing_allow_orders_that_shrink_a_position(
    state: str, side: str, quantity: int, position: int
) -> None:
    gate = TradingGate(state)  # type: ignore[arg-type]
    gate.check_order("AAPL", side, Decimal(quantity), Decimal(position))  # type: ignore[arg-type]


@pytest.mark.parametrize("state", ["PAUSED", "REDUCING"])
@pytest.mark.parametrize(
    ("side", "quantity", "position", "why"),
    [
        ("buy", 1, 100, "reduce"),
        ("sell", 1, -100, "reduce"),
        ("buy", 1, 0, "reduce"),
        ("sell", 150, 100, "cross zero"),
        ("buy", 11, -10, "cross zero"),
    ],
)
def test_paused_and_reducing_refuse_growing_or_crossing_zero(
    state: str, side: str, quantity: int, position: int, why: str
) -> None:
    gate = TradingGate(state)  # type: ignore[arg-type]
    with pytest.raises(OrderRejected, match=why):
        gate.check_order("AAPL", side, Decimal(quantity), Decimal(position))  # type: ignore[arg-type]


def test_halted_allows_nothing_but_cancels() -> None:
    gate = TradingGate()
    gate.halt(reason="kill")
    with pytest.raises(OrderRejected, match="HALTED"):
        gate.check_order("AAPL", "sell", Decimal(1), Decimal(100))  # even a reducing one
    gate.check_cancel()


def test_a_timed_pause_resumes_by_itself() -> None:
    clock = Clock()
    changes: list[StateChange] = []
    gate = TradingGate(clock=clock, on_change=changes.append)

    gate.pause(until=T0 + timedelta(minutes=5), reason="news")
    clock.now = T0 + timedelta(minutes=4, seconds=59)
    assert gate.state == "PAUSED"
    assert gate.paused_until == T0 + timedelta(minutes=5)
    clock.now = T0 + timedelta(minutes=5)

    assert gate.state == "ACTIVE"
    assert gate.paused_until is None
    assert [(c.old, c.new, c.reason) for c in changes] == [
        ("ACTIVE", "PAUSED", "news"),
        ("PAUSED", "ACTIVE", "pause ended"),
    ]


def test_a_pause_without_an_end_lasts_until_resumed() -> None:
    clock = Clock()
    gate = TradingGate(clock=clock)
    gate.pause()
    clock.now = T0 + timedelta(days=3)
    assert gate.state == "PAUSED"
    gate.resume()
    assert gate.state == "ACTIVE"


def test_pause_does_not_loosen_reducing_or_halted() -> None:
    for start in ("REDUCING", "HALTED"):
        gate = TradingGate(start)  # type: ignore[arg-type]
        assert gate.pause(until=T0) is False
        assert gate.state == start


def test_halted_is_latched_until_an_explicit_change() -> None:
    gate = TradingGate()
    gate.halt()
    assert gate.reduce() is False
    assert gate.pause() is False
    assert gate.state == "HALTED"
    gate.resume(reason="approved by a second risk manager")
    assert gate.state == "ACTIVE"


def test_setting_the_same_state_reports_no_change() -> None:
    changes: list[StateChange] = []
    gate = TradingGate(on_change=changes.append)
    assert gate.set_state("ACTIVE") is False
    assert changes == []


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        TradingGate().pause(until=datetime(2026, 1, 1))
