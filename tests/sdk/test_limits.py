"""Pre-trade limits: the checks themselves, their delivery over the socket, and the simulator."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine_sdk import limits as limits_module
from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, CommandOutcome, EngineClient
from engine_sdk.gate import OrderRejected
from engine_sdk.limits import LimitRejected, PreTradeLimits
from engine_sdk.simulator import PaperEngine, SimOrder
from engine_sdk.state import LIMITS_FILE
from tests.sdk.conftest import TOKEN, FakeControlPlane, a_command
from tests.sdk.test_simulator import paper_engine

MakeClient = Callable[..., EngineClient]


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


# --- over the socket -----------------------------------------------------------------------------


async def connected(make_client: MakeClient, url: str, **options: Any) -> EngineClient:
    client = make_client(url, **options)
    await client.start()
    await client.wait_connected(timeout=5)
    return client


async def set_limits(control_plane: FakeControlPlane, version: Any, limits: Any) -> p.CommandResult:
    command = a_command("set_limits", limits_version=version, limits=limits)
    await control_plane.send(command)
    await control_plane.wait_for(
        lambda: any(r.command_id == command.command_id for r in control_plane.command_results)
    )
    return next(r for r in control_plane.command_results if r.command_id == command.command_id)


@pytest.mark.asyncio
async def test_the_limits_of_the_welcome_are_enforced_by_the_next_order(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits_version = 12
    control_plane.limits = [limit("max_order_qty", "5000", id=12)]
    client = await connected(make_client, control_plane.url)

    client.check_order("AAPL", "buy", Decimal(5000), Decimal(0))
    with pytest.raises(LimitRejected) as info:
        client.check_order("AAPL", "buy", Decimal(250000), Decimal(0))

    assert info.value.reason == "pre-trade limit max_order_qty (#12): quantity 250000 exceeds 5000"
    assert client.pretrade is not None and client.pretrade.version == 12
    assert (client.limits_version, client.limits) == (12, control_plane.limits)
    # A first start had nothing to enforce yet.
    assert control_plane.hellos[0].limits_version is None
    await client.close()


@pytest.mark.asyncio
async def test_check_order_passes_the_gate_first_and_lets_liquidating_orders_through(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits = [limit("max_order_qty", "10"), limit("max_order_rate", "1", id=13)]
    client = await connected(make_client, control_plane.url)

    client.gate.halt(reason="test")
    with pytest.raises(OrderRejected) as info:
        client.check_order("AAPL", "buy", Decimal(100), Decimal(0))
    assert not isinstance(info.value, LimitRejected)
    # A kill's own closing order is not stopped by a limit (nor counted by one).
    client.check_order("AAPL", "sell", Decimal(500), Decimal(500), liquidating=True)
    client.gate.resume(reason="test")
    client.check_order("AAPL", "buy", Decimal(5), Decimal(0), price=Decimal("190"))
    with pytest.raises(LimitRejected, match="max_order_rate"):
        client.check_order("MSFT", "buy", Decimal(5), Decimal(0))
    await client.close()


@pytest.mark.asyncio
async def test_the_windows_survive_the_limits_being_sent_again(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits = [limit("duplicate_order", "60", id=14)]
    client = await connected(make_client, control_plane.url)
    client.check_order("AAPL", "buy", Decimal(10), Decimal(0), price=Decimal("190"))

    # Every reconnect's welcome carries the limits again; a set_limits may resend them too.
    await control_plane.drop()
    await control_plane.wait_for(
        lambda: len(control_plane.hellos) == 2 and control_plane.connection is not None
    )
    await client.wait_connected(timeout=5)
    await set_limits(control_plane, 3, control_plane.limits)

    with pytest.raises(LimitRejected, match="duplicate_order"):
        client.check_order("AAPL", "buy", Decimal(10), Decimal(0), price=Decimal("190"))
    await client.close()


@pytest.mark.asyncio
async def test_a_set_limits_command_replaces_the_limits_for_the_next_order(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits = [limit("max_order_qty", "5000", id=12)]
    client = await connected(make_client, control_plane.url)
    client.check_order("AAPL", "buy", Decimal(100), Decimal(0))

    new_limits = [
        limit("max_order_qty", "50", id=20),
        limit("max_order_notional", "1000", id=21, scope="sector", scope_value="Energy"),
    ]
    result = await set_limits(control_plane, 4, new_limits)

    assert result.status == "succeeded"
    assert result.data == {"limits_version": 4, "capital_ceiling": None}
    assert (client.limits_version, client.limits) == (4, new_limits)
    with pytest.raises(LimitRejected) as info:
        client.check_order("AAPL", "buy", Decimal(100), Decimal(0))
    assert info.value.limit_id == 20
    with pytest.raises(LimitRejected, match=r"max_order_notional \(#21\)"):
        client.check_order(
            "XOM", "buy", Decimal(10), Decimal(0), price=Decimal("115"), sector="Energy"
        )
    client.check_order("XOM", "buy", Decimal(5), Decimal(0), price=Decimal("115"), sector="Energy")

    # The next connection says which version this engine enforces.
    await control_plane.drop()
    await control_plane.wait_for(lambda: len(control_plane.hellos) == 2)
    assert control_plane.hellos[1].limits_version == 4
    await client.close()


@pytest.mark.asyncio
async def test_an_older_or_unreadable_set_limits_leaves_the_limits_alone(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits_version = 7
    control_plane.limits = [limit("max_order_qty", "10", id=1)]
    client = await connected(make_client, control_plane.url)

    stale = await set_limits(control_plane, 6, [])
    unreadable = await set_limits(control_plane, "8", [])
    not_a_list = await set_limits(control_plane, 8, {"id": 1})

    assert stale.status == "succeeded"
    assert stale.data == {"limits_version": 7, "capital_ceiling": None}
    assert "older than 7; not applied" in stale.detail
    assert unreadable.status == not_a_list.status == "failed"
    assert "limits_version must be an integer" in unreadable.detail
    assert "limits must be a list" in not_a_list.detail
    assert client.pretrade is not None and client.pretrade.version == 7
    with pytest.raises(LimitRejected):
        client.check_order("AAPL", "buy", Decimal(11), Decimal(0))
    await client.close()


@pytest.mark.asyncio
async def test_a_restarted_engine_enforces_its_last_limits_before_it_reaches_the_server(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.limits_version = 5
    control_plane.limits = [limit("max_order_qty", "100", id=12), {"id": 3, "kind": "later"}]
    first = await connected(make_client, control_plane.url)
    await first.close()

    # Nothing listens here: the engine has only its journal directory to go by.
    offline = make_client("ws://127.0.0.1:9/ws/engine/v1")
    assert offline.pretrade is not None and offline.pretrade.version == 5
    assert (offline.limits_version, offline.limits) == (5, control_plane.limits)
    with pytest.raises(LimitRejected, match=r"max_order_qty \(#12\)"):
        offline.check_order("AAPL", "buy", Decimal(101), Decimal(0))
    offline.check_order("AAPL", "buy", Decimal(100), Decimal(0))

    # Back with the server: hello reports version 5, the welcome's version 6 takes over.
    control_plane.limits_version = 6
    control_plane.limits = [limit("max_order_qty", "1000", id=12)]
    second = await connected(make_client, control_plane.url)
    assert control_plane.hellos[-1].limits_version == 5
    second.check_order("AAPL", "buy", Decimal(1000), Decimal(0))
    saved = msgspec.json.decode((second.journal_dir / LIMITS_FILE).read_bytes())
    assert saved == {
        "limits_version": 6,
        "limits": control_plane.limits,
        "stage": None,
        "capital_ceiling": None,
    }
    await second.close()


@pytest.mark.asyncio
async def test_unreadable_saved_limits_refuse_new_orders_until_the_server_sends_limits(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    journal.mkdir()
    (journal / LIMITS_FILE).write_text('{"limits_version": 5, "limits": [')
    client = make_client(control_plane.url)

    with pytest.raises(LimitRejected, match="pre-trade limits unknown") as info:
        client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
    assert (info.value.limit_id, info.value.limit_kind) == (None, "limits_unknown")
    client.check_order("AAPL", "sell", Decimal(1), Decimal(1), liquidating=True)

    await client.start()
    await client.wait_connected(timeout=5)
    assert control_plane.hellos[0].limits_version is None
    client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
    await client.close()


# --- the simulator -------------------------------------------------------------------------------


def test_the_simulator_reports_a_limit_rejected_order_as_a_rejected_order() -> None:
    engine, client = paper_engine()
    client.pretrade = PreTradeLimits(1, [limit("max_order_notional", "50000", id=31)])
    before = len(client.events)

    result = engine.submit_manual("AAPL", "buy", 300)  # about 57,000 at 190

    assert isinstance(result, str) and result.startswith("pre-trade limit max_order_notional (#31)")
    orders = client.of(p.OrderEvent, since=before)
    assert [(o.status, o.reject_reason) for o in orders] == [("rejected", result)]
    assert (orders[0].quantity, orders[0].symbol, orders[0].order_type) == (300, "AAPL", "market")
    warnings = [e for e in client.of(p.LogEvent, since=before) if e.level == "warning"]
    assert len(warnings) == 1 and result in warnings[0].message
    assert warnings[0].context["limit_id"] == 31
    assert client.of(p.FillEvent, since=before) == []
    assert engine.limit_rejected_orders == 1

    # A limit order is checked at its limit price; the collar sees the current price.
    client.pretrade = PreTradeLimits(2, [limit("price_collar_pct", "1", id=32)])
    far = engine.prices["AAPL"] * Decimal("0.9")
    assert "price_collar_pct" in str(
        engine.submit_manual(
            "AAPL", "buy", 10, order_type="limit", limit_price=far.quantize(Decimal("0.01"))
        )
    )
    near = engine.submit_manual(
        "AAPL", "buy", 10, order_type="limit", limit_price=engine.prices["AAPL"]
    )
    assert isinstance(near, SimOrder)


def test_sector_limits_see_the_instruments_sector_in_the_simulator() -> None:
    engine, client = paper_engine()
    client.pretrade = PreTradeLimits(
        1, [limit("max_order_qty", "5", id=40, scope="sector", scope_value="Energy")]
    )

    assert "max_order_qty (#40)" in str(engine.submit_manual("XOM", "buy", 6))
    assert isinstance(engine.submit_manual("AAPL", "buy", 6), SimOrder)


def test_a_fat_finger_order_1000_times_normal_size_is_rejected_while_normal_orders_pass() -> None:
    engine, client = paper_engine(seed=5)
    client.pretrade = PreTradeLimits(1, [limit("max_order_qty", "5000", id=12)])

    for _ in range(500):
        engine.tick()
    normal = [o.quantity for o in client.of(p.OrderEvent) if o.status == "new"]
    assert len(normal) > 50
    assert all("pre-trade" not in (o.reject_reason or "") for o in client.of(p.OrderEvent))
    assert engine.limit_rejected_orders == 0

    typical = Decimal(int(statistics.median(normal)))
    fat_finger = engine.submit_manual("AAPL", "buy", typical * 1000)
    assert fat_finger == (
        f"pre-trade limit max_order_qty (#12): quantity {typical * 1000} exceeds 5000"
    )
    assert client.of(p.OrderEvent)[-1].status == "rejected"
    assert isinstance(engine.submit_manual("AAPL", "buy", typical), SimOrder)


@pytest.mark.asyncio
async def test_a_limit_rejected_order_reaches_the_server_as_a_rejected_order(
    control_plane: FakeControlPlane, tmp_path: Path
) -> None:
    control_plane.limits = [limit("max_order_qty", "5000", id=12)]
    engine = PaperEngine.create(
        control_plane.url,
        TOKEN,
        journal_dir=tmp_path / "journal",
        engine_options={"seed": 3},
        config=ClientConfig(batch_interval_s=0.005, backoff_initial_s=0.01, fsync=False),
    )
    client = engine.client
    assert isinstance(client, EngineClient)
    await client.start()
    await client.wait_connected(timeout=5)

    passed = engine.submit_manual("JPM", "buy", 40)
    refused = engine.submit_manual("JPM", "buy", 40_000)
    await client.flush(timeout=5)

    assert isinstance(passed, SimOrder)
    rejected = [o for o in control_plane.events_of(p.OrderEvent) if o.status == "rejected"]
    assert [o.reject_reason for o in rejected if o.quantity == 40_000] == [refused]
    assert refused == "pre-trade limit max_order_qty (#12): quantity 40000 exceeds 5000"
    await client.close()


@pytest.mark.asyncio
async def test_limits_the_sdk_does_not_enforce_make_the_set_limits_partial_naming_them(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = await connected(make_client, control_plane.url)
    wire = [
        limit("max_order_qty", "50", id=20),
        limit("max_daily_turnover", "1000000", id=21),
        limit("max_order_notional", "lots", id=22),
    ]

    result = await set_limits(control_plane, 9, wire)

    # Not succeeded: the server takes only a succeeded set_limits as the version in force.
    assert result.status == "partial"
    assert result.data == {"limits_version": 9, "capital_ceiling": None}
    assert result.detail.startswith("2 of 3 limits not enforced: ")
    assert "max_order_notional (#22): threshold must be a decimal string >= 0" in result.detail
    assert "max_daily_turnover (#21): a kind this SDK does not enforce" in result.detail
    # What it can enforce, it does.
    with pytest.raises(LimitRejected) as info:
        client.check_order("AAPL", "buy", Decimal(51), Decimal(0))
    assert info.value.limit_id == 20

    complete = await set_limits(control_plane, 10, wire[:1])
    assert (complete.status, complete.detail) == ("succeeded", "")
    await client.close()


@pytest.mark.asyncio
async def test_an_engine_that_cannot_enforce_limits_fails_every_set_limits_saying_why(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    handled: list[p.Command] = []

    async def handler(command: p.Command) -> CommandOutcome:
        handled.append(command)
        return CommandOutcome(status="succeeded")

    control_plane.limits_version = 3
    control_plane.limits = [limit("max_order_qty", "10", id=1)]
    client = await connected(
        make_client, control_plane.url, enforces_limits=False, on_command=handler
    )
    assert not client.enforces_limits

    result = await set_limits(control_plane, 4, [limit("max_order_qty", "5", id=2)])

    assert result.status == "failed"
    assert result.detail == (
        "this engine cannot enforce pre-trade limits (its orders do not go through "
        "check_order: EngineClient(enforces_limits=False)); limits version 4 not applied"
    )
    # Neither the handler (which would answer succeeded) nor the SDK took the limits.
    assert handled == []
    assert "limits_version" not in result.data
    assert client.pretrade is not None and client.pretrade.version == 3
    # Other commands are handled as ever.
    pause = a_command("pause")
    await control_plane.send(pause)
    await control_plane.wait_for(
        lambda: any(r.command_id == pause.command_id for r in control_plane.command_results)
    )
    assert [c.kind for c in handled] == ["pause"]
    await client.close()
