"""The ingest's arithmetic on plain values (controlplane.ingest.ledger), without a database: the
position ledger, the session figures, and the engine row's counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from controlplane.ingest import ledger
from controlplane.ingest.ledger import Counts, OrderState, Position, Session

D = Decimal
NOW = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
MIDNIGHT = datetime(2026, 11, 23, tzinfo=UTC)


def _fill(pos: Position, side: str, qty: str, price: str, fee: str = "0", mult: str = "1") -> None:
    ledger.apply_fill(
        pos, side=side, quantity=D(qty), price=D(price), fee=D(fee), multiplier=D(mult)
    )


# Fills as the protocol allows them, kept to a few digits so the sums stay exact in Decimal.
quantities = st.decimals(min_value=D("0.01"), max_value=D(1000), places=2)
prices = st.decimals(min_value=D("0.01"), max_value=D(10_000), places=2)
fees = st.decimals(min_value=D(0), max_value=D(5), places=2)
fills = st.lists(
    st.tuples(st.sampled_from(["buy", "sell"]), quantities, prices, fees), min_size=1, max_size=30
)
multipliers = st.sampled_from([D(1), D(50), D("0.5"), D("0.01")])


def _apply(fills: list[tuple[str, Decimal, Decimal, Decimal]], multiplier: Decimal) -> Position:
    pos = Position(instrument_id=1)
    for side, quantity, price, fee in fills:
        ledger.apply_fill(
            pos, side=side, quantity=quantity, price=price, fee=fee, multiplier=multiplier
        )
    return pos


def test_buying_more_averages_the_price_by_quantity():
    pos = Position(instrument_id=1)
    _fill(pos, "buy", "10", "100")
    _fill(pos, "buy", "30", "104")
    assert (pos.quantity, pos.avg_price, pos.realized_pnl) == (D(40), D(103), D(0))
    assert pos.last_price == D(104)


def test_the_average_keeps_eight_decimal_places():
    pos = Position(instrument_id=1)
    _fill(pos, "buy", "1", "1")
    _fill(pos, "buy", "2", "2")
    assert pos.avg_price == D("1.66666667")


def test_selling_part_realises_pnl_at_the_average_and_keeps_it():
    pos = Position(instrument_id=1)
    _fill(pos, "buy", "100", "10")
    _fill(pos, "sell", "40", "12", fee="1.5")
    assert (pos.quantity, pos.avg_price) == (D(60), D(10))
    assert pos.realized_pnl == D("78.5")  # 40 * (12 - 10) - 1.5


def test_closing_a_position_leaves_no_average():
    pos = Position(instrument_id=1)
    _fill(pos, "sell", "5", "20")
    _fill(pos, "buy", "5", "18")
    assert (pos.quantity, pos.avg_price, pos.realized_pnl) == (D(0), D(0), D(10))


def test_a_fill_through_zero_realises_what_it_closes_and_opens_the_rest_at_its_price():
    pos = Position(instrument_id=1)
    _fill(pos, "buy", "100", "10")
    _fill(pos, "sell", "150", "12", fee="1.5")
    assert pos.quantity == D(-50)
    assert pos.avg_price == D(12)
    assert pos.realized_pnl == D("198.5")  # 100 * (12 - 10) - 1.5


def test_shorts_and_multipliers():
    pos = Position(instrument_id=1)
    _fill(pos, "sell", "2", "100", mult="50")
    _fill(pos, "buy", "1", "90", mult="50")
    assert pos.quantity == D(-1)
    assert pos.avg_price == D(100)
    assert pos.realized_pnl == D(500)  # 1 contract * 10 points * 50


@given(fills=fills, multiplier=multipliers)
def test_the_quantity_is_the_sum_of_the_signed_fills(fills, multiplier):
    pos = _apply(fills, multiplier)
    assert pos.quantity == sum(ledger.signed_quantity(s, q) for s, q, _, _ in fills)
    assert pos.last_price == fills[-1][2]
    if pos.quantity == 0:
        assert pos.avg_price == 0


@given(fills=fills, multiplier=multipliers)
def test_fees_come_off_the_realised_pnl_and_nothing_else(fills, multiplier):
    with_fees = _apply(fills, multiplier)
    without = _apply([(s, q, p, D(0)) for s, q, p, _ in fills], multiplier)
    assert with_fees.realized_pnl == without.realized_pnl - sum(fee for *_, fee in fills)
    assert (with_fees.quantity, with_fees.avg_price) == (without.quantity, without.avg_price)


@given(
    side=st.sampled_from(["buy", "sell"]),
    opening=st.lists(st.tuples(quantities, prices), min_size=1, max_size=20),
)
def test_adding_to_one_side_keeps_the_average_between_the_prices_paid(side, opening):
    pos = _apply([(side, q, p, D(0)) for q, p in opening], D(1))
    assert min(p for _, p in opening) <= pos.avg_price <= max(p for _, p in opening)
    assert abs(pos.quantity) == sum(q for q, _ in opening)
    assert pos.realized_pnl == 0


@given(fills=fills, multiplier=multipliers, mark=prices)
def test_realised_plus_open_pnl_is_the_cash_flow_of_the_fills(fills, multiplier, mark):
    """At any mark price, what the ledger realised plus what its open position is worth against
    its average equals the cash the fills paid and received plus the position at the mark, less
    fees: P&L is neither lost nor made up by averaging, flips or closes (up to the average's
    rounding to eight places)."""
    pos = _apply(fills, multiplier)
    cash = sum(-ledger.signed_quantity(s, q) * p for s, q, p, _ in fills)
    expected = multiplier * (cash + pos.quantity * mark) - sum(fee for *_, fee in fills)
    booked = pos.realized_pnl + multiplier * pos.quantity * (mark - pos.avg_price)
    volume = sum(q for _, q, _, _ in fills)
    assert abs(booked - expected) <= multiplier * volume * len(fills) * D("1e-8")


@given(
    held=st.tuples(st.sampled_from(["buy", "sell"]), quantities, prices),
    through=st.tuples(quantities, prices, fees),
    multiplier=multipliers,
)
def test_a_fill_past_zero_closes_all_then_opens_at_its_price(held, through, multiplier):
    side, held_qty, held_price = held
    extra, price, fee = through
    pos = _apply([(side, held_qty, held_price, D(0))], multiplier)
    other = "sell" if side == "buy" else "buy"
    ledger.apply_fill(
        pos, side=other, quantity=held_qty + extra, price=price, fee=fee, multiplier=multiplier
    )
    direction = 1 if side == "buy" else -1
    assert pos.quantity == -direction * extra
    assert pos.avg_price == price
    assert pos.realized_pnl == held_qty * (price - held_price) * direction * multiplier - fee


def _fee(fee: str, fee_currency: str | None, currency: str, account: str = "USD", **rates: str):
    return ledger.fee_in_instrument_currency(
        D(fee),
        fee_currency=fee_currency,
        currency=currency,
        account_currency=account,
        fx_rates=rates,
    )


def test_a_fee_in_the_account_currency_of_an_instrument_in_it_is_taken_as_it_is():
    assert _fee("1.25", None, "USD") == D("1.25")
    assert _fee("1.25", "USD", "USD") == D("1.25")
    # An engine that never sent an account event accounts in the protocol's default, USD.
    assert _fee("1.25", None, "USD", account="") == D("1.25")


def test_a_fee_in_another_currency_is_converted_through_the_account_currency():
    # 0.01 BNB at 600 USDT, on a USDT pair in a USDT account.
    assert _fee("0.01", "BNB", "USDT", account="USDT", BNB="600") == D("6")
    # 2 EUR at 1.1 USD, on a yen instrument at 0.0067 USD a yen: 2.2 / 0.0067 yen.
    assert _fee("2", "EUR", "JPY", EUR="1.1", JPY="0.0067") == D("328.35820896")
    # The instrument's own currency needs no rate at all.
    assert _fee("3", "EUR", "EUR") == D(3)
    # A rebate stays negative.
    assert _fee("-0.5", "BNB", "USDT", account="USDT", BNB="600") == D(-300)


def test_an_account_currency_fee_is_converted_into_the_instruments_currency():
    # A dollar account trading a euro future: a 1.1 dollar fee is 1 euro off the euro P&L.
    assert _fee("1.1", None, "EUR", EUR="1.1") == D(1)


def test_a_fee_whose_rate_is_unknown_is_none_never_counted_at_one():
    assert _fee("0.01", "BNB", "USDT", account="USDT") is None
    assert _fee("1.1", None, "EUR") is None  # the instrument's currency has no rate
    assert _fee("2", "EUR", "JPY", EUR="1.1") is None
    # Nothing to convert: a zero fee needs no rate.
    assert _fee("0", "BNB", "USDT", account="USDT") == D(0)


@given(fills, st.sampled_from([D("0.5"), D("1.1"), D(600)]))
def test_a_converted_fee_comes_off_the_pnl_as_the_fee_times_its_rate(fills, rate):
    # A euro instrument in a euro account, fees in BNB: each comes off at its rate.
    pos = Position(instrument_id=1)
    for side, quantity, price, fee in fills:
        converted = _fee(str(fee), "BNB", "EUR", account="EUR", BNB=str(rate))
        assert converted == fee * rate
        ledger.apply_fill(
            pos, side=side, quantity=quantity, price=price, fee=converted, multiplier=D(1)
        )
    free = _apply([(s, q, p, D(0)) for s, q, p, _ in fills], D(1))
    assert pos.realized_pnl == free.realized_pnl - sum(f for *_, f in fills) * rate


def test_a_report_that_disagrees_is_flagged_from_when_first_seen_until_it_agrees():
    pos = Position(instrument_id=1, quantity=D(10))
    ledger.flag_mismatch(pos, NOW)
    assert pos.mismatch_since is None  # nothing reported
    ledger.apply_report(pos, quantity=D(12), avg_price=D(100), ts=NOW)
    assert (pos.reported_quantity, pos.reported_avg_price, pos.reported_at) == (D(12), D(100), NOW)
    ledger.flag_mismatch(pos, NOW)
    ledger.flag_mismatch(pos, NOW + timedelta(minutes=5))
    assert pos.mismatch_since == NOW
    _fill(pos, "buy", "2", "100")
    ledger.flag_mismatch(pos, NOW + timedelta(minutes=6))
    assert pos.mismatch_since is None


def test_the_first_snapshot_starts_the_session_and_the_high_water_mark():
    session = ledger.advance_session(Session(None, None, None), NOW, D(1000))
    assert session == Session(NOW, D(1000), D(1000))
    assert ledger.day_pnl(session, D(1000)) == 0
    assert ledger.drawdown_pct(session.high_water_mark, D(1000)) == 0


def test_the_session_starts_again_on_each_utc_day():
    session = Session(NOW, D(1000), D(1200))
    later_today = ledger.advance_session(session, NOW + timedelta(hours=9), D(900))
    assert later_today == Session(NOW, D(1000), D(1200))
    # 01:00 in UTC+02:00 is still the same UTC day; 00:30 UTC the next day is a new session.
    plus_two = timezone(timedelta(hours=2))
    same_day = datetime(2026, 11, 24, 1, 0, tzinfo=plus_two)
    assert ledger.advance_session(session, same_day, D(950)).start_at == NOW
    next_day = datetime(2026, 11, 24, 0, 30, tzinfo=UTC)
    assert ledger.advance_session(session, next_day, D(950)) == Session(next_day, D(950), D(1200))


def test_day_pnl_and_drawdown():
    session = Session(NOW, D(1000), D(1200))
    assert ledger.day_pnl(session, D(900)) == D(-100)
    assert ledger.drawdown_pct(D(1200), D(900)) == D("25.000000")
    assert ledger.drawdown_pct(D(3), D(2)) == D("33.333333")
    assert ledger.drawdown_pct(None, D(900)) == 0
    assert ledger.drawdown_pct(D(0), D(-5)) == 0


@given(equities=st.lists(prices, min_size=1, max_size=30))
def test_the_high_water_mark_is_the_highest_equity_and_drawdown_is_below_it(equities):
    session = Session(None, None, None)
    for n, equity in enumerate(equities):
        session = ledger.advance_session(session, NOW + timedelta(minutes=n), equity)
    assert session.high_water_mark == max(equities)
    assert session.start_equity == equities[0]
    assert D(0) <= ledger.drawdown_pct(session.high_water_mark, equities[-1]) < 100


STATUSES = ["new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "expired"]
WORKING = {"new", "accepted", "partially_filled"}


def _state(status: str, created_at: datetime, seq: int) -> OrderState:
    return OrderState(status in WORKING, status == "rejected", created_at, seq)


def _recount(rows: dict[str, tuple[str, datetime, int]], fills: int) -> Counts:
    """The counts by counting every row, as the database would."""
    today = [status for status, created, _ in rows.values() if created >= MIDNIGHT]
    working = sum(status in WORKING for status, _, _ in rows.values())
    return Counts(NOW.date(), len(today), today.count("rejected"), fills, working)


orders = st.tuples(st.sampled_from(STATUSES), st.booleans(), st.integers(1, 50))


@given(
    stored=st.dictionaries(st.sampled_from("abcdefgh"), orders, max_size=8),
    reports=st.dictionaries(st.sampled_from("abcdefghijkl"), orders, max_size=12),
    fill_ages=st.lists(st.integers(0, 20 * 3600), max_size=10),
    fills_before=st.integers(0, 5),
)
def test_the_counts_follow_the_rows_as_the_upsert_leaves_them(
    stored, reports, fill_ages, fills_before
):
    """Counting a batch's changes gives what counting every row again would: a new order is
    added, a stored one changes only for a newer report and keeps its creation time."""

    def created(today: bool) -> datetime:
        return NOW - timedelta(hours=1 if today else 20)

    rows = {c: (status, created(today), seq) for c, (status, today, seq) in stored.items()}
    before = _recount(rows, fills_before)
    changes = []
    for coid, (status, today, seq) in reports.items():
        if coid not in rows:
            changes.append((None, _state(status, created(today), seq)))
            rows[coid] = (status, created(today), seq)
            continue
        _, old_created, old_seq = rows[coid]
        changes.append((_state(*rows[coid]), _state(status, old_created, seq)))
        if seq > old_seq:
            rows[coid] = (status, old_created, seq)
    fill_times = [NOW - timedelta(seconds=age) for age in fill_ages]
    fills_today = fills_before + sum(ts >= MIDNIGHT for ts in fill_times)
    assert ledger.count(before, changes, fill_times, NOW) == _recount(rows, fills_today)


def test_a_new_day_counts_from_zero_but_keeps_the_working_orders():
    before = Counts(NOW.date() - timedelta(days=1), orders=7, rejected=2, fills=30, working=3)
    new_order = _state("rejected", NOW, 9)
    after = ledger.count(before, [(None, new_order)], [NOW, MIDNIGHT - timedelta(1)], NOW)
    assert after == Counts(NOW.date(), orders=1, rejected=1, fills=1, working=3)
