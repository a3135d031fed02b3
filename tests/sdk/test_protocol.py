from __future__ import annotations

import contextlib
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine_sdk import protocol as p

TS = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def an_order(**overrides: Any) -> p.OrderEvent:
    fields: dict[str, Any] = dict(
        seq=1,
        ts=TS,
        client_order_id="o-1",
        symbol="AAPL",
        side="buy",
        order_type="limit",
        quantity=Decimal("10"),
        limit_price=Decimal("100.25"),
        status="accepted",
    )
    fields.update(overrides)
    return p.OrderEvent(**fields)


def every_kind_of_event() -> list[p.Event]:
    return [
        an_order(seq=1, expected_price=Decimal("100.20")),
        p.FillEvent(
            seq=2,
            ts=TS,
            fill_id="f-1",
            client_order_id="o-1",
            symbol="AAPL",
            side="buy",
            quantity=Decimal("4"),
            price=Decimal("100.24"),
            fee=Decimal("-0.01"),
            liquidity="maker",
        ),
        p.PositionEvent(seq=3, ts=TS, symbol="AAPL", quantity=Decimal("-4"), source="engine"),
        p.AccountEvent(seq=4, ts=TS, equity=Decimal("100000.5"), cash=Decimal("99599.54")),
        p.MetricEvent(seq=5, ts=TS, name="latency_ms", value=1.25),
        p.LogEvent(seq=6, ts=TS, level="warning", message="slow quote", context={"age_ms": 800}),
        p.StateEvent(seq=7, ts=TS, trading_state="PAUSED", reason="operator"),
    ]


def test_every_engine_frame_survives_a_round_trip() -> None:
    frames: list[p.EngineFrame] = [
        p.Hello(
            protocol=p.PROTOCOL_VERSION,
            engine_build="1.2.3",
            config_hash="abc",
            mode="paper",
            broker="sim",
            account="acc-1",
            trading_state="ACTIVE",
            last_seq=0,
            sdk_version="1",
        ),
        p.Events(events=every_kind_of_event()),
        p.Heartbeat(ts=TS, trading_state="ACTIVE", last_seq=7),
        p.CommandAck(command_id=uuid.uuid4()),
        p.CommandResult(
            command_id=uuid.uuid4(), status="partial", detail="1 of 2", trading_state="REDUCING"
        ),
    ]
    for frame in frames:
        assert p.decode_engine_frame(p.encode(frame)) == frame


def test_every_server_frame_survives_a_round_trip() -> None:
    command = p.Command(
        command_id=uuid.uuid4(),
        kind="pause",
        params={"duration": 60},
        reason="news",
        issued_by="alice",
        issued_at=TS,
    )
    frames: list[p.ServerFrame] = [
        p.Welcome(
            protocol=p.PROTOCOL_VERSION,
            engine_id=3,
            engine_name="alpha",
            last_seq=41,
            heartbeat_interval_s=5.0,
            desired_state="ACTIVE",
            limits_version=2,
            limits=[{"kind": "max_order_qty", "value": "100"}],
            commands=[command],
        ),
        p.Ack(seq=41),
        command,
        p.Error(code="invalid_event", message="bad", field="events[0].quantity", seq=9),
        p.ServerHeartbeat(ts=TS),
    ]
    for frame in frames:
        assert p.decode_server_frame(p.encode(frame)) == frame


def test_decimals_travel_as_strings_and_numbers_are_accepted() -> None:
    wire = json.loads(p.encode(an_order()))
    assert wire["quantity"] == "10"
    assert wire["limit_price"] == "100.25"
    wire["quantity"] = 2.5
    decoded = p.decode_engine_frame(json.dumps({"type": "events", "events": [wire]}))
    assert isinstance(decoded, p.Events)
    assert decoded.events[0].quantity == Decimal("2.5")  # type: ignore[union-attr]


def test_it_ignores_unknown_fields_for_forward_compatibility() -> None:
    wire = json.loads(p.encode(p.Ack(seq=3)))
    wire["added_in_v2"] = {"x": 1}
    assert p.decode_server_frame(json.dumps(wire)) == p.Ack(seq=3)


def test_it_rejects_timestamps_without_a_timezone() -> None:
    wire = json.loads(p.encode(an_order()))
    wire["ts"] = "2026-01-05T14:30:00"
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        p.decode_engine_frame(json.dumps({"type": "events", "events": [wire]}))


def test_it_rejects_a_non_positive_quantity_on_construction() -> None:
    with pytest.raises(ValueError, match="quantity"):
        an_order(quantity=Decimal("0"))


def test_an_event_without_a_seq_is_rejected() -> None:
    wire = json.loads(p.encode(an_order(seq=0)))
    assert "seq" not in wire
    with pytest.raises(msgspec.ValidationError, match="seq"):
        p.decode_engine_frame(json.dumps({"type": "events", "events": [wire]}))


def test_lenient_decoding_keeps_the_good_events_and_names_the_bad_field() -> None:
    good = [json.loads(p.encode(e)) for e in every_kind_of_event()]
    bad_quantity = dict(good[0], seq=8, quantity="-3")
    bad_kind = {"kind": "quote", "seq": 9, "ts": "2026-01-05T14:30:00Z"}
    missing_ts = {k: v for k, v in good[1].items() if k != "ts"} | {"seq": 10}
    frame = {"type": "events", "events": [*good[:3], bad_quantity, bad_kind, missing_ts, *good[3:]]}

    events, errors = p.decode_events_leniently(json.dumps(frame))

    assert events == every_kind_of_event()
    assert [(e.code, e.field, e.seq) for e in errors] == [
        ("invalid_event", "events[3].quantity", 8),
        ("unknown_kind", "events[4].kind", 9),
        ("invalid_event", "events[5].ts", 10),
    ]


def test_lenient_decoding_reports_a_nested_field_path() -> None:
    wire = json.loads(p.encode(every_kind_of_event()[5]))
    wire["level"] = "loud"
    events, errors = p.decode_events_leniently(json.dumps({"type": "events", "events": [wire]}))
    assert events == []
    assert errors[0].field == "events[0].level"
    assert errors[0].seq == 6


def test_lenient_decoding_turns_non_json_into_a_single_error() -> None:
    events, errors = p.decode_events_leniently(b"{not json")
    assert events == []
    assert [e.code for e in errors] == ["malformed_json"]


def test_lenient_decoding_refuses_too_many_events() -> None:
    wire = json.loads(p.encode(an_order()))
    frame = {"type": "events", "events": [wire] * (p.MAX_EVENTS_PER_FRAME + 1)}
    events, errors = p.decode_events_leniently(json.dumps(frame))
    assert events == []
    assert [e.code for e in errors] == ["too_many_events"]


def test_lenient_decoding_refuses_an_oversized_frame() -> None:
    _, errors = p.decode_events_leniently(b" " * (p.MAX_FRAME_BYTES + 1))
    assert [e.code for e in errors] == ["frame_too_large"]


def test_the_frame_size_limit_counts_utf8_bytes_not_characters() -> None:
    # 600,000 characters, under the limit; 1.8 MB in UTF-8, over it.
    text = '{"type": "events", "events": [], "pad": "' + "\u20ac" * 600_000 + '"}'
    assert len(text) < p.MAX_FRAME_BYTES
    assert p.frame_bytes(text) == len(text.encode()) > p.MAX_FRAME_BYTES
    assert p.frame_bytes(text.encode()) == len(text.encode())
    assert p.frame_bytes("plain ascii") == len("plain ascii")
    _, errors = p.decode_events_leniently(text)
    assert [e.code for e in errors] == ["frame_too_large"]


def test_lenient_decoding_of_another_frame_type() -> None:
    _, errors = p.decode_events_leniently(b'{"type": "hello"}')
    assert [e.code for e in errors] == ["invalid_frame"]
    _, errors = p.decode_events_leniently(b'{"type": "gossip"}')
    assert [e.code for e in errors] == ["unknown_type"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

frame_keys = st.sampled_from(
    ["type", "kind", "seq", "ts", "events", "quantity", "price", "symbol", "name", "value"]
)
frame_like = st.dictionaries(
    frame_keys,
    json_values
    | st.sampled_from(["events", "hello", "order", "fill", "metric", "2026-01-05T14:30:00Z"]),
    max_size=8,
)
events_frame_like = st.builds(
    lambda events: {"type": "events", "events": events},
    st.lists(frame_like | json_values, max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, frame_like, events_frame_like))
def test_the_strict_decoder_raises_nothing_but_msgspec_errors(value: Any) -> None:
    with contextlib.suppress(msgspec.MsgspecError):
        p.decode_engine_frame(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, frame_like, events_frame_like))
def test_lenient_decoding_never_raises_on_json(value: Any) -> None:
    events, errors = p.decode_events_leniently(json.dumps(value).encode())
    assert all(isinstance(e, p.Error) for e in errors)
    if isinstance(value, dict) and isinstance(value.get("events"), list) and len(errors) != 1:
        assert len(events) + len(errors) == len(value["events"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_lenient_decoding_never_raises_on_any_bytes(data: bytes) -> None:
    events, errors = p.decode_events_leniently(data)
    try:
        json.loads(data)
    except ValueError:
        assert events == []
        assert len(errors) == 1


FILL = {
    "kind": "fill",
    "seq": 1,
    "ts": "2026-01-05T14:30:00Z",
    "fill_id": "f-1",
    "client_order_id": "o-1",
    "symbol": "AAPL",
    "side": "buy",
    "quantity": "10",
    "price": "100.25",
}


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("quantity", "0", "`decimal` >= 0.00000001"),
        ("quantity", "-1", "`decimal` >= 0.00000001"),
        ("quantity", "NaN", "a finite `decimal` with |x| < 1e16"),
        ("price", "sNaN", "a finite `decimal` with |x| < 1e16"),
        ("price", "Infinity", "a finite `decimal` with |x| < 1e16"),
        ("price", "1e16", "a finite `decimal` with |x| < 1e16"),
        ("fee", "-1e16", "a finite `decimal` with |x| < 1e16"),
        ("fee", "-Infinity", "a finite `decimal` with |x| < 1e16"),
        ("market_price", "0", "`decimal` >= 0.00000001"),
        ("market_price", "NaN", "a finite `decimal` with |x| < 1e16"),
    ],
)
def test_a_fill_with_a_bad_decimal_is_refused_naming_the_field(field, value, expected):
    frame = json.dumps({"type": "events", "events": [{**FILL, field: value}]})

    with pytest.raises(msgspec.ValidationError) as refused:
        p.decode_engine_frame(frame)

    assert f"Expected {expected} - at `$.{field}`" in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "0.00000001"),
        ("price", "9999999999999999.99"),
        ("fee", "-0.5"),
        ("fee", "0"),
        ("market_price", "100.035"),
    ],
)
def test_a_fill_at_the_edges_of_its_bounds_is_accepted(field, value):
    frame = json.dumps({"type": "events", "events": [{**FILL, field: value}]})

    (fill,) = p.decode_engine_frame(frame).events  # type: ignore[union-attr]

    assert getattr(fill, field) == Decimal(value)


# --- bounds: whatever the schema accepts, the server's database can hold ---------------------

T = "2026-01-05T14:30:00Z"
ORDER = {
    "kind": "order",
    "seq": 1,
    "ts": T,
    "client_order_id": "o-1",
    "symbol": "AAPL",
    "side": "buy",
    "order_type": "limit",
    "quantity": "10",
    "status": "rejected",
}
LOG = {"kind": "log", "seq": 1, "ts": T, "level": "info", "message": "m"}
METRIC = {"kind": "metric", "seq": 1, "ts": T, "name": "latency_ms", "value": 1.5}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return {"a": value}


@pytest.mark.parametrize(
    ("event", "field", "expected"),
    [
        # PostgreSQL text cannot hold U+0000: a broker's message is enough to carry one.
        ({**LOG, "message": "broker: \u0000"}, "message", "without U+0000"),
        ({**ORDER, "reject_reason": "x\u0000"}, "reject_reason", "without U+0000"),
        ({**FILL, "fill_id": "\u0000"}, "fill_id", "without U+0000"),
        ({**LOG, "context": {"k": "\u0000"}}, "context", "without U+0000"),
        ({**LOG, "context": {"\u0000": 1}}, "context", "without U+0000"),
        # Stored to 8 places, a positive price must not round to zero.
        ({**FILL, "price": "0.000000001"}, "price", "`decimal` >= 0.00000001"),
        ({**ORDER, "limit_price": "1e-9"}, "limit_price", "`decimal` >= 0.00000001"),
        ({**FILL, "fee": "1E-1000000"}, "fee", "at most 1000 places"),
        # An offset PostgreSQL cannot hold, and UTC forms out of range.
        ({**METRIC, "ts": "2026-01-05T14:30:00+20:00"}, "ts", "UTC offset"),
        ({**METRIC, "ts": "2026-01-05T14:30:00-16:00"}, "ts", "UTC offset"),
        ({**METRIC, "ts": "9999-12-31T23:00:00-05:00"}, "ts", "from 1900 to 2999"),
        ({**METRIC, "ts": "0001-01-01T00:30:00+01:00"}, "ts", "from 1900 to 2999"),
        # A BIGINT seq.
        ({**METRIC, "seq": 2**63}, "seq", "<= 9223372036854775807"),
        # JSON nested deeper than anyone reads.
        ({**LOG, "context": _nested(p.MAX_JSON_DEPTH + 1)}, "context", "nested at most 16"),
        ({**LOG, "context": _nested(400)}, "context", "nested at most 16"),
    ],
)
def test_an_event_the_database_could_not_hold_is_refused_naming_the_field(event, field, expected):
    frame = json.dumps({"type": "events", "events": [METRIC, event]})

    events, errors, positions = p.decode_events_positioned(frame)

    assert events == [p.decode_event(json.dumps(METRIC))] and positions == [0]
    (error,) = errors
    assert (error.code, error.field) == ("invalid_event", f"events[1].{field}")
    assert expected in error.message
    # Its seq is named when it is one, so that the ack covers it.
    assert error.seq == (event["seq"] if event["seq"] < 2**63 else None)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**METRIC, "ts": "2026-01-05T14:30:00+15:59"}, "ts"),
        ({**METRIC, "ts": "1900-01-01T00:00:00Z"}, "ts"),
        ({**METRIC, "seq": 2**63 - 1}, "seq"),
        ({**LOG, "context": _nested(p.MAX_JSON_DEPTH)}, "context"),
        ({**FILL, "price": "0.00000001"}, "price"),
        ({**FILL, "price": "0.123456789012345678"}, "price"),
    ],
)
def test_an_event_at_the_edge_of_the_bounds_is_accepted(event, field):
    (decoded,) = p.decode_engine_frame(json.dumps({"type": "events", "events": [event]})).events  # type: ignore[union-attr]

    assert p.encode_event(decoded)  # and it encodes again, as the server's event log does


def test_json_nested_too_deep_to_decode_is_a_frame_error_not_a_crash():
    frame = (
        '{"type":"events","events":[{"kind":"log","context":{"a":'
        + "[" * 5000
        + "]" * 5000
        + "}}]}"
    )

    with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
        p.decode_engine_frame(frame)
    assert p.decode_events_leniently(frame) == (
        [],
        [p.Error(code="malformed_json", message="JSON nested too deeply to decode")],
    )


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"last_seq": 0, "limits_version": 2**31}, "limits_version"),
        ({"last_seq": 2**63, "limits_version": 1}, "last_seq"),
        ({"last_seq": 0, "engine_build": "b\u0000"}, "engine_build"),
    ],
)
def test_a_hello_the_database_could_not_hold_is_refused_naming_the_field(frame, field):
    hello = {
        "type": "hello",
        "protocol": 1,
        "engine_build": "b",
        "config_hash": "c",
        "mode": "paper",
        "broker": "sim",
        "account": "a",
        "trading_state": "ACTIVE",
    }

    with pytest.raises(msgspec.ValidationError) as refused:
        p.decode_engine_frame(json.dumps({**hello, **frame}))

    assert p.error_field(str(refused.value))[1] == field


def test_a_heartbeat_with_a_limits_version_beyond_int32_is_refused():
    beat = {
        "type": "heartbeat",
        "ts": T,
        "trading_state": "ACTIVE",
        "last_seq": 0,
        "limits_version": 2**31,
    }

    with pytest.raises(msgspec.ValidationError, match="limits_version"):
        p.decode_engine_frame(json.dumps(beat))
