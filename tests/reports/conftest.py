"""A small fixed data set for ISO week 2026-W47 (Mon 16 to Sun 22 November 2026, UTC) and the
figures worked out from it by hand. The figures are written here as plain numbers, with the
arithmetic that gives them, not computed by the code under test.

alpha (tag momentum), instruments AAA and BBB (multiplier 1):
  equity  Fri 13 20:00 100000 (before the week: the opening equity)
          Mon 16 10:00 100500, 20:00 101000        end of Monday    101000      r = +1 %
          Tue 17 09:00  99500, 12:00  99990        end of Tuesday    99990      r = -1 %
          Wed 18 20:00 101989.8                    end of Wednesday 101989.8   r = +2 %
          Thu 19 20:00 100969.902                  end of Thursday  100969.902 r = -1 %
          Mon 23 00:00  50000 (the next week: must not count)
  fills   f1 Fri 13 15:00 buy  10 AAA @100 fee 1                 (before the week)
          f2 Mon 16 11:00 sell 10 AAA @110 fee 1   expected 111   closes trip 1
          f3 Tue 17 10:00 buy   5 BBB @50  fee 0.5 expected 49.9  opens trip 2
          f4 Tue 17 11:00 sell  8 BBB @48  fee 0.8 expected 48    5 close trip 2, 3 open trip 3
          f5 Wed 18 14:00 buy   3 BBB @45  fee 0.3 no expected    closes trip 3
          f6 Thu 19 15:00 buy   2 AAA @120 fee 0   expected 119.5 opens a trip still open
beta (tag mean-rev): equity Fri 13 20:00 50000, Mon 16 20:00 50500, Wed 18 20:00 49500; no fills.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from alerts.models import Alert, Severity
from controlplane.models import (
    AccountSnapshot,
    Command,
    Engine,
    Fill,
    Instrument,
    MetricSample,
    Order,
)

WEEK = "2026-W47"
WEEK_START = datetime(2026, 11, 16, tzinfo=UTC)
WEEK_END = datetime(2026, 11, 23, tzinfo=UTC)


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


# --- alpha, hand-computed ---------------------------------------------------------------------
ALPHA_START_EQUITY = Decimal("100000")
ALPHA_END_EQUITY = Decimal("100969.902")
ALPHA_PNL = Decimal("969.902")  # 100969.902 - 100000
ALPHA_RETURN_PCT = 0.969902  # 969.902 / 100000 * 100
# Daily returns +0.01, -0.01, +0.02, -0.01: mean 0.0025; deviations 0.0075, -0.0125, 0.0175,
# -0.0125; squares sum 0.000675; sample variance 0.000675 / 3 = 0.000225; sd 0.015.
# Sharpe = 0.0025 / 0.015 * sqrt(252) = sqrt(252) / 6 = sqrt(7).
ALPHA_SHARPE = 2.6457513110645906
# Downside deviation sqrt((0 + 0.0001 + 0 + 0.0001) / 4) = sqrt(0.00005) = 0.01 / sqrt(2);
# Sortino = 0.0025 / (0.01 / sqrt(2)) * sqrt(252) = 0.25 * sqrt(504).
ALPHA_SORTINO = 5.612486080160912
# Peak 101000 (Mon 20:00), trough 99500 (Tue 09:00): 1500 / 101000 * 100.
ALPHA_MAX_DRAWDOWN_PCT = 1.4851485148514851
ALPHA_DAILY_PNL = [Decimal("1000"), Decimal("-1010"), Decimal("1999.8"), Decimal("-1019.898")]
# Trip 1: -1000 - 1 (f1) + 1100 - 1 (f2) = +98
# Trip 2: -250 - 0.5 (f3) + 5 * 48 - 0.8 * 5/8 (f4) = -11
# Trip 3: +3 * 48 - 0.8 * 3/8 (f4) - 135 - 0.3 (f5) = +8.4
ALPHA_TRIPS = [Decimal("98"), Decimal("-11"), Decimal("8.4")]
ALPHA_TRADES = 5  # f2..f6
ALPHA_ROUND_TRIPS = 3
ALPHA_WIN_RATE_PCT = 66.66666666666667  # 2 of 3
ALPHA_PROFIT_FACTOR = 9.672727272727272  # (98 + 8.4) / 11
# Slippage (bps, positive worse): f2 sell (111 - 110) / 111 * 1e4 = 90.09009009;
# f3 buy (50 - 49.9) / 49.9 * 1e4 = 20.04008016; f4 0; f6 buy 0.5 / 119.5 * 1e4 = 41.84100418.
ALPHA_AVG_SLIPPAGE_BPS = 37.99279360859  # 151.97117443 / 4
ALPHA_WORST_SLIPPAGE_BPS = 90.09009009009009
ALPHA_REJECTION_RATE_PCT = 12.5  # orders created in the week: 8, rejected 1
ALPHA_FILL_RATE_PCT = 71.42857142857143  # finished 7 (5 filled, 1 rejected, 1 cancelled): 5 / 7
# Minutes with a snapshot or a metric sample: Mon 10:00 (snapshot + a sample at 10:00:30),
# Mon 10:01 (sample), Mon 20:00, Tue 09:00, Tue 12:00, Wed 20:00, Thu 20:00 = 7 of the week's
# 7 * 24 * 60 = 10080 (alpha's first data is before the week).
ALPHA_UPTIME_PCT = 0.06944444444444445  # 7 / 10080 * 100
ALPHA_ALERTS = 2
ALPHA_COMMANDS = 2

# --- fleet (alpha + beta), hand-computed --------------------------------------------------------
FLEET_START_EQUITY = Decimal("150000")  # 100000 + 50000
FLEET_END_EQUITY = Decimal("150469.902")  # 100969.902 + 49500
FLEET_PNL = Decimal("469.902")
FLEET_RETURN_PCT = 0.313268  # 469.902 / 150000 * 100
# Peak Mon 20:00 101000 + 50500 = 151500; trough Tue 09:00 99500 + 50500 = 150000: 1500 / 151500.
FLEET_MAX_DRAWDOWN_PCT = 0.9900990099009901
# End of day: Mon 151500, Tue 150490, Wed 151489.8, Thu 150469.902 (from 150000).
FLEET_DAILY_PNL = [Decimal("1500"), Decimal("-1010"), Decimal("999.8"), Decimal("-1019.898")]
FLEET_UPTIME_PCT = 0.044642857142857144  # (7 + 2) / (10080 + 10080) * 100
FLEET_ALERTS = 3  # alpha's 2 + 1 not tied to an engine
FLEET_COMMANDS = 3  # alpha's 2 + beta's 1

# --- alpha against its baseline (25 %/year, 2 trades a day, 60 % win rate, tolerance 20 %) -------
# The week has 5 weekdays: expected return 25 * 5 / 252 = 0.496031746 %.
BASELINE_EXPECTED_RETURN_PCT = 0.49603174603174605
BASELINE_RETURN_DIFF_PP = 0.47387025396825395  # 0.969902 - 0.496031746
BASELINE_RETURN_DIVERGENCE_PCT = 95.532243  # 0.473870254 / 0.496031746 * 100
BASELINE_TRADE_RATIO = 0.5  # 5 fills / (2 * 5)
BASELINE_WIN_RATE_DIFF_PP = 6.666666666666671  # 66.667 - 60
# Last 30 days before Mon 23 00:00, from alpha's first data (Fri 13 15:00): weekdays Fri 13 and
# Mon 16 to Fri 20 = 6. Expected return 25 * 6 / 252 = 0.595238095 %; live 0.969902 % (first
# equity 100000 on Fri 13): |0.969902 - 0.595238095| / 0.595238095 = 62.943536 %. Trades: 6 fills
# against 12 = 50 %. Win rate 11.1 %. The largest: 62.943536 %.
DIVERGENCE_30D_PCT = 62.943536


def close(actual: float | None, expected: float, rel: float = 1e-9) -> bool:
    return actual is not None and math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-9)


@pytest.fixture
def instruments(db: None) -> dict[str, Instrument]:
    return {s: Instrument.objects.create(symbol=s) for s in ("AAA", "BBB")}


class Builder:
    def __init__(self, engine: Engine, instruments: dict[str, Instrument]) -> None:
        self.engine = engine
        self.instruments = instruments
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def equity(self, ts: datetime, equity: str) -> None:
        AccountSnapshot.objects.create(
            engine=self.engine,
            ts=ts,
            equity=Decimal(equity),
            cash=Decimal(equity),
            seq=self.next_seq(),
        )

    def metric(self, ts: datetime, name: str = "cpu_pct", value: float = 12.0) -> None:
        MetricSample.objects.create(
            engine=self.engine, ts=ts, name=name, value=value, seq=self.next_seq()
        )

    def order(self, ts: datetime, side: str, qty: str, symbol: str, status: str) -> Order:
        seq = self.next_seq()
        return Order.objects.create(
            engine=self.engine,
            client_order_id=f"o{seq}",
            instrument=self.instruments[symbol],
            side=side,
            order_type="market",
            quantity=Decimal(qty),
            status=status,
            filled_quantity=Decimal(qty) if status == "filled" else Decimal(0),
            created_at=ts,
            updated_at=ts,
            last_seq=seq,
        )

    def fill(
        self,
        ts: datetime,
        side: str,
        qty: str,
        symbol: str,
        price: str,
        fee: str,
        expected: str | None,
    ) -> Fill:
        order = self.order(ts - timedelta(minutes=1), side, qty, symbol, "filled")
        seq = self.next_seq()
        return Fill.objects.create(
            engine=self.engine,
            fill_id=f"f{seq}",
            order=order,
            instrument=self.instruments[symbol],
            side=side,
            quantity=Decimal(qty),
            price=Decimal(price),
            fee=Decimal(fee),
            expected_price=Decimal(expected) if expected else None,
            ts=ts,
            seq=seq,
        )

    def command(self, ts: datetime, kind: str = "pause") -> None:
        command = Command.objects.create(
            engine=self.engine, kind=kind, reason="test", issued_by_label="ada-admin"
        )
        Command.objects.filter(pk=command.pk).update(created_at=ts)

    def alert(self, fired_at: datetime | None, state: str, source: str = "rule") -> None:
        Alert.objects.create(
            engine=self.engine,
            state=state,
            severity=Severity.WARNING,
            summary="test alert",
            source=source,
            started_at=fired_at or at(19, 12),
            fired_at=fired_at,
        )


@pytest.fixture
def week_data(
    make_engine: Callable[..., tuple[Engine, str]], instruments: dict[str, Instrument]
) -> dict[str, Any]:
    alpha = make_engine("alpha", mode="paper", strategy_tags=["momentum"])[0]
    beta = make_engine("beta", mode="paper", strategy_tags=["mean-rev"])[0]
    a = Builder(alpha, instruments)
    for ts, equity in [
        (at(13, 20), "100000"),
        (at(16, 10), "100500"),
        (at(16, 20), "101000"),
        (at(17, 9), "99500"),
        (at(17, 12), "99990"),
        (at(18, 20), "101989.8"),
        (at(19, 20), "100969.902"),
        (at(23, 0), "50000"),
    ]:
        a.equity(ts, equity)
    a.metric(at(16, 10, 0, 30))
    a.metric(at(16, 10, 1))
    a.fill(at(13, 15), "buy", "10", "AAA", "100", "1", None)
    a.fill(at(16, 11), "sell", "10", "AAA", "110", "1", "111")
    a.fill(at(17, 10), "buy", "5", "BBB", "50", "0.5", "49.9")
    a.fill(at(17, 11), "sell", "8", "BBB", "48", "0.8", "48")
    a.fill(at(18, 14), "buy", "3", "BBB", "45", "0.3", None)
    a.fill(at(19, 15), "buy", "2", "AAA", "120", "0", "119.5")
    a.order(at(19, 16), "buy", "1", "AAA", "rejected")
    a.order(at(19, 16, 30), "buy", "1", "AAA", "cancelled")
    a.order(at(20, 10), "buy", "1", "AAA", "accepted")
    a.order(at(23, 9), "buy", "1", "AAA", "rejected")  # next week
    a.alert(at(17, 10, 30), "resolved")
    a.alert(at(19, 9), "firing")
    a.alert(at(13, 9), "resolved")  # before the week
    a.alert(None, "pending", source="risk:test")  # never fired
    Alert.objects.create(
        engine=None,
        state="resolved",
        severity=Severity.INFO,
        summary="fleet-wide",
        started_at=at(18, 8),
        fired_at=at(18, 8),
    )
    a.command(at(16, 12))
    a.command(at(18, 9), kind="resume")
    a.command(at(23, 1))  # next week

    b = Builder(beta, instruments)
    for ts, equity in [(at(13, 20), "50000"), (at(16, 20), "50500"), (at(18, 20), "49500")]:
        b.equity(ts, equity)
    b.command(at(17, 15))
    return {"alpha": alpha, "beta": beta}
