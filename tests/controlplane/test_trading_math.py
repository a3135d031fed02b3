"""The one copy of the trade arithmetic: exact in Decimal for the reports, the same trips in
floats for the gates, and the ratios of daily returns. No database."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controlplane import trading_math
from controlplane.trading_math import round_trips, sharpe_ratio, sortino_ratio

ONE = Decimal(1)
# Buy 5, sell 8 (crossing zero: 5 close the trip, 3 open a short), buy 3 back; fees pro rata.
CROSSING = [
    ("buy", Decimal(5), Decimal(50), Decimal("0.5"), ONE, 1.0),
    ("sell", Decimal(8), Decimal(48), Decimal("0.8"), ONE, 2.0),
    ("buy", Decimal(3), Decimal(45), Decimal("0.3"), ONE, 3.0),
]


def test_decimal_round_trips_are_exact() -> None:
    assert round_trips(CROSSING, 0.0, 10.0) == [Decimal("-11"), Decimal("8.4")]


def test_float_round_trips_give_the_same_trips_with_an_exact_position() -> None:
    floats = [(s, q, float(p), float(f), float(m), ts) for s, q, p, f, m, ts in CROSSING]
    trips = round_trips(floats, 0.0, 10.0, cash=float, zero=0.0)
    assert trips == pytest.approx([-11.0, 8.4])
    assert all(isinstance(trip, float) for trip in trips)
    # Thirds of a lot: a float position would not come back to zero and close the trip.
    third = Decimal(1) / Decimal(3)
    lots = [("buy", third, 10.0, 0.0, 1.0, 1.0)] * 3 + [("sell", third * 3, 11.0, 0.0, 1.0, 2.0)]
    assert round_trips(lots, 0.0, 10.0, cash=float, zero=0.0) == pytest.approx([1.0])


def test_only_trips_closing_in_the_period_count() -> None:
    assert round_trips(CROSSING, 2.5, 10.0) == [Decimal("8.4")]
    assert round_trips(CROSSING, 0.0, 2.0) == []


def test_the_ratios_need_two_returns_and_some_spread() -> None:
    assert sharpe_ratio([0.01]) is None and sortino_ratio([0.01]) is None
    assert sharpe_ratio([0.01, 0.01]) is None
    assert sortino_ratio([0.01, 0.02]) is None  # no down day
    assert sharpe_ratio([0.01, -0.01, 0.02]) == pytest.approx(
        (0.02 / 3) / 0.015275252316519466 * 252**0.5
    )


def test_the_max_drawdown_is_the_largest_fall_from_the_running_peak():
    assert trading_math.max_drawdown_pct([Decimal(100), Decimal(95), Decimal(110)]) == 5.0
    # 120 -> 90 after a new peak: 25 %, larger than the first fall.
    equity = [Decimal(v) for v in (100, 95, 120, 90, 130)]
    assert trading_math.max_drawdown_pct(equity) == 25.0
    assert trading_math.max_drawdown_pct([Decimal(100), Decimal(101)]) == 0.0
    assert trading_math.max_drawdown_pct([Decimal(100)]) is None


def test_convert_goes_through_the_account_currency_and_never_guesses_a_rate():
    D = Decimal
    rates = {"EUR": "1.1", "JPY": "0.0067", "BNB": "600"}
    assert trading_math.convert(D(2), "EUR", "EUR", "USD", {}) == D(2)
    assert trading_math.convert(D(2), "EUR", "USD", "USD", rates) == D("2.2")
    assert trading_math.convert(D("1.1"), "USD", "EUR", "USD", rates) == D(1)
    assert trading_math.convert(D("0.0067"), "EUR", "JPY", "USD", rates) == D("1.1")
    # No account event yet: the protocol's default, USD.
    assert trading_math.convert(D("1.1"), "USD", "EUR", "", rates) == D(1)
    assert trading_math.convert(D(1), "GBP", "USD", "USD", rates) is None
    assert trading_math.convert(D(1), "USD", "GBP", "USD", rates) is None
    assert trading_math.convert(D(1), "EUR", "GBP", "USD", rates) is None


def test_a_sum_in_the_account_currency_is_unknown_when_a_non_zero_part_has_no_rate():
    D = Decimal
    rates = {"EUR": "1.1"}
    total = trading_math.sum_in_account_currency(
        [(D(10), "USD"), (D(10), "EUR"), (D(0), "JPY")], "USD", rates
    )
    assert total == (D(21), [])
    total = trading_math.sum_in_account_currency(
        [(D(10), "USD"), (D(5), "JPY"), (D(-1), "GBP")], "USD", rates
    )
    assert total == (None, ["GBP", "JPY"])
