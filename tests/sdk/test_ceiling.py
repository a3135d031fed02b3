"""The capital ceiling (engine_sdk.ceiling): check_order refuses an order that would take the
engine's gross exposure above the ceiling its stage sets; the control plane sets and changes it
in welcome and set_limits, and a restarted engine keeps enforcing it."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p
from engine_sdk.ceiling import CapitalCeiling, parse_ceiling
from engine_sdk.client import EngineClient
from engine_sdk.limits import LimitRejected
from engine_sdk.state import LIMITS_FILE
from tests.sdk.conftest import FakeControlPlane, a_command

MakeClient = Callable[..., EngineClient]
D = Decimal


# --- the arithmetic ------------------------------------------------------------------------------


def test_an_order_within_the_ceiling_passes_and_one_above_is_refused_with_the_figures() -> None:
    ceiling = CapitalCeiling(D("10000"))
    ceiling.track_position("MSFT", D("10"), D("400"))  # 4,000 held

    ceiling.check("AAPL", "buy", D("30"), D("0"), D("200"))  # 4,000 + 6,000 = the ceiling
    with pytest.raises(LimitRejected) as info:
        ceiling.check("AAPL", "buy", D("31"), D("0"), D("200"))

    assert info.value.limit_kind == "capital_ceiling" and info.value.limit_id is None
    assert info.value.reason == (
        "capital ceiling 10000: gross exposure would be 10200.00 after this order (now 4000.00)"
    )


def test_shorts_count_gross_and_an_order_that_shrinks_a_position_always_passes() -> None:
    ceiling = CapitalCeiling(D("1000"))
    ceiling.track_position("AAPL", D("-10"), D("200"))  # 2,000 short: already above

    # Buying back part or all of the short passes, with or without a price.
    ceiling.check("AAPL", "buy", D("4"), D("-10"), None)
    ceiling.check("AAPL", "buy", D("10"), D("-10"), None)
    # Selling more, or buying through zero into a larger long, grows the exposure: refused.
    with pytest.raises(LimitRejected):
        ceiling.check("AAPL", "sell", D("1"), D("-10"), D("200"))
    with pytest.raises(LimitRejected):
        ceiling.check("AAPL", "buy", D("21"), D("-10"), D("200"))
    # Through zero into a smaller position is less exposure: it passes.
    ceiling.check("AAPL", "buy", D("14"), D("-10"), D("200"))
    assert ceiling.exposure() == D("2000")


def test_an_order_with_no_price_known_for_its_symbol_is_refused() -> None:
    ceiling = CapitalCeiling(D("1000000"))
    with pytest.raises(LimitRejected, match="no price for NEW"):
        ceiling.check("NEW", "buy", D("1"), D("0"), None)
    ceiling.check("NEW", "buy", D("1"), D("0"), D("5"))
    # The price given once is remembered for the symbol's next market order.
    ceiling.check("NEW", "buy", D("1"), D("1"), None)


def test_no_ceiling_means_no_check() -> None:
    ceiling = CapitalCeiling(None)
    ceiling.check("AAPL", "buy", D("1000000"), D("0"), None)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (12.5, "must be a decimal string or null"),
        ("lots", "is not a decimal"),
        ("-1", "must be a finite decimal >= 0"),
        ("NaN", "must be a finite decimal >= 0"),
        ("1e17", "must be a finite decimal >= 0"),
    ],
)
def test_a_ceiling_the_sdk_cannot_read_is_named(wire: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ceiling(wire)


# --- over the socket -----------------------------------------------------------------------------


async def connected(make_client: MakeClient, url: str) -> EngineClient:
    client = make_client(url)
    await client.start()
    await client.wait_connected(timeout=5)
    return client


async def answered(control_plane: FakeControlPlane, command: p.Command) -> p.CommandResult:
    await control_plane.send(command)
    await control_plane.wait_for(
        lambda: any(r.command_id == command.command_id for r in control_plane.command_results)
    )
    return next(r for r in control_plane.command_results if r.command_id == command.command_id)


def set_limits(**params: Any) -> p.Command:
    return a_command("set_limits", limits_version=3, limits=[], **params)


@pytest.mark.asyncio
async def test_the_ceiling_of_the_welcome_is_enforced_and_a_set_limits_changes_it_live(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.stage = "small_capital"
    control_plane.capital_ceiling = "25000"
    client = await connected(make_client, control_plane.url)
    assert (client.stage, client.capital_ceiling) == ("small_capital", D("25000"))
    # Positions the engine reports count towards its exposure.
    client.emit(
        p.PositionEvent(ts=p.utc_now(), symbol="MSFT", quantity=D("50"), avg_price=D("400"))
    )
    assert client.gross_exposure == D("20000")
    with pytest.raises(LimitRejected, match="capital ceiling 25000"):
        client.check_order("AAPL", "buy", D("30"), D("0"), price=D("200"))

    # The ramp's next step: 50 % of the target capital, without a reconnection.
    result = await answered(
        control_plane, set_limits(stage="small_capital", capital_ceiling="50000")
    )
    assert result.status == "succeeded"
    assert result.data == {"limits_version": 3, "capital_ceiling": "50000"}
    client.check_order("AAPL", "buy", D("30"), D("0"), price=D("200"))

    # A set_limits that says nothing of stage or ceiling (an older server) leaves both alone.
    await answered(control_plane, set_limits())
    assert (client.stage, client.capital_ceiling) == ("small_capital", D("50000"))
    # Full production with no ceiling: null lifts it.
    await answered(control_plane, set_limits(stage="full", capital_ceiling=None))
    assert (client.stage, client.capital_ceiling) == ("full", None)
    client.check_order("AAPL", "buy", D("100000"), D("0"), price=D("200"))
    await client.close()


@pytest.mark.asyncio
async def test_an_unreadable_ceiling_in_set_limits_is_refused_and_the_old_one_kept(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.stage = "small_capital"
    control_plane.capital_ceiling = "1000"
    client = await connected(make_client, control_plane.url)

    result = await answered(control_plane, set_limits(capital_ceiling="a lot"))

    assert result.status == "failed"
    assert "capital_ceiling 'a lot' is not a decimal" in result.detail
    assert client.capital_ceiling == D("1000")
    await client.close()


@pytest.mark.asyncio
async def test_an_unreadable_ceiling_in_the_welcome_refuses_new_orders(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.stage = "small_capital"
    control_plane.capital_ceiling = "-5"
    client = await connected(make_client, control_plane.url)

    with pytest.raises(LimitRejected, match="capital ceiling unknown") as info:
        client.check_order("AAPL", "buy", D("1"), D("0"), price=D("1"))
    assert info.value.limit_kind == "limits_unknown"
    # Closing a position is still allowed.
    client.check_order("AAPL", "sell", D("1"), D("1"), liquidating=True)
    # The next readable ceiling lifts the refusal.
    await answered(control_plane, set_limits(capital_ceiling="100"))
    client.check_order("AAPL", "buy", D("1"), D("0"), price=D("1"))
    await client.close()


@pytest.mark.asyncio
async def test_a_restarted_engine_keeps_its_stage_and_ceiling_before_it_reaches_the_server(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.stage = "small_capital"
    control_plane.capital_ceiling = "2500.50"
    first = await connected(make_client, control_plane.url)
    await first.close()
    saved = msgspec.json.decode((first.journal_dir / LIMITS_FILE).read_bytes())
    assert (saved["stage"], saved["capital_ceiling"]) == ("small_capital", "2500.50")

    offline = make_client("ws://127.0.0.1:9/ws/engine/v1")
    assert (offline.stage, offline.capital_ceiling) == ("small_capital", D("2500.50"))
    with pytest.raises(LimitRejected, match=r"capital ceiling 2500\.50"):
        offline.check_order("AAPL", "buy", D("13"), D("0"), price=D("200"))
    offline.check_order("AAPL", "buy", D("12"), D("0"), price=D("200"))
