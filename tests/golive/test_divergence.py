"""The divergence log (golive.divergence): a day recorded from stored data against the baseline,
kept with a person's note, audited; the nightly task; the page's table and form."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from alerts.models import Alert, AlertRule
from controlplane.models import AccountSnapshot, AuditEvent
from dashboard.models import Baseline
from golive import divergence
from golive.models import DivergenceDay
from golive.tasks import divergence_log

pytestmark = pytest.mark.django_db

DAY = date(2026, 12, 2)  # a Wednesday


@pytest.fixture
def engine(make_engine):
    engine, _ = make_engine("logged", stage="paper")
    # 25.2 % a year: 0.1 % on one weekday.
    Baseline.objects.create(
        engine=engine, name="bt", expected_annual_return_pct=25.2, trades_per_day=4.0
    )
    # Tuesday's close 100,000; Wednesday's 100,150: +0.15 %, 50 % apart from 0.1 %.
    for n, (day, equity) in enumerate(((DAY - timedelta(days=1), 100_000), (DAY, 100_150))):
        AccountSnapshot.objects.create(
            engine=engine,
            ts=datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=20),
            equity=Decimal(equity),
            cash=0,
            seq=n + 1,
        )
    return engine


def test_a_day_is_recorded_against_the_baseline_and_recorded_again_keeps_its_note(engine, operator):
    row = divergence.record_day(engine, DAY)
    assert (row.stage, row.day) == ("paper", DAY)
    assert row.live_return_pct == pytest.approx(0.15)
    assert row.baseline_return_pct == pytest.approx(0.1)
    assert row.divergence_pct == pytest.approx(50.0)
    assert row.figures["trade_count_ratio"]["text"] == "0 fills, 4 expected: ratio 0.00"

    divergence.note_set(
        row=row, actor=operator, note="the venue's feed lagged at the open", root_cause="market"
    )
    again = divergence.record_day(engine, DAY)
    assert again.pk == row.pk and again.note == "the venue's feed lagged at the open"
    assert again.get_root_cause_display() == "Market"
    audit = AuditEvent.objects.get(action="divergence_note")
    assert audit.data["root_cause"] == "market" and audit.data["before"]["note"] == ""


def test_a_note_is_refused_empty_with_an_unknown_cause_or_from_a_viewer(engine, operator, viewer):
    row = divergence.record_day(engine, DAY)
    with pytest.raises(ValidationError) as empty:
        divergence.note_set(row=row, actor=operator, note="  ", root_cause="")
    assert empty.value.message_dict == {"note": ["say what was found"]}
    with pytest.raises(ValidationError) as cause:
        divergence.note_set(row=row, actor=operator, note="x", root_cause="gremlins")
    assert "'gremlins' is no root cause" in cause.value.message_dict["root_cause"][0]
    with pytest.raises(PermissionDenied):
        divergence.note_set(row=row, actor=viewer, note="x", root_cause="")
    row.refresh_from_db()
    assert row.note == "" and not AuditEvent.objects.filter(action="divergence_note").exists()


def test_the_nightly_task_records_yesterday_for_engines_from_paper_on(engine, make_engine):
    make_engine("still-backtest", mode="backtest")
    assert divergence.record_yesterday(datetime(2026, 12, 3, 0, 20, tzinfo=UTC)) == 1
    assert list(DivergenceDay.objects.values_list("engine__name", "day")) == [("logged", DAY)]
    # A Saturday is no trading day: nothing is recorded for it.
    assert divergence.record_yesterday(datetime(2026, 12, 6, 0, 20, tzinfo=UTC)) == 0
    assert DivergenceDay.objects.count() == 1
    # The task itself runs for today's yesterday.
    assert divergence_log() == divergence.record_yesterday()


def test_the_page_lists_the_days_and_an_operator_notes_one(engine, operator, viewer):
    row = divergence.record_day(engine, DAY)
    client = Client()
    client.force_login(viewer)
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert 'data-day="2026-12-02" class="diverged"' in page
    assert "divergence-note-form" not in page  # a viewer reads only
    url = f"/engines/{engine.name}/go-live/divergence/{row.pk}/note/"
    assert client.post(url, {"note": "x", "root_cause": ""}).status_code == 403

    client.force_login(operator)
    done = client.post(url, {"note": "a stale quote at 09:31", "root_cause": "infrastructure"})
    assert done.status_code == 302
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert "Infrastructure: a stale quote at 09:31" in page


def test_a_day_beyond_the_threshold_raises_the_divergence_alert_and_a_day_within_ends_it(
    engine,
):
    # The rule migration 0009 ships (a transactional test before this one may have flushed it).
    AlertRule.objects.get_or_create(
        name="Divergence from the baseline",
        defaults={"metric": "divergence_day", "severity": "warning", "threshold": 0},
    )
    divergence.record_day(engine, DAY)  # 50 % apart
    alert = Alert.objects.get(engine=engine, source="divergence")
    assert (alert.state, alert.severity, alert.value) == ("firing", "warning", pytest.approx(50.0))
    assert "0.15 % against the baseline's +0.10 %, 50.0 % apart (beyond 10 %)" in alert.summary

    # Thursday: 100,150 -> 100,250.15, +0.1 %: as the baseline expects.
    AccountSnapshot.objects.create(
        engine=engine,
        ts=datetime(2026, 12, 3, 20, tzinfo=UTC),
        equity=Decimal("100250.15"),
        cash=0,
        seq=9,
    )
    row = divergence.record_day(engine, date(2026, 12, 3))
    assert row.divergence_pct == pytest.approx(0.0, abs=0.01)
    alert.refresh_from_db()
    assert alert.state == "resolved"
    assert "2026-12-03 within 10 % of the baseline" in alert.summary
