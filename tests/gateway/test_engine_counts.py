"""The counts the gateway keeps on the engine row (working orders, today's orders, rejections and
fills) always equal what counting the stored rows gives, batch after batch, across midnight."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from django.db.models import Q

from controlplane.ingest.store import ingest_events
from controlplane.models import Engine, Fill, Order
from dashboard import overview
from engine_sdk import protocol as p
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

MIDNIGHT = datetime(2026, 11, 24, tzinfo=UTC)
STATUSES = ["new", "accepted", "partially_filled", "filled", "cancelled", "rejected", "expired"]


def _truth(engine: Engine, now: datetime) -> tuple[int, int, int, int]:
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    orders = Order.objects.filter(engine=engine)
    today = orders.filter(created_at__gte=midnight)
    return (
        orders.filter(status__in=Order.WORKING).count(),
        today.count(),
        today.filter(Q(status="rejected")).count(),
        Fill.objects.filter(engine=engine, ts__gte=midnight).count(),
    )


def _kept(engine: Engine, now: datetime) -> tuple[int, int, int, int]:
    engine.refresh_from_db()
    return (engine.working_orders, *engine.day_counts(now))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_counts_match_the_stored_orders_and_fills_after_every_batch(make_engine, seed):
    rng = random.Random(seed)
    engine = make_engine()[0]
    seq = 0
    coids: list[str] = []
    fill_ids: list[str] = []
    previous: list[p.Event] = []
    # Thirty batches from 23:59:30 to 00:00:29, so the day turns in the middle; the engine's
    # clock lags by up to 20 s, so some orders first reported after midnight were created before.
    for batch_no in range(30):
        now = MIDNIGHT + timedelta(seconds=batch_no - 15)
        events: list[p.Event] = []
        for _ in range(rng.randint(1, 12)):
            seq += 1
            ts = now - timedelta(seconds=rng.uniform(0, 20))
            roll = rng.random()
            if roll < 0.45 or not coids:
                if rng.random() < 0.5 or not coids:
                    coids.append(f"o-{seed}-{len(coids)}")
                coid = rng.choice(coids[-8:])
                event: p.Event = f.order(seq, coid, status=rng.choice(STATUSES))
            elif roll < 0.85:
                # A fill for a recent order, now and then for one never reported or repeated.
                coid = rng.choice(coids[-8:]) if rng.random() < 0.9 else "never-sent"
                if rng.random() < 0.15 and fill_ids:
                    fill_id = rng.choice(fill_ids)
                else:
                    fill_id = f"f-{seed}-{seq}"
                    fill_ids.append(fill_id)
                event = f.fill(seq, fill_id, coid)
            else:
                event = f.metric(seq)
            events.append(msgspec.structs.replace(event, ts=ts))
        if previous and rng.random() < 0.25:
            # An engine that resends a batch already stored: nothing may be counted twice.
            before = _kept(engine, now)
            ingest_events(engine_id=engine.pk, events=previous, now=now)
            assert _kept(engine, now) == before
        ingest_events(engine_id=engine.pk, events=events, now=now)
        previous = events
        assert _kept(engine, now) == _truth(engine, now), f"batch {batch_no}"


def test_a_day_without_batches_shows_no_orders_today(make_engine):
    engine = make_engine()[0]
    ingest_events(
        engine_id=engine.pk,
        events=[
            msgspec.structs.replace(f.order(1, "a", status="rejected"), ts=MIDNIGHT),
            msgspec.structs.replace(f.order(2, "b", status="accepted"), ts=MIDNIGHT),
        ],
        now=MIDNIGHT + timedelta(seconds=1),
    )
    engine.refresh_from_db()
    assert engine.day_counts(MIDNIGHT + timedelta(hours=23)) == (2, 1, 0)
    # The next day, before the engine sends anything: no orders today, one still working.
    next_day = MIDNIGHT + timedelta(days=1, minutes=5)
    assert engine.day_counts(next_day) == (0, 0, 0)
    (row,) = overview.fleet_rows(engine_ids=[engine.pk], now=next_day)
    assert (row.orders_today, row.rejected_today, row.working_orders) == (0, 0, 1)
    assert row.rejection_rate is None
