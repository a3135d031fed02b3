"""Several engines' batches stored in one transaction (ingest.store.ingest_batches), as the socket's
writer does with the frames that wait together (socket._EventsWriter): they store exactly what
each batch alone would, and one engine's refused batch costs the others nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.db import connection

from controlplane.gateway import batches, decoding, socket
from controlplane.ingest.store import COPY_MIN_ROWS, ingest_batches, ingest_events
from controlplane.models import EngineLog, Fill, MetricSample, Position
from engine_sdk import protocol as p
from tests.controlplane.ingest.test_store_round_trips import NOW, _statements, _stored, _stream
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


def _in_lockstep(engines, events: list[p.Event], size: int) -> list[list[p.Error]]:
    """Every engine sends the same frames; frame k of them all is one group."""
    errors: list[list[p.Error]] = [[] for _ in engines]
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        results = ingest_batches([(engine.pk, chunk) for engine in engines], now=NOW)
        for mine, result in zip(errors, results, strict=True):
            mine += result.errors
    return errors


@pytest.mark.parametrize(
    "size",
    [
        9,  # each table of a group in one statement, the fill ids looked up first
        400,  # the group's fills (a third of COPY_MIN_ROWS each) go in with COPY, not looked up
    ],
)
def test_a_group_stores_for_each_engine_exactly_what_its_batches_alone_store(make_engine, size):
    events = _stream(orders=COPY_MIN_ROWS // 2)
    alone = make_engine("alone")[0]
    together = [make_engine(f"together-{n}")[0] for n in range(3)]

    alone_errors = []
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        alone_errors += ingest_events(engine_id=alone.pk, events=chunk, now=NOW).errors
    group_errors = _in_lockstep(together, events, size)

    expected = _stored(alone)
    assert {e.code for e in alone_errors} == {"unknown_order", "duplicate_id"}
    for engine, errors in zip(together, group_errors, strict=True):
        assert [(e.code, e.seq) for e in errors] == [(e.code, e.seq) for e in alone_errors]
        assert _stored(engine) == expected


def test_a_group_takes_two_round_trips_whatever_its_number_of_engines(make_engine):
    engines = [make_engine(f"e-{n}")[0] for n in range(5)]
    ingest_events(engine_id=make_engine("first")[0].pk, events=[f.order(1, "o-0")])  # AAPL known
    batch = [
        f.order(1, "o-1"),
        f.fill(2, "f-1", "o-1"),
        f.position(3, "100"),
        f.metric(4),
        f.log(5),
        f.account(6, "1000"),
        f.state(7, "ACTIVE"),
    ]

    sent = _statements(lambda: ingest_batches([(e.pk, batch) for e in engines]))

    assert len(sent) == 2
    assert Fill.objects.count() == 5
    assert Position.objects.count() == 5
    assert set(Position.objects.values_list("engine_id", "quantity", "reported_quantity")) == {
        (e.pk, Decimal(10), Decimal(100)) for e in engines
    }


def test_each_engine_keeps_its_own_watermark_in_a_group(make_engine):
    ahead, behind = make_engine("ahead")[0], make_engine("behind")[0]
    ingest_events(engine_id=ahead.pk, events=[f.metric(1, value=1.0), f.metric(2, value=2.0)])

    batches = [
        (ahead.pk, [f.metric(2, value=9.0), f.metric(3, value=3.0)]),
        (behind.pk, [f.metric(1, value=1.0)]),
    ]
    results = ingest_batches(batches)

    assert [(r.ack_seq, r.stored, r.replayed) for r in results] == [(3, 1, 1), (1, 1, 0)]
    assert [r.engine.pk for r in results] == [ahead.pk, behind.pk]
    samples = MetricSample.objects.filter(engine=ahead).order_by("seq")
    assert list(samples.values_list("seq", "value")) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_a_stored_fill_id_resent_in_a_large_group_is_counted_once(make_engine):
    first, second = make_engine("first")[0], make_engine("second")[0]
    ingest_events(engine_id=first.pk, events=[f.order(1, "o-1"), f.fill(2, "f-7", "o-1", qty="1")])
    half = COPY_MIN_ROWS // 2 + 5  # the group's fills are too many to look their ids up first
    resent = [f.fill(3 + n, f"f-{n}", "o-1", qty="1") for n in range(half)]
    fresh = [f.order(1, "o-1")] + [f.fill(2 + n, f"f-{n}", "o-1", qty="1") for n in range(half)]

    results = ingest_batches([(first.pk, resent), (second.pk, fresh)])

    # f-7 of the first engine was stored before, under seq 2; the second's f-7 is its own.
    assert [(r.stored, r.replayed) for r in results] == [(half - 1, 1), (half + 1, 0)]
    assert Fill.objects.get(engine=first, fill_id="f-7").seq == 2
    assert Fill.objects.filter(engine=first).count() == half
    assert Fill.objects.filter(engine=second).count() == half
    assert Position.objects.get(engine=first).quantity == Decimal(half)
    assert Position.objects.get(engine=second).quantity == Decimal(half)


def _decoded(*events: p.Event) -> decoding.Decoded:
    return decoding.decode_frame(f.events_frame(*events))


def test_a_batch_the_database_refuses_costs_the_others_in_its_group_nothing(make_engine):
    good, bad, gone = (make_engine(name)[0] for name in ("good", "bad", "gone"))
    ingest_events(engine_id=bad.pk, events=[f.metric(1)])
    gone_id = gone.pk
    gone.delete()
    # Equity falls from 1 to -9,999,999: a drawdown of 10^9 %, which its column cannot hold.
    overflow = f.account(4, "-9999999")

    groups = [
        (good.pk, _decoded(f.metric(1), f.account(2, "1000"))),
        (bad.pk, _decoded(f.metric(2), f.account(3, "1"), overflow, f.metric(5))),
        (gone_id, _decoded(f.metric(1))),
    ]
    outcomes = batches.events_many(groups)

    good_frames, good_result = outcomes[0]
    assert good_frames[-1] == p.Ack(seq=2)
    assert good_result.stored == 2
    # The bad engine's batch: the event at fault is refused alone, the rest stored and acked.
    bad_frames, bad_result = outcomes[1]
    assert [(e.code, e.field, e.seq) for e in bad_frames[:-1]] == [
        ("event_refused", "events[2]", 4)
    ]
    assert "numeric field overflow" in bad_frames[0].message
    assert bad_frames[-1] == p.Ack(seq=5)
    assert bad_result.stored == 3
    assert isinstance(outcomes[2], LookupError)
    bad.refresh_from_db()
    assert (bad.last_seq, bad.equity, bad.refused_events) == (5, Decimal(1), 1)
    assert list(MetricSample.objects.filter(engine=bad).values_list("seq", flat=True)) == [1, 2, 5]
    assert not EngineLog.objects.exists()
    good.refresh_from_db()
    assert (good.last_seq, good.equity) == (2, Decimal(1000))


def test_a_watermark_the_database_refuses_costs_the_others_in_its_group_nothing(make_engine):
    stuck, moving = (make_engine(name)[0] for name in ("stuck", "moving"))
    with connection.cursor() as cursor:  # undone with the test's transaction
        cursor.execute(
            "CREATE FUNCTION test_refuse_seq() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'engine % may not move its seq', OLD.id; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER test_refuse_seq BEFORE UPDATE ON controlplane_engine FOR EACH ROW "
            f"WHEN (OLD.id = {stuck.pk} AND NEW.last_seq IS DISTINCT FROM OLD.last_seq) "
            "EXECUTE FUNCTION test_refuse_seq()"
        )

    def refused(seq: int) -> str:  # refused for good, acked: the watermark moves past it
        return f'{{"kind": "metric", "seq": {seq}, "ts": "{f.T0.isoformat()}", "name": "Bad Name"}}'

    def frame(*raws: str) -> decoding.Decoded:
        return decoding.decode_frame('{"type": "events", "events": [' + ", ".join(raws) + "]}")

    metric = p.encode_event(f.metric(1)).decode()
    # After the group's commit, each engine's ack for its refused seqs moves its watermark:
    # stuck's move fails, and only stuck's answer shows it.
    outcomes = batches.events_many(
        [(stuck.pk, frame(refused(4))), (moving.pk, frame(metric, refused(3)))]
    )

    stuck_frames, _ = outcomes[0]
    assert [(e.code, e.seq) for e in stuck_frames[:-1]] == [("invalid_event", 4)]
    assert stuck_frames[-1] == p.Ack(seq=0)  # as far as stored: seq 4 comes back and is refused
    moving_frames, moving_result = outcomes[1]
    assert [(e.code, e.seq) for e in moving_frames[:-1]] == [("invalid_event", 3)]
    assert moving_frames[-1] == p.Ack(seq=3)
    assert moving_result.stored == 1
    stuck.refresh_from_db()
    moving.refresh_from_db()
    assert (stuck.last_seq, moving.last_seq) == (0, 3)


def _noted_groups(monkeypatch) -> list[list[int]]:
    """The engines of each group the socket writer stores, in order."""
    calls: list[list[int]] = []
    events_many = batches.events_many

    def noted(groups):
        calls.append([engine_id for engine_id, _ in groups])
        return events_many(groups)

    monkeypatch.setattr(batches, "events_many", noted)
    return calls


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_socket_writer_stores_the_frames_that_wait_together_in_one_group(
    make_engine, monkeypatch
):
    engines = [(await database_sync_to_async(make_engine)(f"w-{n}"))[0] for n in range(3)]
    calls = _noted_groups(monkeypatch)
    writer = socket._EventsWriter()

    answers = await asyncio.gather(
        *(writer.store(engine.pk, _decoded(f.metric(1), f.metric(2))) for engine in engines)
    )

    assert calls == [[engine.pk for engine in engines]]
    assert [frames[-1] for frames, _ in answers] == [p.Ack(seq=2)] * 3
    # A waiter that goes away (its socket closed) does not take the others' group with it.
    first = asyncio.ensure_future(writer.store(engines[0].pk, _decoded(f.metric(3))))
    second = asyncio.ensure_future(writer.store(engines[1].pk, _decoded(f.metric(3))))
    await asyncio.sleep(0)
    first.cancel()
    frames, _ = await second
    assert frames[-1] == p.Ack(seq=3)
    assert len(calls) == 2
    count = database_sync_to_async(
        lambda: MetricSample.objects.filter(engine_id=engines[0].pk, seq=3).count()
    )
    assert await count() == 1  # stored all the same: its engine replays it, which changes nothing


def test_a_group_refuses_two_batches_of_one_engine(make_engine):
    engine = make_engine()[0]

    with pytest.raises(ValueError, match="one batch per engine"):
        ingest_batches([(engine.pk, [f.metric(1)]), (engine.pk, [f.metric(1)])])

    assert not MetricSample.objects.exists()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_two_sockets_of_one_engine_never_share_a_group(make_engine, monkeypatch):
    # An engine's new socket replays what its old one (not closed yet) sent: the same seqs.
    engine, other = [(await database_sync_to_async(make_engine)(f"s-{n}"))[0] for n in range(2)]
    calls = _noted_groups(monkeypatch)
    writer = socket._EventsWriter()

    answers = await asyncio.gather(
        writer.store(engine.pk, _decoded(f.metric(1), f.metric(2))),
        writer.store(engine.pk, _decoded(f.metric(1), f.metric(2))),
        writer.store(other.pk, _decoded(f.metric(1))),
    )

    assert calls == [[engine.pk, other.pk], [engine.pk]]
    # The two groups may run side by side: the engine's row lock decides which stores the seqs.
    first, second, third = ((r.stored, r.replayed) for _, r in answers)
    assert sorted([first, second]) == [(0, 2), (2, 0)]
    assert third == (1, 0)
    count = database_sync_to_async(MetricSample.objects.filter(engine_id=engine.pk).count)
    assert await count() == 2
