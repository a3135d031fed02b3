"""The round trips the gates and the comparison count in the database are those of the one copy
of the trade arithmetic (controlplane.trading_math.round_trips, exact): the same count and the
same winners, for fills that cross zero, carry fees, trade a multiplied instrument, and open
before the period."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from controlplane.models import Fill, Instrument, Order
from controlplane.trading_math import round_trips
from golive import gates

pytestmark = pytest.mark.django_db

START = datetime(2026, 11, 2, tzinfo=UTC)
END = datetime(2026, 11, 9, tzinfo=UTC)


def fill(engine, instrument, n: int, side: str, quantity: str, price: str, fee: str, ts) -> Fill:
    order = Order.objects.create(
        engine=engine,
        client_order_id=f"o{n}",
        instrument=instrument,
        side=side,
        order_type="market",
        quantity=Decimal(quantity),
        status="filled",
        filled_quantity=Decimal(quantity),
        created_at=ts,
        updated_at=ts,
        last_seq=n,
    )
    return Fill.objects.create(
        engine=engine,
        fill_id=f"f{n}",
        order=order,
        instrument=instrument,
        side=side,
        quantity=Decimal(quantity),
        price=Decimal(price),
        fee=Decimal(fee),
        ts=ts,
        seq=n,
    )


def expected(engine, start: datetime, end: datetime) -> tuple[int, int]:
    """Round trips and winners by trading_math, in Decimal, from every fill before ``end``."""
    per_instrument = defaultdict(list)
    for f in Fill.objects.filter(engine=engine, ts__lt=end).order_by("ts", "seq"):
        per_instrument[f.instrument_id].append(
            (f.side, f.quantity, f.price, f.fee, f.instrument.multiplier, f.ts)
        )
    trips = [t for fills in per_instrument.values() for t in round_trips(fills, start, end)]
    return len(trips), sum(1 for t in trips if t > 0)


def test_a_trip_at_exactly_zero_is_no_win_and_a_crossing_fill_is_split(make_engine):
    engine, _ = make_engine("trips-exact")
    aaa = Instrument.objects.create(symbol="AAA")
    ts = START + timedelta(hours=1)
    # Opened before the period, closed in it at the same price: exactly 0, fees none.
    fill(engine, aaa, 1, "buy", "0.3", "100.1", "0", START - timedelta(days=2))
    fill(engine, aaa, 2, "sell", "0.1", "100.1", "0", ts)
    fill(engine, aaa, 3, "sell", "0.2", "100.1", "0", ts + timedelta(minutes=1))
    # A sell of 5 from flat, then a buy of 8 that closes it (5 at 99: a win of 5 less 5/8 of the
    # fee 0.8, 4.5) and opens a long of 3, sold at 98: a loss of 3 + 3/8 x 0.8.
    fill(engine, aaa, 4, "sell", "5", "100", "0", ts + timedelta(minutes=2))
    fill(engine, aaa, 5, "buy", "8", "99", "0.8", ts + timedelta(minutes=3))
    fill(engine, aaa, 6, "sell", "3", "98", "0", ts + timedelta(minutes=4))
    measured = gates.measure(engine.pk, START, END)
    assert (measured.round_trips, measured.winning_trips) == (3, 1)
    assert (measured.round_trips, measured.winning_trips) == expected(engine, START, END)
    assert measured.win_rate == pytest.approx(100 / 3)
    # Before the crossing fill's trip closed, none of these: the period's end decides.
    early = gates.measure(engine.pk, START, ts + timedelta(minutes=3))
    assert (early.round_trips, early.winning_trips) == (1, 0)


def test_random_fills_give_trading_maths_round_trips(make_engine):
    rng = random.Random(7)
    engine, _ = make_engine("trips-random")
    instruments = [
        Instrument.objects.create(symbol="BBB"),
        Instrument.objects.create(symbol="FUT", asset_class="future", multiplier=Decimal(50)),
    ]
    ts = START - timedelta(days=1)
    positions = dict.fromkeys(instruments, 0)
    for n in range(1, 241):
        ts += timedelta(minutes=rng.choice([1, 7, 45]))
        instrument = rng.choice(instruments)
        # Mostly back towards flat, so that trips close (and fills cross zero).
        towards = "sell" if positions[instrument] > 0 else "buy"
        side = towards if rng.random() < 0.7 else {"buy": "sell", "sell": "buy"}[towards]
        quantity = rng.choice([1, 2, 3, 5])
        positions[instrument] += quantity if side == "buy" else -quantity
        fill(
            engine,
            instrument,
            n,
            side,
            str(quantity),
            f"{rng.uniform(99, 101):.2f}",
            rng.choice(["0", "0.25", "1.1"]),
            ts,
        )
    windows = [(START, END), (START - timedelta(days=5), START), (START + timedelta(days=1), END)]
    measured = gates.measure_many([(engine.pk, start, end) for start, end in windows])
    for (start, end), m in zip(windows, measured, strict=True):
        trips, wins = expected(engine, start, end)
        assert trips > 0
        assert (m.round_trips, m.winning_trips) == (trips, wins)


def test_a_window_starting_on_any_fill_counts_the_trip_open_at_its_start(make_engine):
    """The sums run from the last close before the window: windows that start on a fill, just
    after one (a fill crossing zero the instant before), or before any fill."""
    rng = random.Random(20261207)
    engine, _ = make_engine("trips-starts")
    instruments = [
        Instrument.objects.create(symbol="CCC"),
        Instrument.objects.create(symbol="FUT2", asset_class="future", multiplier=Decimal(50)),
        Instrument.objects.create(symbol="MINI", multiplier=Decimal("0.1")),
    ]
    ts = START - timedelta(days=3)
    stamps = []
    positions = dict.fromkeys(instruments, Decimal(0))
    for n in range(1, 181):
        ts += timedelta(minutes=rng.choice([0, 1, 7, 45, 300]))
        instrument = rng.choice(instruments)
        quantity = rng.choice(["0.5", "1", "1.5", "2.5", "4"])
        # Mostly back towards flat, so that trips close (and fills cross zero).
        towards = "sell" if positions[instrument] > 0 else "buy"
        side = towards if rng.random() < 0.7 else {"buy": "sell", "sell": "buy"}[towards]
        positions[instrument] += Decimal(quantity) if side == "buy" else -Decimal(quantity)
        fill(
            engine,
            instrument,
            n,
            side,
            quantity,
            f"{rng.uniform(99, 101):.2f}",
            rng.choice(["0", "0.25", "1.1"]),
            ts,
        )
        stamps.append(ts)
    starts = rng.sample(stamps, 15)
    starts += [s + timedelta(microseconds=1) for s in starts[:8]]
    starts += [START - timedelta(days=4)]
    windows = [(s, s + length) for s in starts for length in (timedelta(hours=5), END - START)]
    measured = gates.measure_many([(engine.pk, start, end) for start, end in windows])
    total = 0
    for (start, end), m in zip(windows, measured, strict=True):
        trips, wins = expected(engine, start, end)
        assert (m.round_trips, m.winning_trips) == (trips, wins), start
        total += trips
    assert total > 100
