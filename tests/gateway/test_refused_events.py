"""No event can wedge an engine's stream: an event the database will not store is refused alone
(an ``event_refused`` error naming it, covered by the ack, kept in the event log with its reason,
counted and alerted on), the rest of its frame is stored, and the socket stays open."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import websockets
from django.db import connection

from alerts import rule_metrics
from alerts.evaluation import evaluate_engine
from alerts.models import Alert, AlertRule
from controlplane.gateway import batches, decoding
from controlplane.ingest.store import ingest_events
from controlplane.models import (
    AccountSnapshot,
    Engine,
    EngineEvent,
    EngineLog,
    Fill,
    MetricSample,
    Order,
    Position,
)
from engine_sdk import protocol as p
from tests.gateway import factories as f
from tests.servers import UvicornServer


def _decoded(*events: p.Event) -> decoding.Decoded:
    return decoding.decode_frame(f.events_frame(*events))


def _answer(engine: Engine, *events: p.Event) -> tuple[list[p.ServerFrame], object]:
    (outcome,) = batches.events_many([(engine.pk, _decoded(*events))])
    assert not isinstance(outcome, BaseException), outcome
    return outcome


def _refusals(engine: Engine) -> list[tuple[int, str, list[dict]]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT first_seq, refused, events::text FROM controlplane_eventframe"
            " WHERE engine_id = %s AND refused IS NOT NULL ORDER BY first_seq",
            [engine.pk],
        )
        return [(seq, reason, json.loads(events)) for seq, reason, events in cursor.fetchall()]


def _errors(frames: list[p.ServerFrame]) -> list[tuple[str, str | None, int | None]]:
    return [(e.code, e.field, e.seq) for e in frames if isinstance(e, p.Error)]


# A position of 9e15 + 9e15 = 1.8e16 overflows NUMERIC(24, 8), though each fill is in bounds.
BIG = "9000000000000000"


@pytest.mark.django_db
def test_a_fill_whose_position_overflows_is_refused_alone_and_the_rest_is_stored(make_engine):
    engine, _ = make_engine()
    _answer(engine, f.order(1, "o-1", qty=BIG), f.fill(2, "f-1", "o-1", qty=BIG, price="1"))
    position_before = Position.objects.get(engine=engine).quantity

    frames, result = _answer(
        engine,
        f.metric(3),
        f.fill(4, "f-2", "o-1", qty=BIG, price="1"),
        f.fill(5, "f-3", "o-1", qty="1", price="1"),
        f.metric(6),
    )

    assert _errors(frames) == [("event_refused", "events[1]", 4)]
    assert "numeric field overflow" in frames[0].message
    assert frames[-1] == p.Ack(seq=6)
    assert result.stored == 3
    # The events on either side of it are stored as if they had come without it.
    assert list(
        Fill.objects.filter(engine=engine).order_by("seq").values_list("seq", flat=True)
    ) == [2, 5]
    assert Position.objects.get(engine=engine).quantity == position_before + 1
    assert list(MetricSample.objects.filter(engine=engine).values_list("seq", flat=True)) == [3, 6]
    # Recorded in the event log with its reason, counted, and past the watermark: a replay of
    # the frame changes nothing.
    ((seq, reason, logged),) = _refusals(engine)
    assert (seq, logged[0]["fill_id"], logged[0]["seq"]) == (4, "f-2", 4)
    assert reason.startswith("events[1]: numeric field overflow")
    assert 4 not in EngineEvent.objects.filter(engine=engine).values_list("seq", flat=True)
    engine.refresh_from_db()
    assert (engine.last_seq, engine.refused_events) == (6, 1)
    replay, _ = _answer(engine, f.fill(4, "f-2", "o-1", qty=BIG, price="1"), f.metric(6))
    assert replay == [p.Ack(seq=6)]
    assert len(_refusals(engine)) == 1


@pytest.mark.django_db
def test_an_account_whose_drawdown_overflows_in_python_is_refused_alone(make_engine):
    engine, _ = make_engine()
    # A high-water mark of 0.00000001 and an equity of -9,999,999,999,999,999: a drawdown of
    # 10^26 %, which Python's decimals cannot even round to the column's 6 places.
    frames, _ = _answer(
        engine,
        f.account(1, "0.00000001"),
        f.account(2, "-9999999999999999"),
        f.log(3, "after"),
    )

    assert _errors(frames) == [("event_refused", "events[1]", 2)]
    assert "InvalidOperation" in frames[0].message
    assert frames[-1] == p.Ack(seq=3)
    assert list(AccountSnapshot.objects.filter(engine=engine).values_list("seq", flat=True)) == [1]
    assert list(EngineLog.objects.filter(engine=engine).values_list("seq", flat=True)) == [3]
    engine.refresh_from_db()
    assert (engine.equity, engine.last_seq, engine.refused_events) == (Decimal("1E-8"), 3, 1)


@pytest.mark.django_db
def test_several_bad_events_among_many_are_each_refused_and_the_rest_stored_in_order(make_engine):
    engine, _ = make_engine()
    events: list[p.Event] = [f.order(1, "o-1", qty=BIG), f.fill(2, "f-0", "o-1", qty=BIG)]
    bad = {7, 19, 20, 33}
    for seq in range(3, 41):
        events.append(f.fill(seq, f"f-{seq}", "o-1", qty=BIG) if seq in bad else f.metric(seq))

    frames, result = _answer(engine, *events)

    assert _errors(frames) == [("event_refused", f"events[{s - 1}]", s) for s in sorted(bad)]
    assert frames[-1] == p.Ack(seq=40)
    assert result.stored == 40 - len(bad)
    stored = set(MetricSample.objects.filter(engine=engine).values_list("seq", flat=True))
    assert stored == set(range(3, 41)) - bad
    assert [seq for seq, _, _ in _refusals(engine)] == sorted(bad)


@pytest.mark.django_db
def test_a_refused_event_raises_the_default_alert(make_engine):
    engine, _ = make_engine()
    now = datetime.now(UTC)
    assert rule_metrics.METRICS["refused_events"].measure(engine, now) == 0
    assert AlertRule.objects.filter(metric="refused_events").exists()  # installed by default

    _answer(
        engine,
        f.order(1, "o-1", qty=BIG),
        f.fill(2, "f-1", "o-1", qty=BIG),
        f.fill(3, "f-2", "o-1", qty=BIG),
    )

    engine.refresh_from_db()
    assert rule_metrics.METRICS["refused_events"].measure(engine, datetime.now(UTC)) == 1
    evaluate_engine(engine.pk)
    alert = Alert.objects.get(engine=engine, rule__metric="refused_events")
    assert alert.state == Alert.State.FIRING


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_refuses_nothing_and_acks_nothing(make_engine):
    engine, _ = make_engine()
    ingest_events(engine_id=engine.pk, events=[f.metric(1)])
    with connection.cursor() as cursor:
        cursor.execute("SET default_transaction_read_only = on")
    try:
        frames, result = _answer(engine, f.metric(2), f.order(3, "o-1"))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET default_transaction_read_only")

    assert result is None
    assert _errors(frames) == [("internal_error", None, None)]
    engine.refresh_from_db()
    assert (engine.last_seq, engine.refused_events) == (1, 0)
    assert not _refusals(engine)
    assert not Order.objects.filter(engine=engine).exists()


# --- over the engine socket, a real uvicorn -----------------------------------------------


def _raw(kind: str, seq: int, **fields: object) -> dict:
    return {"kind": kind, "seq": seq, "ts": "2026-11-23T14:00:00Z", **fields}


def _metric(seq: int, **fields: object) -> dict:
    return _raw("metric", seq, name="latency_ms", value=1.5, **fields)


async def _next(ws) -> dict:
    while (answer := json.loads(await asyncio.wait_for(ws.recv(), timeout=10)))["type"] == (
        "heartbeat"
    ):
        pass
    return answer


async def _until_ack(ws) -> list[dict]:
    answers = []
    while True:
        answers.append(answer := await _next(ws))
        if answer["type"] == "ack" or answer.get("code") == "internal_error":
            return answers


def test_over_the_socket_each_bad_event_is_refused_by_name_and_the_rest_stored(
    uvicorn_server: UvicornServer, engine_and_token
):
    engine, token = engine_and_token
    hello = {
        "type": "hello",
        "protocol": 1,
        "engine_build": "b",
        "config_hash": "c",
        "mode": "paper",
        "broker": "sim",
        "account": "a",
        "trading_state": "ACTIVE",
        "last_seq": 0,
    }
    deep: object = 1
    for _ in range(40):
        deep = [deep]
    frame = [
        _metric(1),
        _raw("log", 2, level="warning", message="broker says \u0000"),  # U+0000
        _raw(
            "order",
            3,
            client_order_id="o-1",
            symbol="AAPL",
            side="buy",
            order_type="market",
            quantity=BIG,
            status="rejected",
            reject_reason="no\u0000",
        ),
        _raw(
            "order",
            4,
            client_order_id="o-2",
            symbol="AAPL",
            side="buy",
            order_type="limit",
            quantity=BIG,
            limit_price="0.000000001",
            status="accepted",
        ),
        _metric(5, ts="2026-11-23T14:00:00+20:00"),  # an offset PostgreSQL cannot hold
        _metric(2**63),  # beyond BIGINT
        _raw("log", 7, level="info", message="deep", context={"a": deep}),  # RecursionError
        _raw(
            "order",
            8,
            client_order_id="o-3",
            symbol="AAPL",
            side="buy",
            order_type="market",
            quantity=BIG,
            status="filled",
        ),
        _raw(
            "fill",
            9,
            fill_id="f-1",
            client_order_id="o-3",
            symbol="AAPL",
            side="buy",
            quantity=BIG,
            price="1",
        ),
        _raw(
            "fill",
            10,
            fill_id="f-2",
            client_order_id="o-3",
            symbol="AAPL",
            side="buy",
            quantity=BIG,
            price="1",
        ),  # the position overflows
        _raw("account", 11, equity="1", cash="1"),
        _raw("account", 12, equity="-9999999", cash="0"),  # the drawdown overflows
        _metric(13),
    ]

    async def engine_session() -> list[dict]:
        async with websockets.connect(
            f"{uvicorn_server.ws_url}/ws/engine/v1",
            additional_headers={"Authorization": f"Bearer {token}"},
        ) as ws:
            await ws.send(json.dumps(hello))
            assert (await _next(ws))["type"] == "welcome"

            await ws.send(json.dumps({"type": "events", "events": frame}))
            answers = await _until_ack(ws)

            errors = [
                (a["code"], a["field"], a.get("seq")) for a in answers if a["type"] == "error"
            ]
            assert errors == [
                ("invalid_event", "events[1].message", 2),
                ("invalid_event", "events[2].reject_reason", 3),
                ("invalid_event", "events[3].limit_price", 4),
                ("invalid_event", "events[4].ts", 5),
                ("invalid_event", "events[5].seq", None),
                ("invalid_event", "events[6].context", 7),
                ("event_refused", "events[9]", 10),
                ("event_refused", "events[11]", 12),
            ]
            assert answers[-1] == {"type": "ack", "seq": 13}

            # The socket is open and the stream goes on.
            await ws.send(json.dumps({"type": "events", "events": [_metric(14)]}))
            assert await _until_ack(ws) == [{"type": "ack", "seq": 14}]
            await ws.send(
                json.dumps(
                    {
                        "type": "heartbeat",
                        "ts": "2026-11-23T14:00:00Z",
                        "trading_state": "ACTIVE",
                        "last_seq": 14,
                        "limits_version": 2**31,
                    }
                )
            )
            refused = await _next(ws)
            assert (refused["code"], refused["field"]) == ("invalid_frame", "limits_version")
            await ws.send(json.dumps({"type": "events", "events": [_metric(15)]}))
            assert await _until_ack(ws) == [{"type": "ack", "seq": 15}]
            return answers

    asyncio.run(engine_session())

    engine.refresh_from_db()
    assert (engine.last_seq, engine.refused_events) == (15, 2)
    assert sorted(MetricSample.objects.filter(engine=engine).values_list("seq", flat=True)) == [
        1,
        13,
        14,
        15,
    ]
    assert list(Order.objects.filter(engine=engine).values_list("last_seq", flat=True)) == [8]
    assert list(Fill.objects.filter(engine=engine).values_list("seq", flat=True)) == [9]
    assert list(AccountSnapshot.objects.filter(engine=engine).values_list("seq", flat=True)) == [11]
    assert [seq for seq, _, _ in _refusals(engine)] == [10, 12]
