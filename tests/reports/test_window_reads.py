"""The analytics read a period's fills and, before them, only the fills of the round trip each
instrument has open at its start; their figures are those of every fill since the engine began,
run through trading_math.round_trips (the way they were computed before), on data made to be
awkward: positions open across the start, fills crossing zero on and around it, several
instruments, multipliers, fees in another currency."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from controlplane.models import Engine, Fill, Instrument
from controlplane.trading_math import ZERO, convert, in_account_currency, round_trips
from dashboard.overview import slippage_bps
from dashboard.reports import analytics

T0 = datetime(2026, 3, 2, tzinfo=UTC)
RATES = {"EUR": "1.08", "JPY": "0.0067"}


def _since_inception(ids: list[int], start: datetime, end: datetime) -> dict[int, dict]:
    """Round trips, fills and slippage of each engine from every fill before ``end``."""
    accounts = {
        pk: (currency or "USD", rates or {})
        for pk, currency, rates in Engine.objects.filter(pk__in=ids).values_list(
            "pk", "account_currency", "fx_rates"
        )
    }
    out: dict[int, dict] = {
        i: {"trips": [], "unconverted": set(), "fills": 0, "slippages": []} for i in ids
    }
    by_key: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    currencies: dict[tuple[int, int], str] = {}
    unknown: dict[tuple[int, int], set[str]] = defaultdict(set)
    rows = (
        Fill.objects.filter(engine_id__in=ids, ts__lt=end)
        .order_by("engine_id", "instrument_id", "ts", "seq")
        .values_list(
            "engine_id",
            "instrument_id",
            "side",
            "quantity",
            "price",
            "fee",
            "expected_price",
            "ts",
            "instrument__multiplier",
            "fee_currency",
            "instrument__currency",
        )
    )
    for engine_id, instrument_id, side, qty, price, fee, expected, ts, mult, fee_cur, cur in rows:
        key = (engine_id, instrument_id)
        currencies[key] = cur
        if fee:
            account, rates = accounts[engine_id]
            converted = convert(fee, fee_cur or account, cur, account, rates)
            if converted is None:
                unknown[key].add(fee_cur or account)
            fee = converted
        by_key[key].append((side, qty, price, fee or ZERO, mult, ts))
        if ts >= start:
            out[engine_id]["fills"] += 1
            slip = slippage_bps(side, price, expected)
            if slip is not None:
                out[engine_id]["slippages"].append(slip)
    for key, fills in by_key.items():
        account, rates = accounts[key[0]]
        for trip in round_trips(fills, start, end):
            converted = (
                None if unknown[key] else in_account_currency(trip, currencies[key], account, rates)
            )
            if converted is None:
                out[key[0]]["unconverted"] |= unknown[key] or {currencies[key]}
            out[key[0]]["trips"].append(converted)
    return out


def _assert_same(ids: list[int], start: datetime, end: datetime) -> int:
    expected = _since_inception(ids, start, end)
    got = analytics.collect(ids, start, end)
    for engine_id in ids:
        item, ref = got[engine_id], expected[engine_id]
        # The same trips in the same order, to the last digit (Decimal, compared with their
        # representation so that 1.0 and 1.00 would differ too).
        assert [str(t) for t in item.trips] == [str(t) for t in ref["trips"]], (start, engine_id)
        assert item.unconverted == ref["unconverted"]
        assert item.fills == ref["fills"]
        assert item.slippages == ref["slippages"]
    return sum(len(e["trips"]) for e in expected.values())


class Tape:
    """Fills of one engine, written straight to the table (as the ingest stores them)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.seq = 0
        self.rows: list[Fill] = []

    def fill(
        self,
        ts: datetime,
        side: str,
        qty: str,
        instrument: Instrument,
        price: str,
        fee: str = "0",
        fee_currency: str = "",
        expected: str | None = None,
    ) -> None:
        self.seq += 1
        self.rows.append(
            Fill(
                engine=self.engine,
                fill_id=f"f{self.seq}",
                order_id=self.seq,
                instrument=instrument,
                side=side,
                quantity=Decimal(qty),
                price=Decimal(price),
                fee=Decimal(fee),
                fee_currency=fee_currency,
                expected_price=Decimal(expected) if expected else None,
                ts=ts,
                seq=self.seq,
            )
        )

    def save(self) -> None:
        Fill.objects.bulk_create(self.rows)


def _engine(make_engine: Any, name: str) -> Engine:
    engine = make_engine(name)[0]
    Engine.objects.filter(pk=engine.pk).update(account_currency="USD", fx_rates=RATES)
    return engine


@pytest.fixture
def books(db: None) -> dict[str, Instrument]:
    return {
        "AAA": Instrument.objects.create(symbol="AAA"),
        "ES": Instrument.objects.create(symbol="ES", multiplier=Decimal(50)),
        "DAX": Instrument.objects.create(symbol="DAX", multiplier=Decimal("0.25"), currency="EUR"),
        "NK": Instrument.objects.create(symbol="NK", multiplier=Decimal(5), currency="JPY"),
    }


def test_a_random_tape_gives_every_period_the_trips_of_every_fill_since_inception(
    make_engine: Any, books: dict[str, Instrument]
) -> None:
    rng = random.Random(20261207)
    engines = [_engine(make_engine, f"tape-{i}") for i in range(3)]
    stamps: list[datetime] = []
    for engine in engines:
        tape = Tape(engine)
        ts = T0
        for _ in range(400):
            # Several fills at the same instant now and then: (ts, seq) orders them.
            ts += timedelta(minutes=rng.choice([0, 1, 7, 45, 300]))
            instrument = books[rng.choice(list(books))]
            side = rng.choice(["buy", "sell"])
            qty = str(rng.choice([1, 2, 3, 5, 8]) * Decimal("0.5"))
            price = str(Decimal(rng.randint(9000, 11000)) / 100)
            fee = rng.choice(["0", "0.13", "1.7"])
            fee_currency = rng.choice(["", "", "EUR", "JPY"]) if fee != "0" else ""
            expected = rng.choice([None, price, str(Decimal(price) + Decimal("0.05"))])
            tape.fill(ts, side, qty, instrument, price, fee, fee_currency, expected)
            stamps.append(ts)
        tape.save()
    ids = [e.pk for e in engines]
    # Periods starting on a fill (it belongs to the period), just after one, and between.
    starts = sorted(rng.sample(stamps, 12))
    starts += [s + timedelta(microseconds=1) for s in starts[:6]] + [T0, T0 - timedelta(days=1)]
    trips = 0
    for start in starts:
        for length in (timedelta(hours=6), timedelta(days=7)):
            trips += _assert_same(ids, start, start + length)
    assert trips > 200  # the periods did hold round trips to compare


def test_a_fill_crossing_zero_at_the_start_and_just_before_it(
    make_engine: Any, books: dict[str, Instrument]
) -> None:
    engine = _engine(make_engine, "edges")
    start = T0 + timedelta(days=7)
    tape = Tape(engine)
    es, aaa, dax = books["ES"], books["AAA"], books["DAX"]
    # ES: long 5, then a sell of 8 one microsecond before the start (closes, opens short 3),
    # closed in the period: the trip open at the start holds 3/8 of that fill and its fee.
    tape.fill(T0, "buy", "5", es, "100", "2", "EUR")
    tape.fill(start - timedelta(microseconds=1), "sell", "8", es, "101", "0.8")
    tape.fill(start + timedelta(hours=1), "buy", "3", es, "99.5", "0.3")
    # AAA: a trip closed long before (never read again), then long 2 crossing zero exactly at
    # the start (the fill is the period's: its closing part closes a trip in it).
    tape.fill(T0, "buy", "4", aaa, "10", "0.1")
    tape.fill(T0 + timedelta(hours=1), "sell", "4", aaa, "11", "0.1")
    tape.fill(T0 + timedelta(days=1), "buy", "2", aaa, "10", "0.2")
    tape.fill(start, "sell", "6", aaa, "12", "0.6")
    tape.fill(start + timedelta(days=1), "buy", "4", aaa, "11", "0.4")
    # DAX: built up over several fills, never flat before the start, closed in two steps.
    for day, qty in enumerate(["1", "2", "1.5"]):
        tape.fill(T0 + timedelta(days=day), "buy", qty, dax, str(15000 + day), "1")
    tape.fill(start + timedelta(hours=2), "sell", "3", dax, "15100", "1")
    tape.fill(start + timedelta(hours=3), "sell", "1.5", dax, "15200", "1")
    tape.save()
    end = start + timedelta(days=7)
    assert _assert_same([engine.pk], start, end) == 4
    opened = analytics._open_trips([engine.pk], start)
    assert opened[(engine.pk, es.pk)][2] == Decimal(-3)  # the sell left short 3
    assert opened[(engine.pk, dax.pk)][:2] == (None, None)  # from the first fill
    assert (engine.pk, aaa.pk) in opened  # long 2 at the start


def test_only_the_open_trips_fills_before_the_period_are_read(
    make_engine: Any, books: dict[str, Instrument]
) -> None:
    engine = _engine(make_engine, "reads")
    tape = Tape(engine)
    aaa, es = books["AAA"], books["ES"]
    for day in range(30):  # a month of closed trips in AAA, and one ES trip open since day 28
        tape.fill(T0 + timedelta(days=day), "buy", "1", aaa, "10", "0.1")
        tape.fill(T0 + timedelta(days=day, hours=1), "sell", "1", aaa, "10.5", "0.1")
    tape.fill(T0 + timedelta(days=27), "buy", "2", es, "100")
    tape.fill(T0 + timedelta(days=28), "sell", "3", es, "101")  # crosses: short 1 opens
    tape.fill(T0 + timedelta(days=29), "sell", "1", es, "102")
    start = T0 + timedelta(days=29, hours=12)
    tape.fill(start + timedelta(hours=1), "buy", "2", es, "99")
    tape.save()
    end = start + timedelta(days=1)
    opened = analytics._open_trips([engine.pk], start)
    assert list(opened) == [(engine.pk, es.pk)]  # AAA is flat: nothing of it before the start
    rows = analytics._trip_fills([engine.pk], start, end, opened)
    before = [(r[1], r[7]) for r in rows if r[7] < start]
    assert before == [
        (es.pk, T0 + timedelta(days=28)),
        (es.pk, T0 + timedelta(days=29)),
    ]
    assert _assert_same([engine.pk], start, end) == 1


def test_a_fee_without_a_rate_in_the_open_trip_makes_its_close_unknown(
    make_engine: Any, books: dict[str, Instrument]
) -> None:
    engine = _engine(make_engine, "bnb")
    tape = Tape(engine)
    start = T0 + timedelta(days=1)
    tape.fill(T0, "buy", "1", books["AAA"], "10", "0.01", "BNB")
    tape.fill(start + timedelta(hours=1), "sell", "1", books["AAA"], "11")
    tape.save()
    assert _assert_same([engine.pk], start, start + timedelta(days=1)) == 1
    item = analytics.collect([engine.pk], start, start + timedelta(days=1))[engine.pk]
    assert item.trips == [None] and item.unconverted == {"BNB"}
