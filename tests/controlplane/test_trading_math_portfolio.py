"""The portfolio limits' arithmetic (docs/risk.md, portfolio limits), against figures worked out
on paper; no database."""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal

import pytest

from controlplane import trading_math as tm

D = Decimal


def test_one_engines_daily_returns_are_each_close_over_the_previous_one():
    closes = {
        1: [
            (date(2026, 3, 2), D(100000)),
            (date(2026, 3, 3), D(101000)),
            (date(2026, 3, 5), D(99990)),
        ]
    }
    returns = tm.combined_daily_returns(closes)
    # 101,000 / 100,000 - 1 = +1 %; 99,990 / 101,000 - 1 = -1 % (the 4th has no close).
    assert returns == {
        date(2026, 3, 3): pytest.approx(0.01),
        date(2026, 3, 5): pytest.approx(-0.01),
    }


def test_engines_together_sum_their_changes_over_their_previous_equity():
    d0, d1, d2, d3 = (date(2026, 3, day) for day in (2, 3, 4, 5))
    closes = {
        1: [(d0, D(100000)), (d1, D(101000)), (d2, D(99990))],
        2: [(d0, D(50000)), (d1, D(49000)), (d3, D(49490))],
        3: [(d2, D(70000)), (d3, D(77000))],  # starts on d2: its capital is not a return
    }
    returns = tm.combined_daily_returns(closes)
    # d1: (+1,000 - 1,000) / 150,000 = 0
    # d2: (-1,010 + 0) / (101,000 + 49,000) = -0.006733...; engine 3's first close takes no part
    # d3: (0 + 490 + 7,000) / (99,990 + 49,000 + 70,000) = 7,490 / 218,990 = 0.034202...
    assert returns[d1] == 0
    assert returns[d2] == pytest.approx(-1010 / 150000)
    assert returns[d3] == pytest.approx(7490 / 218990)
    assert d0 not in returns


def test_correlation_worked_on_paper():
    # x - mean: -1.5 -0.5 0.5 1.5; y - mean: -3 -1 0 4; sxy = 11, sxx = 5, syy = 26
    x, y = [0.01, 0.02, 0.03, 0.04], [0.02, 0.04, 0.05, 0.09]
    assert tm.correlation(x, y) == pytest.approx(11 / math.sqrt(130))
    assert tm.correlation(x, [-v for v in y]) == pytest.approx(-11 / math.sqrt(130))
    assert tm.correlation(x, [0.01] * 4) is None  # a series that does not vary
    assert tm.correlation([0.01], [0.02]) is None


def test_historical_value_at_risk_is_the_nearest_rank_loss():
    returns = [-0.06, -0.05, -0.04, -0.03, -0.02, -0.01] + [0.01] * 34  # 40 days
    # 95 %: k = ceil(40 x 5 / 100) = 2, the second worst, -5 %; 99 %: k = ceil(0.4) = 1, -6 %.
    assert tm.historical_var_pct(returns, 95) == pytest.approx(5.0)
    assert tm.historical_var_pct(returns, 99) == pytest.approx(6.0)
    # 41 days: k = ceil(2.05) = 3 at 95 %, the third worst.
    assert tm.historical_var_pct([*returns, 0.02], 95) == pytest.approx(4.0)
    assert tm.historical_var_pct([0.01, 0.02], 95) == 0.0  # the rank's day is a gain: no loss
    assert tm.historical_var_pct([], 95) is None


def test_a_combined_peak_moves_engines_reporting_together_at_once():
    points = [
        (1, "a", D(100000)),
        (2, "b", D(50000)),  # 150,000
        (3, "a", D(110000)),  # 160,000: the peak
        (4, "a", D(104000)),
        (4, "b", D(40000)),  # 144,000
    ]
    total, peak = tm.combined_peak({}, points, None)
    assert (total, peak) == (D(144000), D(160000))  # a drawdown of 10 %
    # a at 130,000 then b at 30,000 in the same instant: 160,000, never 170,000.
    total, peak = tm.combined_peak(
        {"a": D(104000), "b": D(40000)}, [(5, "a", D(130000)), (5, "b", D(30000))], peak
    )
    assert (total, peak) == (D(160000), D(160000))
    assert tm.combined_peak({}, [], None) == (None, None)
