"""The demo's recorded past (manage.py simulate --seed-history): stored through the gateway's
store, it makes the candidate's paper -> shadow gate pass on every criterion."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection

from controlplane import partitions
from controlplane.config import demo_history
from controlplane.models import (
    AccountSnapshot,
    EngineLog,
    Fill,
    MetricSample,
    Order,
    Position,
    StageChange,
)
from golive import gates

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 6, 20, 30, tzinfo=UTC)  # a Sunday, as when the demo was first run


@pytest.mark.parametrize(
    "now", [NOW, NOW + timedelta(days=3, hours=-6)], ids=["sunday", "wednesday"]
)
def test_the_seeded_paper_engine_passes_every_paper_to_shadow_criterion(make_engine, now) -> None:
    engine, _ = make_engine("sim-1", stage="paper")

    demo_history.seed_paper_history(engine, now)

    engine.refresh_from_db()
    report = gates.report(engine, now)
    assert (report.from_stage, report.to_stage) == ("paper", "shadow")
    assert {c.key for c in report.criteria} == {
        "min_days",
        "min_round_trips",
        "return_vs_baseline_pct",
        "win_rate_vs_baseline_pp",
        "trade_count_ratio",
        "rejection_rate_pct",
        "error_logs",
        "disconnects_recovered",
    }
    not_passing = {c.key: c.value_text for c in report.criteria if c.passed is not True}
    assert not_passing == {}, f"criteria not passing: {not_passing}"
    assert report.ready
    # What the page shows: from the stage history, one recovery, a few real rejections.
    shown = {c.key: c.value_text for c in report.criteria}
    assert "stage history" in shown["min_days"]
    assert shown["disconnects_recovered"] == "1 recovered"
    assert shown["rejection_rate_pct"].startswith("0.")
    assert "(2 of " in shown["rejection_rate_pct"]


def test_it_is_stored_as_the_gateway_stores_a_live_engine(make_engine) -> None:
    engine, _ = make_engine("sim-1", stage="paper")

    demo_history.seed_paper_history(engine, NOW)

    engine.refresh_from_db()
    start = NOW - timedelta(days=demo_history.DAYS)
    assert engine.created_at == start
    assert list(StageChange.objects.filter(engine=engine).values_list("to_stage", "at")) == [
        ("paper", start)
    ]
    assert engine.last_seq > 0
    assert Order.objects.filter(engine=engine, status="rejected").count() == 2
    assert not Order.objects.filter(engine=engine).exclude(status__in=["filled", "rejected"])
    assert Fill.objects.filter(engine=engine, ts__gte=start, ts__lt=NOW).count() == 800
    assert EngineLog.objects.filter(engine=engine, level__in=["error", "critical"]).count() == 0
    assert MetricSample.objects.filter(engine=engine, name="broker_connected").exists()
    # Flat at the end, at the simulator's starting cash (give or take the cents of rounding),
    # so the live engine that carries on agrees with the ledger.
    assert not Position.objects.filter(engine=engine).exclude(quantity=0).exists()
    assert not Position.objects.filter(engine=engine, mismatch_since__isnull=False).exists()
    last = AccountSnapshot.objects.filter(engine=engine).order_by("-ts").first()
    assert abs(last.equity - 1_000_000) < 100
    # The event log: every seq in a frame, one frame delivered late after the disconnect.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT sum(last_seq - first_seq + 1), max(last_seq), "
            f"max(received_at - (events -> 0 ->> 'ts')::timestamptz) "
            f"FROM {partitions.PARENT} WHERE engine_id = %s",
            [engine.pk],
        )
        events, last_seq, longest_wait = cursor.fetchone()
    assert events == last_seq == engine.last_seq
    assert longest_wait >= demo_history.DISCONNECT - timedelta(seconds=2)


def test_an_engine_with_a_past_of_its_own_is_refused(make_engine) -> None:
    engine, _ = make_engine("sim-1", stage="paper")
    demo_history.seed_paper_history(engine, NOW)
    engine.refresh_from_db()

    with pytest.raises(ValueError, match="sim-1 has reported events already"):
        demo_history.seed_paper_history(engine, NOW)


def test_an_engine_above_paper_is_refused(make_engine) -> None:
    engine, _ = make_engine("sim-2", stage="shadow")

    with pytest.raises(ValueError, match="sim-2 is not a new paper engine"):
        demo_history.seed_paper_history(engine, NOW)
    assert not Order.objects.filter(engine=engine).exists()
