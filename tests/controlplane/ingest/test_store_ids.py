"""Ids an engine reuses (after losing its journal, say) are refused by name, never dropped as
replays or written over what is stored; identical replays stay silent (docs/protocol.md,
section "Ids")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest

from alerts import evaluation
from alerts.models import Alert
from controlplane.gateway import batches, decoding
from controlplane.ingest.store import COPY_MIN_ROWS, ingest_batches, ingest_events
from controlplane.models import Engine, EngineEvent, EngineLog, Fill, Order, Position
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(engine_and_token) -> Engine:
    return engine_and_token[0]


def _ingest(engine: Engine, *events: p.Event):
    return ingest_events(engine_id=engine.pk, events=list(events))


def _send(engine: Engine, *events: p.Event) -> list[p.ServerFrame]:
    """Through the gateway, as a frame from the engine: the error frames, then the ack."""
    frames, _ = batches.events(engine.pk, decoding.decode_frame(f.events_frame(*events)))
    return frames


def _fills(engine: Engine) -> list[tuple[str, Decimal, Decimal, int]]:
    return list(
        Fill.objects.filter(engine=engine)
        .order_by("seq")
        .values_list("fill_id", "quantity", "price", "seq")
    )


def _order(engine: Engine, coid: str) -> tuple:
    return Order.objects.filter(engine=engine, client_order_id=coid).values_list(
        "instrument__symbol", "side", "quantity", "status", "filled_quantity", "last_seq"
    )[0]


def _alerts(engine: Engine, minutes: float = 0) -> list[Alert]:
    evaluation.evaluate_engine(engine.pk, now=datetime.now(UTC) + timedelta(minutes=minutes))
    return list(Alert.objects.filter(engine=engine, rule__name="Reused ids"))


# --- fill ids ------------------------------------------------------------------------------------


def test_a_fill_id_resent_with_another_price_is_refused_by_name_and_the_rest_is_stored(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10", price="190"))

    frames = _send(
        engine,
        f.order(3, "o-2"),
        f.fill(4, "f-1", "o-2", qty="10", price="191"),  # a new fill under a used id
        f.fill(5, "f-2", "o-2", qty="5", price="191"),
    )

    error, ack = frames
    assert (error.code, error.field, error.seq) == ("duplicate_id", "events[1].fill_id", 4)
    assert "'f-1'" in error.message and "price 190 stored, 191 sent" in error.message
    assert ack == p.Ack(seq=5)
    assert _fills(engine) == [("f-1", 10, 190, 2), ("f-2", 5, 191, 5)]
    assert Position.objects.get(engine=engine).quantity == 15
    assert not EngineEvent.objects.filter(engine=engine, seq=4).exists()
    assert set(EngineEvent.objects.values_list("seq", flat=True)) == {1, 2, 3, 5}
    line = EngineLog.objects.get(engine=engine)
    assert (line.level, line.seq) == ("error", None)
    assert line.context == {"code": "duplicate_id", "field": "fill_id", "id": "f-1", "seq": 4}


def test_a_reused_fill_id_raises_an_alert_naming_it_which_resolves_once_quiet(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"))
    _ingest(engine, f.fill(3, "f-1", "o-1", qty="11"))

    [alert] = _alerts(engine)
    assert (alert.state, alert.severity) == ("firing", "critical")
    assert alert.summary.startswith("alpha: Reused ids: reused_ids 1 above 0: fill_id 'f-1' ")
    assert "quantity 10 stored, 11 sent" in alert.summary

    [alert] = _alerts(engine, minutes=16)
    assert alert.state == "resolved"


def test_the_same_fill_replayed_under_a_new_seq_is_silent_and_counted_once(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10", fee="0.5"))
    replay = msgspec.structs.replace(f.fill(3, "f-1", "o-1", qty="10.00", fee="0.50"), ts=f.at(9))

    frames = _send(engine, replay)

    assert frames == [p.Ack(seq=3)]
    assert _fills(engine) == [("f-1", 10, Decimal("190.25"), 2)]
    assert Position.objects.get(engine=engine).quantity == 10
    assert not EngineLog.objects.exists()
    assert _alerts(engine) == []


def test_a_fill_id_reused_inside_one_frame_is_refused_and_the_first_stands(engine):
    frames = _send(
        engine,
        f.order(1, "o-1"),
        f.fill(2, "f-1", "o-1", qty="10"),
        f.fill(3, "f-1", "o-1", qty="10"),  # the same fill again: a replay
        f.fill(4, "f-1", "o-1", qty="10", side="sell"),  # another fill under its id
    )

    error, ack = frames
    assert (error.code, error.field, error.seq) == ("duplicate_id", "events[3].fill_id", 4)
    assert "side 'buy' stored, 'sell' sent" in error.message
    assert ack == p.Ack(seq=4)
    assert _fills(engine) == [("f-1", 10, Decimal("190.25"), 2)]


def test_the_field_names_the_event_by_its_place_in_the_frame_past_events_refused_at_decoding(
    engine,
):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"))
    raw = json_events(f.metric(3), f.fill(4, "f-1", "o-1", qty="12"))
    raw.insert(0, {"kind": "metric", "seq": 5, "ts": "not a time", "name": "x", "value": 1})

    frame = msgspec.json.encode({"type": "events", "events": raw})
    frames, _ = batches.events(engine.pk, decoding.decode_frame(frame))

    assert [(e.code, e.field) for e in frames[:-1]] == [
        ("invalid_event", "events[0].ts"),
        ("duplicate_id", "events[2].fill_id"),
    ]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_over_the_socket_a_reused_fill_id_gets_an_error_naming_it_and_the_ack(
    engine_and_token,
):
    from tests.gateway.test_engine_socket import greeted, send_events

    _, token = engine_and_token
    ws, _ = await greeted(token)
    first = await send_events(ws, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"))
    assert first == [{"type": "ack", "seq": 2}]

    answers = await send_events(ws, f.metric(3), f.fill(4, "f-1", "o-1", qty="11"))

    error, ack = answers
    assert (error["code"], error["field"], error["seq"]) == ("duplicate_id", "events[1].fill_id", 4)
    assert "fill_id 'f-1'" in error["message"]
    assert ack == {"type": "ack", "seq": 4}
    await ws.disconnect()


def json_events(*events: p.Event) -> list[dict]:
    return [msgspec.json.decode(p.encode_event(event)) for event in events]


def _many_fills(first_seq: int, count: int, coid: str = "o-1") -> list[p.FillEvent]:
    return [f.fill(first_seq + n, f"bulk-{n}", coid, qty="1") for n in range(count)]


def test_a_large_frame_refuses_a_reused_fill_id_the_unique_key_finds_and_stores_the_rest(
    engine,
):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"), f.fill(3, "f-2", "o-1"))
    fills = _many_fills(4, COPY_MIN_ROWS)  # COPYed without looking their ids up first
    fills.insert(7, f.fill(4 + COPY_MIN_ROWS, "f-1", "o-1", qty="10", price="200"))
    fills.insert(9, f.fill(5 + COPY_MIN_ROWS, "f-2", "o-1"))  # a replay

    result = ingest_events(engine_id=engine.pk, events=fills)

    [error] = result.errors
    assert (error.code, error.field, error.seq) == ("duplicate_id", "fill_id", 4 + COPY_MIN_ROWS)
    assert (result.stored, result.replayed) == (COPY_MIN_ROWS, 1)
    assert Fill.objects.get(engine=engine, fill_id="f-1").price == Decimal("190.25")
    assert Fill.objects.filter(engine=engine).count() == COPY_MIN_ROWS + 2
    assert Position.objects.get(engine=engine).quantity == 20 + COPY_MIN_ROWS
    assert EngineLog.objects.get(engine=engine).context["id"] == "f-1"
    [alert] = _alerts(engine)
    assert "fill_id 'f-1'" in alert.summary


@pytest.mark.parametrize("bulk", [0, COPY_MIN_ROWS], ids=["small group", "large group"])
def test_in_a_group_only_the_engine_that_reuses_a_fill_id_is_refused(make_engine, bulk):
    reuser, other = make_engine("reuser")[0], make_engine("other")[0]
    ingest_events(engine_id=reuser.pk, events=[f.order(1, "o-1"), f.fill(2, "f-1", "o-1")])

    reused = [f.fill(3, "f-1", "o-1", price="1"), *_many_fills(4, bulk)]
    fresh = [f.order(1, "o-1"), f.fill(2, "f-1", "o-1", price="1"), *_many_fills(3, bulk)]
    results = ingest_batches([(reuser.pk, reused), (other.pk, fresh)])

    assert [(e.code, e.seq) for e in results[0].errors] == [("duplicate_id", 3)]
    assert results[1].errors == []
    assert [r.ack_seq for r in results] == [3 + bulk, 2 + bulk]
    assert Fill.objects.get(engine=reuser, fill_id="f-1").price == Decimal("190.25")
    assert Fill.objects.get(engine=other, fill_id="f-1").price == 1
    assert Fill.objects.filter(engine=reuser).count() == 1 + bulk
    assert Fill.objects.filter(engine=other).count() == 1 + bulk
    assert list(EngineLog.objects.values_list("engine_id", flat=True)) == [reuser.pk]


# --- client order ids ----------------------------------------------------------------------------


def test_a_client_order_id_reused_after_its_order_filled_is_refused_and_the_order_stands(engine):
    _ingest(
        engine,
        f.order(1, "o-1", qty="100", status="new"),
        f.fill(2, "f-1", "o-1", qty="100"),
        f.order(3, "o-1", qty="100", status="filled", filled="100"),
    )
    before = _order(engine, "o-1")

    frames = _send(
        engine,
        f.metric(4),
        f.order(5, "o-1", qty="50", status="new"),  # another order under the used id
        f.order(6, "o-1", symbol="MSFT", qty="100", status="filled", filled="100"),
    )

    *errors, ack = frames
    assert [(e.code, e.field, e.seq) for e in errors] == [
        ("duplicate_id", "events[1].client_order_id", 5),
        ("duplicate_id", "events[2].client_order_id", 6),
    ]
    assert "'o-1'" in errors[0].message and "quantity" in errors[0].message
    assert "symbol" in errors[1].message
    assert ack == p.Ack(seq=6)
    assert _order(engine, "o-1") == before == ("AAPL", "buy", 100, "filled", 100, 3)
    assert EngineLog.objects.filter(engine=engine, context__id="o-1").count() == 2
    [alert] = _alerts(engine)
    assert "client_order_id 'o-1'" in alert.summary


@pytest.mark.parametrize("ended", ["cancelled", "rejected", "expired"])
def test_an_ended_order_begun_again_under_its_id_is_refused(engine, ended):
    _ingest(engine, f.order(1, "o-1", status="accepted"), f.order(2, "o-1", status=ended))

    frames = _send(engine, f.order(3, "o-1", status="accepted"))  # the same fields, later

    error, ack = frames
    assert (error.code, error.field, error.seq) == ("duplicate_id", "events[0].client_order_id", 3)
    assert f"ended ({ended})" in error.message
    assert ack == p.Ack(seq=3)
    assert _order(engine, "o-1")[3:] == (ended, 0, 2)


def test_an_order_reused_in_the_frame_it_ended_in_is_refused(engine):
    frames = _send(
        engine,
        f.order(1, "o-1", status="new"),
        f.order(2, "o-1", status="cancelled"),
        f.order(3, "o-1", status="new", qty="5"),
    )

    assert [(e.code, e.seq) for e in frames[:-1]] == [("duplicate_id", 3)]
    assert _order(engine, "o-1")[2:] == (100, "cancelled", 0, 2)


def test_a_working_order_never_changes_symbol_or_side_but_may_be_amended(engine):
    _ingest(engine, f.order(1, "o-1", qty="100", status="accepted"))

    frames = _send(
        engine,
        f.order(2, "o-1", side="sell", status="accepted"),
        f.order(3, "o-1", qty="80", status="accepted"),  # amended: a smaller quantity
    )

    assert [(e.code, e.seq) for e in frames[:-1]] == [("duplicate_id", 2)]
    assert _order(engine, "o-1") == ("AAPL", "buy", 80, "accepted", 0, 3)


def test_a_normal_lifecycle_and_late_reports_of_an_ended_order_are_stored_without_error(engine):
    frames = _send(
        engine,
        f.order(1, "o-1", qty="100", status="new"),
        f.order(2, "o-1", qty="100", status="partially_filled", filled="40"),
        f.fill(3, "f-1", "o-1", qty="40"),
        f.fill(4, "f-2", "o-1", qty="60"),
        f.order(5, "o-1", qty="100", status="filled", filled="100"),
    )
    assert frames == [p.Ack(seq=5)]
    assert _order(engine, "o-1") == ("AAPL", "buy", 100, "filled", 100, 5)

    late_partial = msgspec.structs.replace(
        f.order(7, "o-1", status="partially_filled", filled="60"), ts=f.at(4)
    )
    frames = _send(
        engine,
        f.order(6, "o-1", qty="100", status="filled", filled="100"),  # the end, replayed
        late_partial,  # a broker's report that crossed the fill: the order stays ended
        msgspec.structs.replace(f.order(8, "o-1", status="new"), ts=f.at(1)),  # its first, again
    )
    assert frames == [p.Ack(seq=8)]
    assert _order(engine, "o-1") == ("AAPL", "buy", 100, "filled", 100, 6)
    assert set(EngineEvent.objects.values_list("seq", flat=True)) == set(range(1, 9))

    # A broker's race: the cancel's confirmation after the fill. Not a reused id: the latest
    # report, as any other end.
    frames = _send(engine, f.order(9, "o-1", status="cancelled", filled="100"))
    assert frames == [p.Ack(seq=9)]
    assert _order(engine, "o-1")[3:] == ("cancelled", 100, 9)
    assert not EngineLog.objects.exists()
    engine.refresh_from_db()
    assert engine.working_orders == 0


def test_an_amended_order_s_first_reports_replayed_after_its_end_are_silent(engine):
    _ingest(
        engine,
        f.order(1, "o-1", qty="100", status="new"),
        f.order(2, "o-1", qty="80", status="accepted"),  # amended
        f.order(3, "o-1", qty="80", status="cancelled"),
    )

    # An engine that lost its journal reports its history again, under new seqs.
    history = [
        f.order(1, "o-1", qty="100", status="new"),
        f.order(2, "o-1", qty="80", status="accepted"),
        f.order(3, "o-1", qty="80", status="cancelled"),
    ]
    frames = _send(engine, *(msgspec.structs.replace(o, seq=o.seq + 3) for o in history))

    assert frames == [p.Ack(seq=6)]
    assert _order(engine, "o-1") == ("AAPL", "buy", 80, "cancelled", 0, 3)
    assert not EngineLog.objects.exists()


def test_engines_have_their_own_client_order_ids_and_fill_ids(make_engine):
    first, second = make_engine("first")[0], make_engine("second")[0]
    ended = [
        f.order(1, "o-1", status="new"),
        f.fill(2, "f-1", "o-1", qty="100"),
        f.order(3, "o-1", status="filled", filled="100"),
    ]
    ingest_events(engine_id=first.pk, events=ended)

    same_ids = [
        f.order(1, "o-1", symbol="MSFT", side="sell", status="new"),
        f.fill(2, "f-1", "o-1", symbol="MSFT", side="sell", qty="3", price="400"),
    ]
    result = ingest_events(engine_id=second.pk, events=same_ids)

    assert result.errors == []
    assert _order(first, "o-1") == ("AAPL", "buy", 100, "filled", 100, 3)
    assert _order(second, "o-1") == ("MSFT", "sell", 100, "new", 0, 1)
    assert _fills(second) == [("f-1", 3, 400, 2)]
