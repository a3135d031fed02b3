"""The ingest's two ways of writing a batch (a script of statements for small tables, COPY for
large ones) store the same thing, and a small batch costs two round trips inside its transaction.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from django.db import connection

from controlplane.ingest.store import COPY_MIN_ROWS, ingest_events
from controlplane.models import (
    AccountSnapshot,
    Engine,
    EngineLog,
    Fill,
    MetricSample,
    Order,
    Position,
)
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

NOW = f.at(10_000)
ODD = 'it\'s a "quoted" back\\slash,\n{brace} é 東'


def _stream(orders: int) -> list[p.Event]:
    """Orders with fills (a replayed fill_id, a reused one, a fill for an order never sent), an
    order id reused, position reports, account snapshots over two UTC days, metrics, logs and a
    state change, seq 1.."""
    events: list[p.Event] = []

    def add(event: p.Event) -> None:
        events.append(msgspec.structs.replace(event, seq=len(events) + 1))

    for n in range(orders):
        symbol = f"S{n % 7}" if n % 5 else f"S'{n % 3}"
        side = "buy" if n % 3 else "sell"
        coid = f"o-{n}" if n % 4 else f"o-{n}-{ODD}"
        expected = str(100 + n % 9)
        same = {"symbol": symbol, "side": side}
        first = {"qty": "10", "price": f"{100 + n % 11}.25", "fee": "0.01"}
        add(f.order(0, coid, qty="30", expected=expected, **same))
        add(f.fill(0, f"f-{n}-a", coid, **first, **same))
        add(f.fill(0, f"f-{n}-b", coid, qty="20", price="101.5", **same))
        if n % 10 == 3:  # replayed: counted once
            add(f.fill(0, f"f-{n}-a", coid, **first, **same))
        if n % 20 == 13:  # reused for another fill: refused
            add(f.fill(0, f"f-{n}-b", coid, qty="20", price="102", **same))
        if n % 25 == 7:
            add(f.fill(0, f"f-{n}-x", "never-sent", symbol=symbol))
        add(f.order(0, coid, qty="30", status="filled", filled="30", expected=expected, **same))
        if n % 30 == 17:  # the id reused for a new order after this one filled: refused
            add(f.order(0, coid, symbol=symbol, side=side, qty="31", status="new"))
        if n % 6 == 0:
            add(f.position(0, str(n), symbol=symbol))
        day = timedelta(days=1) if n > orders // 2 else timedelta(0)
        add(f.account(0, str(100_000 - n * 7 + (n % 4) * 50), ts=f.at(n) + day))
        add(f.metric(0, value=n / 3))
        add(msgspec.structs.replace(f.log(0, f"{ODD} #{n}"), context={"n": n, "why": ODD}))
    add(f.state(0, "PAUSED"))
    for event in events:
        event.ts = f.at(event.seq) if not isinstance(event, p.AccountEvent) else event.ts
    return events


def _stored(engine: Engine) -> dict[str, Any]:
    """Everything the batches projected, without ids that differ between engines."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq, kind, ts, received_at, payload::text FROM controlplane_engineevent "
            "WHERE engine_id = %s ORDER BY seq",
            [engine.pk],
        )
        log = cursor.fetchall()
    engine.refresh_from_db()
    return {
        "event log": log,
        "orders": list(
            Order.objects.filter(engine=engine)
            .order_by("client_order_id")
            .values_list(
                "client_order_id",
                "instrument__symbol",
                "side",
                "quantity",
                "status",
                "filled_quantity",
                "expected_price",
                "created_at",
                "updated_at",
                "last_seq",
            )
        ),
        "fills": list(
            Fill.objects.filter(engine=engine)
            .order_by("seq")
            .values_list(
                "fill_id",
                "order__client_order_id",
                "instrument__symbol",
                "side",
                "quantity",
                "price",
                "fee",
                "expected_price",
                "ts",
                "seq",
            )
        ),
        "positions": list(
            Position.objects.filter(engine=engine)
            .order_by("instrument__symbol")
            .values_list(
                "instrument__symbol",
                "quantity",
                "avg_price",
                "realized_pnl",
                "last_price",
                "reported_quantity",
                "reported_at",
                "mismatch_since",
            )
        ),
        "snapshots": list(
            AccountSnapshot.objects.filter(engine=engine)
            .order_by("seq")
            .values_list("ts", "equity", "cash", "margin_used", "currency", "seq")
        ),
        "metrics": list(
            MetricSample.objects.filter(engine=engine)
            .order_by("seq")
            .values_list("ts", "name", "value", "seq")
        ),
        "logs": list(
            EngineLog.objects.filter(engine=engine)
            .order_by("seq", "message")  # the lines of refused events have no seq
            .values_list("ts", "level", "message", "context", "seq")
        ),
        "engine": (
            engine.last_seq,
            engine.equity,
            engine.cash,
            engine.session_start_at,
            engine.session_start_equity,
            engine.high_water_mark,
            engine.day_pnl,
            engine.drawdown_pct,
            engine.reported_state,
        ),
    }


def _ingest_in_frames(engine: Engine, events: list[p.Event], size: int) -> list[p.Error]:
    errors = []
    for start in range(0, len(events), size):
        result = ingest_events(engine_id=engine.pk, events=events[start : start + size], now=NOW)
        errors += result.errors
    return errors


def test_small_frames_and_one_large_frame_store_exactly_the_same(make_engine):
    orders = COPY_MIN_ROWS + 20  # every table of the large frame goes in with COPY
    events = _stream(orders=orders)
    small, large = make_engine("small")[0], make_engine("large")[0]

    small_errors = _ingest_in_frames(small, events, size=9)
    large_errors = _ingest_in_frames(large, events, size=len(events))

    assert [(e.code, e.seq) for e in small_errors] == [(e.code, e.seq) for e in large_errors]
    assert {e.code for e in large_errors} == {"unknown_order", "duplicate_id"}
    assert _stored(small) == _stored(large)
    stored = _stored(large)
    assert len(stored["fills"]) == 2 * orders  # the repeats and the orphans are not
    # The orders whose ids were reused stand as they ended.
    assert {(row[3], row[4]) for row in stored["orders"]} == {(30, "filled")}
    assert stored["logs"][0][2:4] == (f"{ODD} #0", {"n": 0, "why": ODD})
    assert any(row[0].endswith(ODD) for row in stored["orders"])
    assert stored["engine"][-1] == "PAUSED"


def test_text_with_quotes_backslashes_and_newlines_is_stored_as_sent(engine_and_token):
    engine = engine_and_token[0]
    coid = f"o-{ODD}"[:64]

    ingest_events(
        engine_id=engine.pk,
        events=[
            f.order(1, coid, symbol="BRK'B\\"),
            f.fill(2, f"f-{ODD}"[:64], coid, symbol="BRK'B\\"),
            msgspec.structs.replace(f.log(3, ODD), context={ODD: [ODD]}),
        ],
    )

    fill = Fill.objects.select_related("order", "instrument").get(engine=engine)
    assert (fill.fill_id, fill.order.client_order_id) == (f"f-{ODD}"[:64], coid)
    assert fill.instrument.symbol == "BRK'B\\"
    assert EngineLog.objects.values_list("message", "context").get() == (ODD, {ODD: [ODD]})
    with connection.cursor() as cursor:
        cursor.execute("SELECT payload->>'message' FROM controlplane_engineevent WHERE seq = 3")
        assert cursor.fetchone() == (ODD,)


def _statements(run) -> list[str]:
    seen: list[str] = []

    def note(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(note):
        run()
    # The test runs in a transaction, so the ingest's own one is a savepoint here, and the day's
    # partition, known to a process from the first commit of the day on, is looked up each time;
    # a partition of the day that the test database lacks is made (in use: ahead, by beat).
    skip = ("SAVEPOINT", "RELEASE SAVEPOINT", "SELECT to_regclass", "CREATE TABLE IF NOT EXISTS")
    return [sql for sql in seen if not sql.startswith(skip)]


def test_a_small_batch_takes_two_round_trips_and_a_replayed_one_takes_one(engine_and_token):
    engine = engine_and_token[0]
    ingest_events(engine_id=engine.pk, events=[f.order(1, "o-1", symbol="AAPL")])
    batch = [
        f.order(2, "o-2"),
        f.fill(3, "f-1", "o-2"),
        f.fill(4, "f-2", "o-1"),
        f.order(5, "o-2", status="filled", filled="20"),
        f.position(6, "20"),
        f.metric(7),
        f.log(8),
        f.account(9, "1000"),
        f.state(10, "ACTIVE"),
    ]

    assert len(_statements(lambda: ingest_events(engine_id=engine.pk, events=batch))) == 2
    assert len(_statements(lambda: ingest_events(engine_id=engine.pk, events=batch))) == 1
    assert Fill.objects.filter(engine=engine).count() == 2


def test_the_result_carries_what_the_batch_stored_and_the_engine_row_it_left(engine_and_token):
    engine = engine_and_token[0]

    result = ingest_events(
        engine_id=engine.pk, events=[f.metric(1), f.account(2, "1500"), f.fill(3, "f-1", "o-9")]
    )

    assert result.kinds == {"metric", "account"}
    assert result.engine is not None
    assert (result.engine.pk, result.engine.name) == (engine.pk, "alpha")
    assert result.engine.equity == Decimal("1500")
    assert result.engine.strategy_tags == ["momentum"]
    assert result.engine.desired_state == "ACTIVE"


def test_a_large_batch_resending_a_stored_fill_id_under_a_new_seq_stores_the_others(
    engine_and_token,
):
    engine = engine_and_token[0]
    ingest_events(engine_id=engine.pk, events=[f.order(1, "o-1"), f.fill(2, "f-7", "o-1", qty="1")])
    fills = [f.fill(3 + n, f"f-{n}", "o-1", qty="1") for n in range(COPY_MIN_ROWS + 5)]

    result = ingest_events(engine_id=engine.pk, events=fills)

    assert (result.ack_seq, result.stored, result.replayed) == (fills[-1].seq, len(fills) - 1, 1)
    assert Fill.objects.filter(engine=engine).count() == len(fills)  # f-7 once, under seq 2
    assert Fill.objects.get(engine=engine, fill_id="f-7").seq == 2
    position = Position.objects.get(engine=engine)
    assert position.quantity == Decimal(len(fills))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM controlplane_engineevent WHERE engine_id = %s", [engine.pk]
        )
        assert cursor.fetchone() == (2 + len(fills) - 1,)
