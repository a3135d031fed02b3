"""Runs, strategies and fee currencies (docs/protocol.md, "Runs" and section 5): order and fill
ids are unique per (engine, run), so a backtest or a restarted paper run that repeats the ids of
the run before it is stored, not dropped as replays; within one run a repeat is still one."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from controlplane.gateway import session
from controlplane.ingest.store import COPY_MIN_ROWS, ingest_events
from controlplane.models import Engine, Fill, Order, Position
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(engine_and_token) -> Engine:
    return engine_and_token[0]


def _hello(engine: Engine, run_id: str, last_seq: int = 0) -> None:
    frame = p.Hello(
        protocol=p.PROTOCOL_VERSION,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="sim",
        account="acc",
        trading_state="ACTIVE",
        last_seq=last_seq,
        run_id=run_id,
    )
    (welcome,) = session.hello(engine, frame, None)
    assert isinstance(welcome, p.Welcome)


def _run(first_seq: int, fills: int) -> list[p.Event]:
    """A run as a deterministic backtest reports it: the same ids each time."""
    events: list[p.Event] = [f.order(first_seq, "o-1", qty=str(fills))]
    events += [f.fill(first_seq + 1 + n, f"f-{n}", "o-1", qty="1") for n in range(fills)]
    return events


@pytest.mark.parametrize("fills", [2, COPY_MIN_ROWS + 5], ids=["statement", "copy"])
def test_a_second_run_repeating_the_ids_of_the_first_is_stored(engine, fills):
    _hello(engine, "run-1")
    first = ingest_events(engine_id=engine.pk, events=_run(1, fills))
    assert first.stored == fills + 1 and not first.errors

    _hello(engine, "run-2", last_seq=fills + 1)
    second = ingest_events(engine_id=engine.pk, events=_run(fills + 2, fills))

    assert second.stored == fills + 1 and not second.errors
    runs = Fill.objects.filter(engine=engine).values_list("run_id", flat=True)
    assert sorted(set(runs)) == ["run-1", "run-2"]
    assert Fill.objects.filter(engine=engine).count() == 2 * fills
    assert sorted(Order.objects.filter(engine=engine).values_list("run_id", "client_order_id")) == [
        ("run-1", "o-1"),
        ("run-2", "o-1"),
    ]
    # Each run's fills are counted: the position holds both runs' quantity.
    assert Position.objects.get(engine=engine).quantity == 2 * fills
    engine.refresh_from_db()
    assert engine.run_id == "run-2"


@pytest.mark.parametrize("fills", [2, COPY_MIN_ROWS + 5], ids=["statement", "copy"])
def test_within_one_run_a_fill_resent_under_a_new_seq_is_still_stored_once(engine, fills):
    _hello(engine, "run-1")
    ingest_events(engine_id=engine.pk, events=_run(1, fills))

    # The same fills again under new seqs (an engine that resent its fills after a restart).
    again = [msgspec.structs.replace(event, seq=event.seq + fills + 1) for event in _run(1, fills)]
    result = ingest_events(engine_id=engine.pk, events=again)

    assert not result.errors
    assert Fill.objects.filter(engine=engine).count() == fills
    assert Order.objects.filter(engine=engine).count() == 1
    assert Position.objects.get(engine=engine).quantity == fills


def test_a_run_id_kept_across_a_reconnection_keeps_deduplicating(engine):
    _hello(engine, "run-1")
    ingest_events(engine_id=engine.pk, events=_run(1, 2))
    _hello(engine, "run-1", last_seq=3)

    result = ingest_events(engine_id=engine.pk, events=[f.fill(4, "f-0", "o-1", qty="1")])

    assert not result.errors
    assert Fill.objects.filter(engine=engine).count() == 2


def test_a_reused_fill_id_with_other_content_in_the_same_run_is_still_refused(engine):
    _hello(engine, "run-1")
    ingest_events(engine_id=engine.pk, events=_run(1, 1))

    result = ingest_events(
        engine_id=engine.pk, events=[f.fill(3, "f-0", "o-1", qty="1", price="200")]
    )

    assert [(e.code, e.field) for e in result.errors] == [("duplicate_id", "fill_id")]
    assert Fill.objects.filter(engine=engine).count() == 1


@pytest.mark.parametrize("fills", [1, COPY_MIN_ROWS], ids=["statement", "copy"])
def test_strategy_ids_and_fee_currencies_are_stored(engine, fills):
    order = msgspec.structs.replace(f.order(1, "o-1", qty=str(fills)), strategy_id="mean-rev")
    events: list[p.Event] = [order]
    for n in range(fills):
        fill = f.fill(2 + n, f"f-{n}", "o-1", qty="1", fee="0.5")
        events.append(msgspec.structs.replace(fill, strategy_id="mean-rev", fee_currency="BNB"))

    result = ingest_events(engine_id=engine.pk, events=events)

    assert not result.errors
    assert Order.objects.get(engine=engine).strategy_id == "mean-rev"
    stored = set(Fill.objects.filter(engine=engine).values_list("strategy_id", "fee_currency"))
    assert stored == {("mean-rev", "BNB")}
    assert Fill.objects.filter(engine=engine, fee=Decimal("0.5")).count() == fills


def test_a_later_report_without_a_strategy_keeps_the_one_stored(engine):
    order = msgspec.structs.replace(f.order(1, "o-1"), strategy_id="trend")
    ingest_events(engine_id=engine.pk, events=[order])
    ingest_events(engine_id=engine.pk, events=[f.order(2, "o-1", status="cancelled")])

    assert Order.objects.get(engine=engine).strategy_id == "trend"


def test_a_symbol_at_the_bound_is_stored_for_orders_fills_and_positions(engine):
    symbol = "OPT-" + "9" * (p.MAX_SYMBOL_LENGTH - 4)
    result = ingest_events(
        engine_id=engine.pk,
        events=[
            f.order(1, "o-1", symbol=symbol),
            f.fill(2, "f-1", "o-1", symbol=symbol),
            f.position(3, "10", symbol=symbol),
        ],
    )

    assert not result.errors and result.stored == 3
    assert Order.objects.get(engine=engine).instrument.symbol == symbol
    assert Position.objects.get(engine=engine).instrument.symbol == symbol
