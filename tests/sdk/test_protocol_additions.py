"""Protocol additions within version 1 (docs/protocol.md): runs, strategy ids, fee currencies,
capabilities and symbols up to MAX_SYMBOL_LENGTH characters, each refused by name when out of
bounds."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from engine_sdk import protocol as p

_HELLO: dict[str, Any] = {
    "type": "hello",
    "protocol": 1,
    "engine_build": "b",
    "config_hash": "c",
    "mode": "paper",
    "broker": "sim",
    "account": "acc",
    "trading_state": "ACTIVE",
    "last_seq": 0,
}
_ORDER: dict[str, Any] = {
    "kind": "order",
    "seq": 1,
    "ts": "2026-11-23T14:00:00Z",
    "client_order_id": "o-1",
    "symbol": "AAPL",
    "side": "buy",
    "order_type": "market",
    "quantity": "1",
    "status": "new",
}
_FILL: dict[str, Any] = {
    "kind": "fill",
    "seq": 2,
    "ts": "2026-11-23T14:00:01Z",
    "fill_id": "f-1",
    "client_order_id": "o-1",
    "symbol": "AAPL",
    "side": "buy",
    "quantity": "1",
    "price": "190",
}


def _events(*events: dict[str, Any]) -> tuple[list[p.Event], list[p.Error]]:
    return p.decode_events_leniently(json.dumps({"type": "events", "events": list(events)}))


def _refused(event: dict[str, Any]) -> tuple[str, str | None]:
    events, errors = _events(event)
    assert not events
    (error,) = errors
    return error.code, error.field


@pytest.mark.parametrize("base", [_ORDER, _FILL], ids=["order", "fill"])
def test_a_symbol_at_the_bound_is_accepted_and_one_beyond_is_refused_naming_it(base):
    longest = "X" * p.MAX_SYMBOL_LENGTH
    events, errors = _events({**base, "symbol": longest})
    assert not errors and events[0].symbol == longest  # type: ignore[union-attr]

    assert _refused({**base, "symbol": longest + "X"}) == ("invalid_event", "events[0].symbol")
    assert _refused({**base, "symbol": "A\x00B"}) == ("invalid_event", "events[0].symbol")


def test_the_bound_is_128_characters():
    assert p.MAX_SYMBOL_LENGTH == 128
    # Counted in characters, as the database's varchar counts them.
    events, errors = _events({**_ORDER, "symbol": "é" * 128})
    assert not errors and len(events[0].symbol) == 128  # type: ignore[union-attr]


def test_strategy_ids_and_fee_currency_decode_and_are_bounded():
    position = {"kind": "position", "seq": 3, "ts": "2026-11-23T14:00:02Z", "symbol": "AAPL"}
    position["quantity"] = "1"
    events, errors = _events(
        {**_ORDER, "strategy_id": "trend"},
        {**_FILL, "strategy_id": "trend", "fee_currency": "BNB"},
        {**position, "strategy_id": "trend"},
    )
    assert not errors
    assert [e.strategy_id for e in events] == ["trend"] * 3  # type: ignore[union-attr]
    assert events[1].fee_currency == "BNB"  # type: ignore[union-attr]

    for hostile in ("bnb", "", "B", "B" * 17, "BN\x00", "BNB ", "BN-B", "ÉUR"):
        assert _refused({**_FILL, "fee_currency": hostile}) == (
            "invalid_event",
            "events[0].fee_currency",
        ), hostile
    assert _refused({**_ORDER, "strategy_id": ""}) == ("invalid_event", "events[0].strategy_id")
    assert _refused({**_ORDER, "strategy_id": "s" * 65}) == (
        "invalid_event",
        "events[0].strategy_id",
    )
    assert _refused({**_FILL, "strategy_id": "a\x00"}) == ("invalid_event", "events[0].strategy_id")


def test_an_event_without_the_new_fields_decodes_as_before():
    events, errors = _events(_ORDER, _FILL)
    assert not errors
    assert events[1].fee_currency is None and events[1].strategy_id is None  # type: ignore[union-attr]
    # Left out when encoded, so an older server reads the same frame as before.
    assert b"strategy_id" not in p.encode_event(events[0])


def test_hello_carries_run_id_and_capabilities():
    frame = p.decode_engine_frame(
        json.dumps(
            {
                **_HELLO,
                "run_id": "bt-2026-11-23",
                "capabilities": {"commands": ["pause", "kill"], "limit_kinds": ["max_order_qty"]},
            }
        )
    )
    assert isinstance(frame, p.Hello)
    assert frame.run_id == "bt-2026-11-23"
    assert frame.capabilities == p.Capabilities(
        commands=["pause", "kill"], limit_kinds=["max_order_qty"]
    )
    plain = p.decode_engine_frame(json.dumps(_HELLO))
    assert isinstance(plain, p.Hello) and plain.run_id == "" and plain.capabilities is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"run_id": "r" * 65}, "run_id"),
        ({"run_id": "r\x00"}, "run_id"),
        ({"capabilities": {"commands": ["explode"]}}, "capabilities.commands[0]"),
        ({"capabilities": {"limit_kinds": ["Max Qty"]}}, "capabilities.limit_kinds[0]"),
        ({"capabilities": {"commands": ["pause"] * 33}}, "capabilities.commands"),
        ({"capabilities": []}, "capabilities"),
    ],
)
def test_a_hello_with_a_bad_run_id_or_capabilities_is_refused_naming_the_field(extra, field):
    with pytest.raises(msgspec.ValidationError) as caught:
        p.decode_engine_frame(json.dumps({**_HELLO, **extra}))
    assert p.error_field(str(caught.value))[1] == field


def test_a_command_exposes_the_strategy_it_targets():
    def command(params: dict[str, Any]) -> p.Command:
        frame = {
            "type": "command",
            "command_id": str(uuid.uuid4()),
            "kind": "flatten",
            "params": params,
            "issued_at": "2026-11-23T14:00:00Z",
        }
        decoded = p.decode_server_frame(json.dumps(frame))
        assert isinstance(decoded, p.Command)
        return decoded

    assert command({"strategy_id": "trend"}).strategy_id == "trend"
    assert command({}).strategy_id is None
    assert command({"strategy_id": 7}).strategy_id is None


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "USDT", "BNB", "1INCH", "XBT", "B" * 16])
def test_currency_codes_crypto_venues_use_are_accepted_beside_iso_4217(code):
    instrument = {"kind": "instrument", "seq": 1, "ts": "2026-11-23T14:00:00Z", "symbol": "X"}
    account = {"kind": "account", "seq": 3, "ts": "2026-11-23T14:00:02Z", "equity": "1"}
    events, errors = _events(
        {**instrument, "currency": code},
        {**_FILL, "fee_currency": code},
        {**account, "cash": "1", "fx_rates": {code: "1.5"}},
    )
    assert not errors
    assert events[0].currency == code  # type: ignore[union-attr]
    assert events[1].fee_currency == code  # type: ignore[union-attr]
    assert events[2].fx_rates == {code: Decimal("1.5")}  # type: ignore[union-attr]
