"""Pre-trade limits: the checks themselves, their delivery over the socket, and the simulator."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from engine_sdk import limits as limits_module
from engine_sdk.gate import OrderRejected
from engine_sdk.limits import LimitRejected, PreTradeLimits


def limit(
    kind: str,
    threshold: str,
    *,
    id: int = 12,
    scope: str = "all",
    scope_value: str | None = None,
) -> dict[str, Any]:
    return {
        "id": id,
        "kind": kind,
        "threshold": threshold,
        "scope": scope,
        "scope_value": scope_value,
    }


def rejection(limits: PreTradeLimits, *args: Any, **kwargs: Any) -> LimitRejected:
    with pytest.raises(LimitRejected) as info:
        limits.check(*args, **kwargs)
    return info.value


# --- each kind -----------------------------------------------------------------------------------


def test_max_order_qty_allows_up_to_the_threshold_and_rejects_above_it() -> None:
    limits = PreTradeLimits(1, [limit("max_order_qty", "5000")])

    limits.check("AAPL", "buy", Decimal(5000))
    exc = rejection(limits, "AAPL", "buy", Decimal(250000))

    assert exc.reason == "pre-trade limit max_order_qty (#12): quantity 250000 exceeds 5000"
    assert (exc.limit_id, exc.limit_kind) == (12, "max_order_qty")
    assert isinstance(exc, OrderRejected)


def test_max_order_notional_uses_the_limit_price_then_the_reference_price() -> None:
    limits = PreTradeLimits(1, [limit("max_order_notional", "100000", id=3)])

    limits.check("AAPL", "buy", 500, Decimal("200"))  # exactly 100,000
    exc = rejection(limits, "AAPL", "buy", 501, Decimal("200"))
    assert exc.reason == ("pre-trade limit max_order_notional (#3): notional 100200 exceeds 100000")
    # A market order is valued at the reference price; the limit price wins when both are known.
    limits.check("AAPL", "buy", 500, None, Decimal("200"))
    assert "notional 100200" in rejection(limits, "AAPL", "buy", 501, None, Decimal("200")).reason
    limits.check("AAPL", "buy", 500, Decimal("200"), Decimal("1000"))


def test_max_order_notional_rejects_an_order_it_cannot_price() -> None:
    limits = PreTradeLimits(1, [limit("max_order_notional", "100000", id=3)])

    exc = rejection(limits, "AAPL", "buy", 1)

    assert exc.reason == "pre-trade limit max_order_notional (#3): no price to check notional"


def test_the_price_collar_compares_the_limit_price_with_the_reference() -> None:
    limits = PreTradeLimits(1, [limit("price_collar_pct", "5", id=4)])

    limits.check("AAPL", "buy", 10, Decimal("105"), Decimal("100"))
    limits.check("AAPL", "sell", 10, Decimal("95"), Decimal("100"))
    exc = rejection(limits, "AAPL", "buy", 10, Decimal("105.5"), Decimal("100"))
    assert exc.reason == (
        "pre-trade limit price_collar_pct (#4): price 105.5 is 5.5% from the reference 100, "
        "beyond 5%"
    )
    assert "95%" in rejection(limits, "AAPL", "sell", 10, Decimal("5"), Decimal("100")).reason
    # No collar without both prices: a market order, or no reference yet.
    limits.check("AAPL", "buy", 10, None, Decimal("100"))
    limits.check("AAPL", "buy", 10, Decimal("500"), None)


def test_the_order_rate_counts_passed_orders_in_a_sliding_second() -> None:
    limits = PreTradeLimits(1, [limit("max_order_rate", "3", id=5)])

    def order(now: float) -> None:
        limits.check("AAPL", "buy", 10, None, None, None, now)
        limits.record("AAPL", "buy", 10, None, None, now)

    for now in (10.0, 10.3, 10.6):
        order(now)
    exc = rejection(limits, "AAPL", "buy", 10, None, None, None, 10.9)
    assert exc.reason == "pre-trade limit max_order_rate (#5): 4 orders within 1 s exceeds 3"
    # The rejected order was not counted; the window slides past the first order at 11.0.
    order(11.0)
    with pytest.raises(LimitRejected):
        limits.check("AAPL", "buy", 10, None, None, None, 11.2)
    order(11.31)


def test_a_duplicate_order_is_rejected_within_its_window_only() -> None:
    limits = PreTradeLimits(1, [limit("duplicate_order", "2", id=6)])
    limits.check("AAPL", "buy", 100, Decimal("190.00"), None, None, 50.0)
    limits.record("AAPL", "buy", 100, Decimal("190.00"), None, 50.0)

    exc = rejection(limits, "AAPL", "buy", 100, Decimal("190.00"), None, None, 51.5)
    assert exc.reason == (
        "pre-trade limit duplicate_order (#6): the same order (AAPL buy 100 @ 190.00) passed "
        "1.5 s ago, within 2 s"
    )
    # Equal decimals are the same order; any other field makes it a different one.
    with pytest.raises(LimitRejected):
        limits.check("AAPL", "buy", Decimal("100.0"), Decimal("190"), None, None, 51.5)
    limits.check("AAPL", "sell", 100, Decimal("190.00"), None, None, 51.5)
    limits.check("AAPL", "buy", 101, Decimal("190.00"), None, None, 51.5)
    limits.check("AAPL", "buy", 100, Decimal("190.01"), None, None, 51.5)
    limits.check("MSFT", "buy", 100, Decimal("190.00"), None, None, 51.5)
    limits.check("AAPL", "buy", 100, None, None, None, 51.5)
    # The window slides: two seconds later the same order is new again.
    limits.check("AAPL", "buy", 100, Decimal("190.00"), None, None, 52.0)


def test_two_market_orders_alike_are_duplicates() -> None:
    limits = PreTradeLimits(1, [limit("duplicate_order", "1", id=6)])
    limits.record("AAPL", "sell", 10, None, None, 0.0)

    exc = rejection(limits, "AAPL", "sell", 10, None, Decimal("190"), None, 0.5)

    assert "(AAPL sell 10 at market)" in exc.reason


# --- scopes --------------------------------------------------------------------------------------


def test_a_symbol_scoped_limit_applies_to_that_symbol_only() -> None:
    limits = PreTradeLimits(1, [limit("max_order_qty", "10", scope="symbol", scope_value="AAPL")])

    limits.check("MSFT", "buy", 1000)
    assert rejection(limits, "AAPL", "buy", 11).limit_id == 12


def test_a_sector_scoped_limit_applies_to_orders_given_that_sector() -> None:
    limits = PreTradeLimits(
        1, [limit("max_order_qty", "10", scope="sector", scope_value="Technology")]
    )

    assert rejection(limits, "AAPL", "buy", 11, sector="Technology").limit_kind == "max_order_qty"
    limits.check("XOM", "buy", 1000, sector="Energy")
    limits.check("AAPL", "buy", 1000)  # no sector given: a sector limit cannot apply


def test_windows_count_only_the_orders_in_their_scope() -> None:
    limits = PreTradeLimits(
        1,
        [
            limit("max_order_rate", "1", id=1, scope="symbol", scope_value="AAPL"),
            limit("max_order_rate", "2", id=2, scope="sector", scope_value="Energy"),
        ],
    )
    for symbol, sector in (("AAPL", "Technology"), ("XOM", "Energy"), ("CVX", "Energy")):
        limits.check(symbol, "buy", 1, sector=sector, now=0.0)
        limits.record(symbol, "buy", 1, sector=sector, now=0.0)

    assert rejection(limits, "AAPL", "buy", 1, sector="Technology", now=0.5).limit_id == 1
    assert rejection(limits, "XOM", "sell", 1, sector="Energy", now=0.5).limit_id == 2
    limits.check("MSFT", "buy", 1, sector="Technology", now=0.5)


def test_every_limit_that_applies_is_checked() -> None:
    limits = PreTradeLimits(
        1,
        [
            limit("max_order_qty", "1000", id=1),
            limit("max_order_qty", "10", id=2, scope="symbol", scope_value="PFE"),
        ],
    )

    assert rejection(limits, "PFE", "buy", 11).limit_id == 2
    assert rejection(limits, "AAPL", "buy", 1001).limit_id == 1


# --- reading the wire ----------------------------------------------------------------------------


def test_malformed_limits_are_skipped_with_a_warning_and_the_rest_enforced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad: list[Any] = [
        "max_order_qty",
        {"kind": "max_order_qty", "threshold": "1"},  # no id
        {**limit("max_order_qty", "1"), "id": True},
        {**limit("max_order_qty", "1"), "id": "12"},
        limit("max_order_qty", "lots"),
        limit("max_order_qty", "-1"),
        limit("max_order_qty", "NaN"),
        limit("max_order_qty", "Infinity"),
        {**limit("max_order_qty", "1"), "threshold": None},
        limit("max_order_qty", "1", scope="engine", scope_value="alpha"),
        limit("max_order_qty", "1", scope="symbol"),
        limit("max_order_qty", "1", scope="sector", scope_value=""),
        {**limit("max_order_qty", "1"), "kind": 7},
    ]
    good = limit("max_order_qty", "100", id=99)
    with caplog.at_level(logging.WARNING, logger="engine_sdk.limits"):
        limits = PreTradeLimits(8, [*bad, good])

    assert [lim.id for lim in limits.limits] == [99]
    assert len(limits.skipped) == len(bad)
    assert sum("malformed pre-trade limit" in r.getMessage() for r in caplog.records) == len(bad)
    limits.check("AAPL", "buy", 100)
    assert rejection(limits, "AAPL", "buy", 101).limit_id == 99


def test_lenient_readings_stay_safe() -> None:
    # A missing scope means every order; a number where a string was expected is still read.
    limits = PreTradeLimits(
        1,
        [
            {"id": 1, "kind": "max_order_qty", "threshold": 10},
            {"id": 2, "kind": "max_order_notional", "threshold": "1e3", "extra": "ignored"},
        ],
    )

    assert rejection(limits, "AAPL", "buy", 11).limit_id == 1
    assert rejection(limits, "AAPL", "buy", 10, Decimal("101")).limit_id == 2


def test_an_unknown_kind_is_ignored_and_logged_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits_module, "_ignored_kinds_logged", set())
    wire = [limit("max_position_pct", "5", id=1), limit("max_order_qty", "10", id=2)]
    with caplog.at_level(logging.WARNING, logger="engine_sdk.limits"):
        first = PreTradeLimits(1, wire)
        PreTradeLimits(2, wire)

    assert [lim.kind for lim in first.limits] == ["max_order_qty"]
    assert first.skipped == []
    assert sum("max_position_pct" in r.getMessage() for r in caplog.records) == 1


def test_from_wire_refuses_an_envelope_it_cannot_read_and_round_trips() -> None:
    for data in (
        None,
        [],
        {"limits": []},
        {"limits_version": "4", "limits": []},
        {"limits_version": True, "limits": []},
        {"limits_version": 4, "limits": {"id": 1}},
    ):
        with pytest.raises(ValueError):
            PreTradeLimits.from_wire(data)

    wire = {"limits_version": 4, "limits": [limit("max_order_qty", "10", id=2)]}
    limits = PreTradeLimits.from_wire(wire)
    assert (limits.version, len(limits)) == (4, 1)
    assert limits.to_wire() == wire


def test_a_new_version_keeps_counting_the_orders_the_old_one_saw() -> None:
    old = PreTradeLimits(1, [limit("duplicate_order", "5", id=1)])
    old.record("AAPL", "buy", 10, Decimal("190"), None, 100.0)

    new = PreTradeLimits(2, [limit("duplicate_order", "5", id=1), limit("max_order_rate", "1")])
    new.take_history_from(old)

    assert rejection(new, "AAPL", "buy", 10, Decimal("190"), None, None, 100.5).limit_id == 1
    assert rejection(new, "MSFT", "buy", 10, None, None, None, 100.5).limit_kind == (
        "max_order_rate"
    )
