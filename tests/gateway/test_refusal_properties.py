"""Property: whatever frame an engine sends, each of its events is stored or refused by itself,
the engine's later events are stored, and nothing stored before changes.

The frames are generated from the protocol schema itself (the msgspec structs, read through
msgspec.inspect), with the edge values of each type: decimals at and past their bounds and below
the stored precision, strings with U+0000 or over length, times at the ends of the calendar with
offsets up to 23:59, JSON nested past the limit, seqs out of range. They are encoded as JSON
directly, as any engine could send them, bypassing the SDK's own checks, and go through the
gateway's store path into the test database.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec.inspect as mi
import pytest
from channels.testing import WebsocketCommunicator
from django.db import connection
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controlplane import services
from controlplane.config.asgi import application
from controlplane.gateway import batches, decoding
from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, EngineEvent
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

# A few values shared across events, so that they meet: fills of the orders, positions of the
# symbols, whose sums can overflow what each event alone keeps within bounds.
POOLS = {
    "symbol": ["AAA", "AAA", "BBB"],
    "client_order_id": ["o-1", "o-1", "o-2"],
    "currency": ["USD", "EUR"],
}
# Fills and accounts meet the most: positions and P&L, equity and drawdown.
KINDS = ["fill", "fill", "account", "account", *sorted(p._EVENT_TYPES)]
BIG = "9000000000000000"
EDGE_DECIMALS = [
    "0",
    "1",
    "-1",
    "0.00000001",
    "0.000000005",
    "0.000000001",
    "-0.000000001",
    "1E-1000000",
    "1E-1000",
    "9999999999999999.99999999",
    "-9999999999999999.99999999",
    "1e16",
    "-1e16",
    "NaN",
    "Infinity",
    "0.123456789012345678901234567890",
    BIG,
    "-" + BIG,
]
EDGE_TEXT = ["\x00", "a\x00b", "é", "\U0001f600", ""]
OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
PREFIX = 5  # events stored before the frame: seqs 1..5


def _deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth - 1):
        value = {"d": value}
    return value


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(EDGE_TEXT)
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.sampled_from(EDGE_TEXT), children, max_size=3)
    ),
    max_leaves=10,
)


def _mostly(valid: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` nine times in ten: most events of a frame pass the schema and reach the store."""
    return st.integers(0, 9).flatmap(lambda n: edge if n == 0 else valid)


VALID_DECIMALS = st.sampled_from(["1", "100.25", "0.00000001", BIG, "9999999999999999"]) | (
    st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999999999999999"), places=8)
).map(str)
# The fields that may be negative.
SIGNED = {"fee", "equity", "cash"}
VALID_SIGNED = st.sampled_from(["-1", "1000", "1", "-" + BIG, BIG]) | st.decimals(
    min_value=Decimal("-9999999999999999"), max_value=Decimal("9999999999999999"), places=8
).map(str)
NEAR = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31))
ANYWHERE = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))


def _strategy(name: str, info: Any) -> st.SearchStrategy[Any]:
    """A JSON value for a field of the schema: mostly valid, sometimes at or past an edge."""
    if isinstance(info, mi.UnionType):
        return st.one_of([_strategy(name, member) for member in info.types])
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return _mostly(st.sampled_from(info.values), st.just("bogus"))
    if isinstance(info, mi.StrType):
        if name in POOLS:
            return _mostly(st.sampled_from(POOLS[name]), st.sampled_from(EDGE_TEXT))
        if info.pattern and "x00" not in info.pattern:  # a metric name, say
            return _mostly(st.from_regex(info.pattern, fullmatch=True), st.sampled_from(EDGE_TEXT))
        longest = info.max_length or 64
        return _mostly(
            st.text(min_size=info.min_length or 0, max_size=min(longest, 20)),
            st.sampled_from(EDGE_TEXT) | st.just("x" * (longest + 1)),
        )
    if isinstance(info, mi.DecimalType):
        valid = VALID_SIGNED if name in SIGNED else VALID_DECIMALS
        return _mostly(valid, st.sampled_from(EDGE_DECIMALS))
    if isinstance(info, mi.DateTimeType):
        return _mostly(
            NEAR.map(lambda t: t.replace(tzinfo=UTC)),
            st.builds(lambda t, tz: t.replace(tzinfo=tz), NEAR | ANYWHERE, OFFSETS),
        ).map(datetime.isoformat)
    if isinstance(info, mi.FloatType):
        return _mostly(
            st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1e308, -1e308])
        )
    if isinstance(info, mi.DictType):
        return _mostly(
            st.dictionaries(st.text(max_size=5), json_values, max_size=3),
            st.sampled_from(
                [
                    {"deep": _deep(p.MAX_JSON_DEPTH - 1)},
                    {"deep": _deep(p.MAX_JSON_DEPTH)},
                    {"deep": _deep(40)},
                ]
            ),
        )
    raise AssertionError(f"no strategy for {name}: {info}")  # a new type in the schema


@st.composite
def event_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """An event of any kind, its fields drawn from the schema, without its seq."""
    kind = draw(st.sampled_from(KINDS))
    body: dict[str, Any] = {"kind": kind}
    for field in mi.type_info(p._EVENT_TYPES[kind]).fields:
        if field.name == "seq" or (not field.required and draw(st.booleans())):
            continue
        body[field.name] = draw(_strategy(field.name, field.type))
    return body


@st.composite
def frames(draw: st.DrawFn) -> list[dict[str, Any]]:
    bodies = draw(st.lists(event_bodies(), min_size=1, max_size=12))
    events = []
    for n, body in enumerate(bodies):
        seq: Any = PREFIX + 1 + n
        if draw(st.integers(0, 15)) == 0:
            seq = draw(st.sampled_from([0, -1, 2**63, "7", None]))
        if body["kind"] == "fill":
            body["fill_id"] = f"f-{n}"  # each fill its own id: repeated ids are another matter
        events.append({**body, "seq": seq})
    return events


def _before(engine: Engine) -> dict[str, set[tuple]]:
    """The engine's rows in the append-only tables, as they are."""
    tables = {
        "controlplane_fill": "seq, fill_id, quantity, price, fee, ts",
        "controlplane_metricsample": "seq, name, value, ts",
        "controlplane_enginelog": "seq, level, message, context::text, ts",
        "controlplane_accountsnapshot": "seq, equity, cash, margin_used, ts",
        "controlplane_eventframe": "first_seq, last_seq, events::text, refused",
    }
    rows = {}
    with connection.cursor() as cursor:
        for table, columns in tables.items():
            cursor.execute(f"SELECT {columns} FROM {table} WHERE engine_id = %s", [engine.pk])
            rows[table] = set(cursor.fetchall())
    return rows


def _names(error: p.Error, position: int, seq: int | None) -> bool:
    """Whether ``error`` is about the event at ``position`` (by its path or its seq)."""
    where = f"events[{position}]"
    field = error.field or ""
    return field == where or field.startswith(f"{where}.") or (seq is not None and error.seq == seq)


def _stored_before(engine: Engine) -> dict[str, set[tuple]]:
    ingest_events(
        engine_id=engine.pk,
        events=[
            f.order(1, "o-1", symbol="AAA", qty=BIG),
            f.fill(2, "f-x", "o-1", symbol="AAA", qty=BIG),
            f.metric(3),
            f.log(4),
            f.account(5, "1000"),
        ],
    )
    return _before(engine)


def _check(engine: Engine, events: list[dict], answer: list[p.ServerFrame], before: dict) -> int:
    """Each event stored or refused by itself, the refused covered by the ack, nothing stored
    before changed; returns the ack."""
    *errors, ack = answer
    assert isinstance(ack, p.Ack), answer
    # No internal_error: the database never failed, whatever the events.
    assert all(isinstance(e, p.Error) and e.code != "internal_error" for e in errors), answer
    stored = set(EngineEvent.objects.filter(engine=engine).values_list("seq", flat=True))
    # What the examples exercised (pytest --hypothesis-show-statistics).
    event(f"stored: {min(len(stored) - PREFIX, 3)}+")
    for code in sorted({e.code for e in errors}):
        event(code)
    for i, sent in enumerate(events):
        seq = sent["seq"]
        valid_seq = type(seq) is int and 1 <= seq <= p.MAX_SEQ
        mine = [e for e in errors if _names(e, i, seq if valid_seq else None)]
        if valid_seq and seq in stored:
            assert not mine, (sent, mine)
        else:
            # Refused by itself: one error, naming this event (by position or seq).
            assert len(mine) == 1, (sent, errors)
            if valid_seq:
                assert ack.seq >= seq  # the ack covers it: it is never sent again
    after = _before(engine)
    for table, rows in before.items():
        assert rows <= after[table], table
    return ack.seq


SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(SETTINGS, max_examples=60)
@given(frames())
def test_each_event_is_stored_or_refused_by_itself_and_the_stream_goes_on(events):
    engine, _ = services.engine_create(name=f"prop-{Engine.objects.count() + 1}")
    before = _stored_before(engine)

    decoded = decoding.decode_frame(json.dumps({"type": "events", "events": events}))
    (outcome,) = batches.events_many([(engine.pk, decoded)])

    assert not isinstance(outcome, BaseException), outcome
    answer, result = outcome
    assert result is not None, answer
    ack = _check(engine, events, answer, before)
    # The engine's stream goes on.
    later = ack + 1
    (outcome,) = batches.events_many(
        [(engine.pk, decoding.decode_frame(f.events_frame(f.metric(later))))]
    )
    assert outcome[0] == [p.Ack(seq=later)]


async def _over_the_socket(token: str, events: list[dict]) -> tuple[list[p.ServerFrame], list]:
    """Send the frame, then one valid event after it, on one connection; the answers to each."""
    headers = [(b"authorization", f"Bearer {token}".encode())]
    ws = WebsocketCommunicator(application, "/ws/engine/v1", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    hello = p.Hello(
        protocol=p.PROTOCOL_VERSION,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="sim",
        account="a",
        trading_state="ACTIVE",
        last_seq=PREFIX,
    )
    await ws.send_to(text_data=p.encode(hello).decode())

    async def answer() -> list[p.ServerFrame]:
        frames: list[p.ServerFrame] = []
        while True:
            output = await ws.receive_output(timeout=10)
            assert output["type"] == "websocket.send", output  # never closed
            frame = p.decode_server_frame(output["text"])
            if isinstance(frame, p.ServerHeartbeat | p.Welcome):
                continue
            frames.append(frame)
            if isinstance(frame, p.Ack) or getattr(frame, "code", "") == "internal_error":
                return frames

    await ws.send_to(text_data=json.dumps({"type": "events", "events": events}))
    first = await answer()
    later = max(f.seq for f in first if isinstance(f, p.Ack)) + 1
    await ws.send_to(text_data=f.events_frame(f.metric(later)).decode())
    second = await answer()
    await ws.disconnect()
    return first, second


@pytest.mark.django_db(transaction=True)
@settings(SETTINGS, max_examples=8)
@given(frames())
def test_over_the_socket_each_event_is_stored_or_refused_and_the_socket_stays_open(events):
    engine, token = services.engine_create(name=f"sock-{Engine.objects.count() + 1}")
    before = _stored_before(engine)

    first, second = asyncio.run(_over_the_socket(token, events))

    ack = _check(engine, events, first, before)
    assert second == [p.Ack(seq=ack + 1)]
