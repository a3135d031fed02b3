"""Storage of event batches: durable, idempotent, projected into the ledger."""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from decimal import Decimal

import msgspec
import pytest
from django.db import connection

from controlplane.ingest.store import COPY_MIN_ROWS, ingest_events
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
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(engine_and_token) -> Engine:
    return engine_and_token[0]


def _ingest(engine: Engine, *events):
    return ingest_events(engine_id=engine.pk, events=list(events))


def test_a_batch_is_projected_into_orders_fills_positions_and_the_event_log(engine):
    result = _ingest(
        engine,
        f.order(1, "o-1", qty="100"),
        f.fill(2, "f-1", "o-1", qty="40", price="190"),
        f.fill(3, "f-2", "o-1", qty="60", price="191"),
        f.order(4, "o-1", status="filled", filled="100"),
        f.metric(5),
        f.log(6, "started"),
    )
    assert result.ack_seq == 6
    assert result.stored == 6
    assert result.errors == []
    order = Order.objects.get(engine=engine, client_order_id="o-1")
    assert order.status == "filled"
    assert order.filled_quantity == Decimal("100")
    assert order.created_at == f.at(1)
    assert Fill.objects.filter(engine=engine).count() == 2
    pos = Position.objects.get(engine=engine, instrument__symbol="AAPL")
    assert pos.quantity == Decimal("100")
    assert pos.avg_price == Decimal("190.6")  # (40*190 + 60*191) / 100
    assert MetricSample.objects.get(engine=engine).value == 1.5
    assert EngineLog.objects.get(engine=engine).message == "started"
    assert list(EngineEvent.objects.filter(engine=engine).values_list("seq", flat=True)) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    engine.refresh_from_db()
    assert engine.last_seq == 6


def test_a_replayed_batch_changes_nothing(engine):
    batch = [f.order(1, "o-1"), f.fill(2, "f-1", "o-1"), f.account(3, "1000")]
    _ingest(engine, *batch)
    before = (
        list(Fill.objects.values()),
        list(Position.objects.values()),
        list(AccountSnapshot.objects.values()),
        EngineEvent.objects.count(),
    )
    again = _ingest(engine, *batch)
    assert again.ack_seq == 3
    assert again.stored == 0
    assert again.replayed == 3
    after = (
        list(Fill.objects.values()),
        list(Position.objects.values()),
        list(AccountSnapshot.objects.values()),
        EngineEvent.objects.count(),
    )
    assert [row for row in after[1]] == [
        {**row, "updated_at": after[1][i]["updated_at"]} for i, row in enumerate(before[1])
    ]
    assert after[0] == before[0] and after[2] == before[2] and after[3] == before[3]


def test_a_fill_id_resent_under_a_new_seq_is_counted_once(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"))
    result = _ingest(engine, f.fill(3, "f-1", "o-1", qty="10"))
    assert result.ack_seq == 3
    assert Fill.objects.filter(engine=engine).count() == 1
    assert Position.objects.get(engine=engine).quantity == Decimal("10")


def test_a_fill_id_repeated_inside_one_batch_is_counted_once(engine):
    result = _ingest(
        engine,
        f.order(1, "o-1"),
        f.fill(2, "f-1", "o-1", qty="10"),
        f.fill(3, "f-1", "o-1", qty="10"),
    )
    assert result.ack_seq == 3
    assert result.replayed == 1
    assert list(Fill.objects.values_list("seq", flat=True)) == [2]
    assert Position.objects.get(engine=engine).quantity == Decimal("10")


def test_a_batch_mixing_a_stored_fill_id_with_new_fills_stores_the_new_ones(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"))
    result = _ingest(
        engine,
        f.fill(3, "f-2", "o-1", qty="5"),
        f.fill(4, "f-1", "o-1", qty="10"),
        f.fill(5, "f-3", "o-1", qty="1"),
        f.metric(6),
    )
    assert result.ack_seq == 6
    assert result.stored == 3
    assert result.replayed == 1
    assert result.errors == []
    assert sorted(Fill.objects.values_list("fill_id", "seq")) == [
        ("f-1", 2),
        ("f-2", 3),
        ("f-3", 5),
    ]
    assert Position.objects.get(engine=engine).quantity == Decimal("16")
    assert list(EngineEvent.objects.order_by("seq").values_list("seq", flat=True)) == [
        1,
        2,
        3,
        5,
        6,
    ]


def test_fills_keep_their_exact_decimals_times_and_the_order_expected_price(engine):
    ts = f.at(2).astimezone(timezone(timedelta(hours=-5)))
    fill = msgspec.structs.replace(
        f.fill(2, "f-1", "o-1", qty="0.00000001", price="12345678.12345678", fee="-0.5"), ts=ts
    )
    _ingest(engine, f.order(1, "o-1", expected="190.125"), fill)
    stored = Fill.objects.get(engine=engine)
    assert stored.quantity == Decimal("0.00000001")
    assert stored.price == Decimal("12345678.12345678")
    assert stored.fee == Decimal("-0.5")
    assert stored.expected_price == Decimal("190.125")
    assert stored.ts == f.at(2)
    assert stored.order.client_order_id == "o-1"
    with connection.cursor() as cursor:
        cursor.execute("SELECT ts, payload->>'price' FROM controlplane_engineevent WHERE seq = 2")
        assert cursor.fetchall() == [(f.at(2), "12345678.12345678")]


def test_a_frame_keeps_its_first_events_time_for_the_gates_recovery_count(engine):
    # The first event happened two minutes before the frame was stored: the engine held it.
    _ingest(engine, f.metric(1), f.metric(2))
    with connection.cursor() as cursor:
        cursor.execute("SELECT first_ts, received_at FROM controlplane_eventframe")
        ((first_ts, received_at),) = cursor.fetchall()
    assert first_ts == f.at(1)
    assert received_at > first_ts


@pytest.mark.parametrize("fills", [1, COPY_MIN_ROWS], ids=["statement", "copy"])
def test_a_simulated_fill_keeps_the_price_a_real_order_would_have_got(engine, fills):
    events = [f.order(1, "o-1", expected="100")]
    events += [
        msgspec.structs.replace(
            f.fill(n + 2, f"f-{n}", "o-1", qty="1", price="100.01"),
            market_price=Decimal("100.035") if n % 2 == 0 else None,
        )
        for n in range(fills)
    ]
    _ingest(engine, *events)
    stored = dict(Fill.objects.filter(engine=engine).values_list("fill_id", "market_price"))
    assert len(stored) == fills
    assert stored["f-0"] == Decimal("100.035")
    assert all(stored[f"f-{n}"] is None for n in range(1, fills, 2))


def test_a_fill_for_an_unknown_order_is_refused_by_name_and_the_rest_is_stored(engine):
    result = _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-404"), f.fill(3, "f-2", "o-1"))
    assert result.ack_seq == 3
    [error] = result.errors
    assert error.code == "unknown_order"
    assert error.seq == 2
    assert error.field == "client_order_id"
    assert "o-404" in error.message
    assert list(Fill.objects.values_list("fill_id", flat=True)) == ["f-2"]
    assert not EngineEvent.objects.filter(engine=engine, seq=2).exists()


def test_position_ledger_realises_pnl_and_flips_through_zero(engine):
    _ingest(
        engine,
        f.order(1, "o-1", qty="100"),
        f.fill(2, "f-1", "o-1", qty="100", price="10"),
        f.order(3, "o-2", side="sell", qty="150"),
        f.fill(4, "f-2", "o-2", side="sell", qty="150", price="12", fee="1.5"),
    )
    pos = Position.objects.get(engine=engine)
    assert pos.quantity == Decimal("-50")
    assert pos.avg_price == Decimal("12")  # the remaining short opened at the flip price
    assert pos.realized_pnl == Decimal("198.5")  # 100 * (12 - 10) - 1.5 fee


def test_a_reported_position_that_disagrees_with_the_ledger_is_flagged_until_it_agrees(engine):
    _ingest(engine, f.order(1, "o-1"), f.fill(2, "f-1", "o-1", qty="10"), f.position(3, "12"))
    pos = Position.objects.get(engine=engine)
    assert pos.quantity == Decimal("10")
    assert pos.reported_quantity == Decimal("12")
    assert pos.mismatch_since is not None
    first_seen = pos.mismatch_since
    _ingest(engine, f.position(4, "11"))
    assert Position.objects.get(engine=engine).mismatch_since == first_seen  # still the same one
    _ingest(engine, f.fill(5, "f-2", "o-1", qty="2"), f.position(6, "12"))
    assert Position.objects.get(engine=engine).mismatch_since is None


def test_equity_day_pnl_and_drawdown_from_the_high_water_mark(engine):
    _ingest(engine, f.account(1, "1000"), f.account(2, "1200"), f.account(3, "900"))
    engine.refresh_from_db()
    assert engine.equity == Decimal("900")
    assert engine.session_start_equity == Decimal("1000")
    assert engine.day_pnl == Decimal("-100")
    assert engine.high_water_mark == Decimal("1200")
    assert engine.drawdown_pct == Decimal("25")
    # A new UTC day starts a new session at its first equity.
    _ingest(engine, f.account(4, "950", ts=f.at(3) + timedelta(days=1)))
    engine.refresh_from_db()
    assert engine.session_start_equity == Decimal("950")
    assert engine.day_pnl == Decimal("0")
    assert AccountSnapshot.objects.filter(engine=engine).count() == 4


def test_a_state_event_sets_the_reported_state(engine):
    _ingest(engine, f.state(1, "PAUSED"))
    engine.refresh_from_db()
    assert engine.reported_state == "PAUSED"


def test_events_out_of_order_in_a_batch_are_stored_in_seq_order(engine):
    _ingest(engine, f.fill(2, "f-1", "o-1"), f.order(1, "o-1"))
    assert Fill.objects.filter(engine=engine).count() == 1


def test_the_event_log_is_partitioned_by_day(engine):
    _ingest(engine, f.metric(1))
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM controlplane_eventframe")
        [(partition,)] = cursor.fetchall()
    assert partition.startswith("controlplane_eventframe_2")
    assert partition != "controlplane_eventframe_default"


def test_a_batch_is_one_frame_of_its_stored_events_in_seq_order(engine):
    _ingest(engine, f.order(1, "o-1"), f.metric(2))
    # A replay, an event out of order, and a fill for an order never reported (refused).
    result = _ingest(engine, f.metric(2), f.fill(4, "f-1", "o-1"), f.fill(3, "f-2", "o-nope"))
    assert result.errors and result.errors[0].code == "unknown_order"

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT first_seq, last_seq, events::text FROM controlplane_eventframe"
            " WHERE engine_id = %s ORDER BY first_seq",
            [engine.pk],
        )
        frames = cursor.fetchall()
    assert [(first, last) for first, last, _ in frames] == [(1, 2), (4, 4)]
    assert [[e["seq"] for e in json.loads(text)] for _, _, text in frames] == [[1, 2], [4]]
    assert json.loads(frames[1][2])[0] == {
        "kind": "fill",
        "seq": 4,
        "ts": "2026-11-23T14:00:04Z",
        "fill_id": "f-1",
        "client_order_id": "o-1",
        "symbol": "AAPL",
        "side": "buy",
        "quantity": "10",
        "price": "190.25",
        "fee": "0",
    }
    assert list(EngineEvent.objects.filter(engine=engine).values_list("seq", "kind")) == [
        (1, "order"),
        (2, "metric"),
        (4, "fill"),
    ]


def test_the_event_log_reads_back_through_the_orm_as_sent(engine):
    _ingest(engine, f.metric(1, value=2.5))

    (event,) = EngineEvent.objects.filter(engine=engine)

    assert (event.kind, event.seq) == ("metric", 1)
    assert event.payload["name"] == "latency_ms" and event.payload["value"] == 2.5


def test_an_unknown_symbol_gets_an_instrument_row(engine):
    _ingest(engine, f.order(1, "o-1", symbol="NEWCO"))
    from controlplane.models import Instrument

    assert Instrument.objects.filter(symbol="NEWCO").exists()
