"""The divergence log (golive.divergence): a day recorded from stored data against the baseline,
kept with a person's note, audited; the nightly task; the page's table and form."""

from __future__ import annotations

import json
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


def _day(engine, day: date, apart: float | None) -> DivergenceDay:
    return DivergenceDay.objects.create(
        engine=engine,
        day=day,
        stage="paper",
        live_return_pct=0.2,
        baseline_return_pct=0.1,
        divergence_pct=apart,
        figures={"return_pct": {"live": 0.2, "baseline": 0.1, "difference": apart, "text": "t"}},
    )


def test_the_api_gives_the_log_newest_first_bounded_by_dates_and_a_limit(engine, viewer, outsider):
    for n, apart in enumerate((5.0, 40.0, None, 9.0)):
        _day(engine, DAY + timedelta(days=n), apart)
    client = Client()
    url = f"/api/v1/engines/{engine.name}/divergence"
    client.force_login(outsider)
    assert client.get(url).status_code == 403
    client.force_login(viewer)
    body = client.get(url).json()
    assert body["threshold_pct"] == 10.0 and body["more"] is False
    assert [r["day"] for r in body["rows"]] == [
        "2026-12-05",
        "2026-12-04",
        "2026-12-03",
        DAY.isoformat(),
    ]
    # Beyond 10 %: only the 40 % day; an unmeasured day is not.
    assert [r["beyond_threshold"] for r in body["rows"]] == [False, False, True, False]
    assert body["rows"][2]["figures"]["return_pct"]["difference"] == 40.0
    bounded = client.get(url, {"start": "2026-12-03", "end": "2026-12-04", "limit": 1}).json()
    assert [r["day"] for r in bounded["rows"]] == ["2026-12-04"] and bounded["more"] is True
    backwards = client.get(url, {"start": "2026-12-04", "end": "2026-12-03"})
    assert backwards.status_code == 400 and "must not be after end" in backwards.json()["detail"]
    assert client.get(url, {"limit": 0}).status_code == 422
    assert client.get("/api/v1/engines/nobody/divergence").status_code == 404


def test_the_api_takes_a_note_from_an_operator_only_and_names_a_bad_field(engine, operator, viewer):
    _day(engine, DAY, 40.0)
    client = Client()
    url = f"/api/v1/engines/{engine.name}/divergence/{DAY.isoformat()}/note"
    payload = {"note": "a stale quote at the open", "root_cause": "infrastructure"}
    client.force_login(viewer)
    refused = client.post(url, payload, content_type="application/json")
    assert refused.status_code == 403 and "may not annotate" in refused.json()["detail"]
    assert DivergenceDay.objects.get().note == ""

    client.force_login(operator)
    done = client.post(url, payload, content_type="application/json")
    assert done.status_code == 200, done.content
    assert (done.json()["note"], done.json()["noted_by"]) == (payload["note"], "otto-operator")
    replaced = client.put(
        url,
        {"note": "the strategy's stop", "root_cause": "strategy"},
        content_type="application/json",
    )
    assert replaced.status_code == 200 and replaced.json()["root_cause"] == "strategy"
    assert AuditEvent.objects.filter(action="divergence_note").count() == 2
    bad = client.put(url, {"note": "x", "root_cause": "luck"}, content_type="application/json")
    assert bad.status_code == 400 and "root_cause" in bad.json()["errors"]
    empty = client.put(url, {"note": "  ", "root_cause": ""}, content_type="application/json")
    assert empty.status_code == 400 and "note" in empty.json()["errors"]
    assert DivergenceDay.objects.get().note == "the strategy's stop"
    missing = f"/api/v1/engines/{engine.name}/divergence/2026-12-25/note"
    assert client.put(missing, payload, content_type="application/json").status_code == 404


def test_the_go_live_page_draws_the_log_as_a_chart_beside_its_table(engine, viewer):
    _day(engine, DAY, 5.0)
    _day(engine, DAY + timedelta(days=1), 40.0)
    client = Client()
    client.force_login(viewer)
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert 'id="divergence-chart"' in page and "vendor/plotly/plotly.min.js" in page
    start = page.index('<script id="divergence-figure" type="application/json">')
    figure = json.loads(page[page.index(">", start) + 1 : page.index("</script>", start)])
    live, base, apart = figure["data"]
    # Oldest day first: the live and baseline returns, then how far apart, red beyond 10 %.
    assert live["x"] == ["2026-12-02", "2026-12-03"] and live["y"] == [0.2, 0.2]
    assert base["y"] == [0.1, 0.1]
    assert apart["y"] == [5.0, 40.0]
    assert apart["marker"]["color"] == ["#3fb950", "#f85149"]
