"""Analytics against the figures worked out by hand in conftest.py."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.ingest.store import ingest_events
from dashboard.reports import analytics
from tests.gateway import factories as f
from tests.reports.conftest import (
    ALPHA_ALERTS,
    ALPHA_AVG_SLIPPAGE_BPS,
    ALPHA_COMMANDS,
    ALPHA_DAILY_PNL,
    ALPHA_END_EQUITY,
    ALPHA_FILL_RATE_PCT,
    ALPHA_MAX_DRAWDOWN_PCT,
    ALPHA_PNL,
    ALPHA_PROFIT_FACTOR,
    ALPHA_REJECTION_RATE_PCT,
    ALPHA_RETURN_PCT,
    ALPHA_ROUND_TRIPS,
    ALPHA_SHARPE,
    ALPHA_SORTINO,
    ALPHA_START_EQUITY,
    ALPHA_TRADES,
    ALPHA_TRIPS,
    ALPHA_UPTIME_PCT,
    ALPHA_WIN_RATE_PCT,
    ALPHA_WORST_SLIPPAGE_BPS,
    FLEET_ALERTS,
    FLEET_COMMANDS,
    FLEET_DAILY_PNL,
    FLEET_END_EQUITY,
    FLEET_MAX_DRAWDOWN_PCT,
    FLEET_PNL,
    FLEET_RETURN_PCT,
    FLEET_START_EQUITY,
    FLEET_UPTIME_PCT,
    WEEK,
    WEEK_END,
    WEEK_START,
    close,
)

pytestmark = pytest.mark.django_db
UTC_ZONE = ZoneInfo("UTC")


def test_the_engine_figures_match_the_hand_computed_ones(week_data: dict[str, Any]) -> None:
    a = analytics.engine_analytics(week_data["alpha"], WEEK_START, WEEK_END)

    assert a.start_equity == ALPHA_START_EQUITY
    assert a.end_equity == ALPHA_END_EQUITY
    assert a.pnl == ALPHA_PNL
    assert close(a.return_pct, ALPHA_RETURN_PCT)
    assert close(a.sharpe, ALPHA_SHARPE)
    assert close(a.sortino, ALPHA_SORTINO)
    assert close(a.max_drawdown_pct, ALPHA_MAX_DRAWDOWN_PCT)
    assert [d.pnl for d in a.days] == ALPHA_DAILY_PNL
    assert [d.day.day for d in a.days] == [16, 17, 18, 19]
    assert a.trades == ALPHA_TRADES
    assert a.round_trips == ALPHA_ROUND_TRIPS
    assert (a.wins, a.losses) == (2, 1)
    assert a.round_trip_pnl == sum(ALPHA_TRIPS)
    assert close(a.win_rate_pct, ALPHA_WIN_RATE_PCT)
    assert close(a.profit_factor, ALPHA_PROFIT_FACTOR)
    assert close(a.avg_slippage_bps, ALPHA_AVG_SLIPPAGE_BPS, rel=1e-11)
    assert close(a.worst_slippage_bps, ALPHA_WORST_SLIPPAGE_BPS)
    assert close(a.rejection_rate_pct, ALPHA_REJECTION_RATE_PCT)
    assert close(a.fill_rate_pct, ALPHA_FILL_RATE_PCT)
    assert close(a.uptime_pct, ALPHA_UPTIME_PCT)
    assert a.alerts_fired == ALPHA_ALERTS
    assert a.commands_issued == ALPHA_COMMANDS


def test_round_trips_split_a_fill_that_crosses_zero_and_charge_its_fee_pro_rata() -> None:
    ts = datetime(2026, 11, 17, 10, tzinfo=UTC)
    one = Decimal(1)
    fills = [
        ("buy", Decimal(5), Decimal(50), Decimal("0.5"), one, ts),
        ("sell", Decimal(8), Decimal(48), Decimal("0.8"), one, ts),
        ("buy", Decimal(3), Decimal(45), Decimal("0.3"), one, ts),
    ]
    assert analytics.round_trips(fills, WEEK_START, WEEK_END) == [Decimal("-11"), Decimal("8.4")]


def test_a_trip_that_closed_before_the_period_does_not_count() -> None:
    before = datetime(2026, 11, 13, tzinfo=UTC)
    one = Decimal(1)
    fills = [
        ("buy", one, Decimal(10), Decimal(0), one, before),
        ("sell", one, Decimal(12), Decimal(0), one, before),
    ]
    assert analytics.round_trips(fills, WEEK_START, WEEK_END) == []


def test_a_tag_covers_its_engines_only(week_data: dict[str, Any]) -> None:
    momentum = analytics.tag_analytics("momentum", WEEK_START, WEEK_END)
    assert momentum.engines == 1
    assert momentum.pnl == ALPHA_PNL
    assert close(momentum.sharpe, ALPHA_SHARPE)
    mean_rev = analytics.tag_analytics("mean-rev", WEEK_START, WEEK_END)
    assert mean_rev.pnl == Decimal("-500")  # 49500 - 50000
    assert mean_rev.trades == 0
    assert mean_rev.win_rate_pct is None  # no round trip: undefined, not 0


def test_the_fleet_adds_its_engines_up(week_data: dict[str, Any]) -> None:
    fleet = analytics.fleet_analytics(WEEK_START, WEEK_END)

    assert fleet.engines == 2
    assert fleet.start_equity == FLEET_START_EQUITY
    assert fleet.end_equity == FLEET_END_EQUITY
    assert fleet.pnl == FLEET_PNL
    assert close(fleet.return_pct, FLEET_RETURN_PCT)
    assert close(fleet.max_drawdown_pct, FLEET_MAX_DRAWDOWN_PCT)
    assert [d.pnl for d in fleet.days] == FLEET_DAILY_PNL
    assert fleet.trades == ALPHA_TRADES
    assert fleet.round_trips == ALPHA_ROUND_TRIPS
    assert close(fleet.uptime_pct, FLEET_UPTIME_PCT)
    assert fleet.alerts_fired == FLEET_ALERTS
    assert fleet.commands_issued == FLEET_COMMANDS


def test_days_follow_the_timezone_asked_for(week_data: dict[str, Any]) -> None:
    # In Tokyo (UTC+9) the week starts Sunday 15:00 UTC. Monday 20:00 UTC is Tuesday 05:00 there,
    # so Monday ends at 100500 (10:00 UTC, 19:00 in Tokyo); Wednesday's and Thursday's 20:00 UTC
    # points fall on Thursday and Friday: the days are the 16th, 17th, 19th and 20th.
    tokyo = ZoneInfo("Asia/Tokyo")
    period = analytics.iso_week(WEEK, tokyo)
    a = analytics.engine_analytics(week_data["alpha"], period.start, period.end, tz=tokyo)
    assert period.start == datetime(2026, 11, 15, 15, tzinfo=UTC)
    assert [d.day.day for d in a.days] == [16, 17, 19, 20]
    assert a.days[0].equity == Decimal("100500")


def test_a_period_without_data_has_no_figures_rather_than_zeros(week_data: dict[str, Any]) -> None:
    start = datetime(2025, 1, 6, tzinfo=UTC)
    a = analytics.engine_analytics(week_data["alpha"], start, datetime(2025, 1, 13, tzinfo=UTC))
    assert (a.trades, a.round_trips, a.start_equity, a.pnl, a.sharpe) == (0, 0, None, None, None)
    assert a.uptime_pct is None  # the engine had not started
    assert not a.has_trading


def test_the_analytics_of_the_fleet_take_a_fixed_number_of_queries(
    week_data: dict[str, Any], make_engine: Any
) -> None:
    with CaptureQueriesContext(connection) as few:
        analytics.fleet_analytics(WEEK_START, WEEK_END)
    for i in range(5):
        make_engine(f"extra-{i}")
    with CaptureQueriesContext(connection) as more:
        analytics.fleet_analytics(WEEK_START, WEEK_END)
    assert len(more) == len(few) <= 12


@pytest.mark.parametrize(
    ("week", "message"),
    [
        ("2026-47", "not an ISO week"),
        ("2026-W54", "has no ISO week 54"),
        ("26-W01", "YYYY-Www"),
        ("9999-W52", "out of range"),
        ("0001-W01", "out of range"),
    ],
)
def test_a_bad_week_says_what_is_wrong(week: str, message: str) -> None:
    with pytest.raises(analytics.BadWeek, match=message):
        analytics.iso_week(week, UTC_ZONE)


def test_the_previous_iso_week_is_the_last_complete_one() -> None:
    monday_morning = datetime(2026, 11, 23, 7, tzinfo=UTC)
    assert analytics.previous_iso_week(monday_morning, UTC_ZONE) == "2026-W47"
    # Still Sunday in Los Angeles: the last complete week there is W46.
    assert analytics.previous_iso_week(monday_morning, ZoneInfo("America/Los_Angeles")) == (
        "2026-W46"
    )
    assert analytics.previous_iso_week(datetime(2027, 1, 4, 7, tzinfo=UTC), UTC_ZONE) == "2026-W53"


def _crypto_week(make_engine: Any, rates: dict[str, str]) -> analytics.Analytics:
    """A USDT account: a BTC/USDT trip (+10, fees 0.001 BNB each side) and a losing euro one
    (-5 euros, a 0.5 USDT fee on the close)."""
    engine, _ = make_engine("crypto")
    ingest_events(
        engine_id=engine.pk,
        events=[
            f.account_fx(1, "50000", rates, currency="USDT"),
            f.instrument(2, "BTC/USDT", currency="USDT"),
            f.instrument(3, "SX5E", currency="EUR"),
            f.order(4, "b-1", symbol="BTC/USDT", qty="1"),
            f.fill(
                5,
                "b-1",
                "b-1",
                symbol="BTC/USDT",
                qty="1",
                price="100",
                fee="0.001",
                fee_currency="BNB",
            ),
            f.order(6, "b-2", symbol="BTC/USDT", side="sell", qty="1"),
            f.fill(
                7,
                "b-2",
                "b-2",
                symbol="BTC/USDT",
                side="sell",
                qty="1",
                price="110",
                fee="0.001",
                fee_currency="BNB",
            ),
            f.order(8, "e-1", symbol="SX5E", qty="1"),
            f.fill(9, "e-1", "e-1", symbol="SX5E", qty="1", price="100"),
            f.order(10, "e-2", symbol="SX5E", side="sell", qty="1"),
            f.fill(11, "e-2", "e-2", symbol="SX5E", side="sell", qty="1", price="95", fee="0.5"),
        ],
    )
    return analytics.engine_analytics(engine, f.at(0), f.at(60))


def test_round_trips_count_fees_in_their_currency_and_add_up_in_the_account_currency(
    make_engine: Any,
) -> None:
    a = _crypto_week(make_engine, {"BNB": "600", "EUR": "1.25"})
    # BTC: 10 less 2 x 0.6 USDT. Euro: (-5 euros less 0.5 / 1.25 euros) x 1.25.
    assert (a.round_trips, a.wins, a.losses) == (2, 1, 1)
    assert a.round_trip_pnl == Decimal("8.8") + Decimal("-5.4") * Decimal("1.25")
    assert close(a.profit_factor, 8.8 / 6.75)
    assert a.unconverted_currencies == []


def test_a_round_trip_whose_currency_has_no_rate_is_unknown_never_counted_at_one(
    make_engine: Any,
) -> None:
    a = _crypto_week(make_engine, {"EUR": "1.25"})
    # The BTC trip's fees are in BNB, which has no rate: its P&L is unknown.
    assert (a.round_trips, a.wins, a.losses) == (2, 0, 1)
    assert a.round_trip_pnl is None and a.profit_factor is None
    assert a.unconverted_currencies == ["BNB"]
    assert a.win_rate_pct == 0.0
