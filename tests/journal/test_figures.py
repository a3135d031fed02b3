"""The journal's arithmetic without a database: the desk's daily P&L from equity closes, and the
z-score a daily review judges a day's P&L by (worked by hand below)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from journal.figures import daily_pnl, zscore

D = Decimal


def test_a_days_pnl_is_its_close_less_the_close_before_summed_over_engines() -> None:
    opening = {1: D("1000"), 2: D("500")}
    closes = {
        1: [(date(2026, 11, 2), D("1010")), (date(2026, 11, 3), D("990"))],
        # Engine 2 reported nothing on the 2nd: its 3rd is measured from its opening.
        2: [(date(2026, 11, 3), D("520"))],
    }

    assert daily_pnl(opening, closes) == {
        date(2026, 11, 2): (D("10"), D("1000")),
        date(2026, 11, 3): (D("-20") + D("20"), D("1010") + D("500")),
    }


def test_an_engines_first_day_ever_adds_nothing() -> None:
    closes = {7: [(date(2026, 11, 2), D("1000")), (date(2026, 11, 3), D("1005"))]}

    assert daily_pnl({}, closes) == {date(2026, 11, 3): (D("5"), D("1000"))}


def test_the_zscore_against_the_history_worked_by_hand() -> None:
    # history 10, -10, 20, -10, 0: mean 2; squared deviations 64 + 144 + 324 + 144 + 4 = 680;
    # sample variance 680 / 4 = 170; stdev 13.0384; z of 50 = (50 - 2) / 13.0384 = 3.6815.
    assert zscore(50, [10, -10, 20, -10, 0]) == pytest.approx(3.6815, abs=1e-4)
    assert zscore(2, [10, -10, 20, -10, 0]) == 0


def test_no_zscore_without_enough_history_or_any_spread() -> None:
    assert zscore(50, [10, -10, 20, -10]) is None  # four days: too few to call anything normal
    assert zscore(50, [5, 5, 5, 5, 5]) is None
