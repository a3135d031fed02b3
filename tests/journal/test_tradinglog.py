"""The trading log: an entry per day for the desk and per engine, its figures filled from the
data, its history and audit, search and CSV export, refusals of bad input, and who may write."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from alerts.models import Alert
from controlplane.models import AccountSnapshot, AuditEvent, EngineLog, Instrument, Order
from journal import tradinglog
from journal.models import LogEntry
from tests.controlplane.test_api import token_client

pytestmark = pytest.mark.django_db

DAY = date(2026, 11, 4)


def at(hour: int, day: date = DAY) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def put(client: Client, path: str, body: dict) -> tuple[int, dict]:
    response = client.put(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


@pytest.fixture
def alpha(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    return engine


def _day_of_data(engine) -> None:
    """A day with equity 1000 -> 1020 (+2 %), one rejected order, one error line, one alert."""
    AccountSnapshot.objects.create(
        engine=engine, ts=at(20, date(2026, 11, 3)), equity=1000, cash=1000, seq=1
    )
    AccountSnapshot.objects.create(engine=engine, ts=at(10), equity=1010, cash=1010, seq=2)
    AccountSnapshot.objects.create(engine=engine, ts=at(21), equity=1020, cash=1020, seq=3)
    instrument = Instrument.objects.create(symbol="XYZ")
    Order.objects.create(
        engine=engine,
        client_order_id="o1",
        instrument=instrument,
        side="buy",
        order_type="market",
        quantity=1,
        status="rejected",
        created_at=at(11),
        updated_at=at(11),
        last_seq=4,
    )
    EngineLog.objects.create(engine=engine, ts=at(12), level="error", message="boom")
    EngineLog.objects.create(
        engine=engine, ts=at(12, date(2026, 11, 5)), level="error", message="later"
    )
    Alert.objects.create(
        engine=engine, severity="warning", summary="x", state="firing", fired_at=at(13)
    )


def test_an_operator_writes_the_desks_day_and_its_figures_come_from_the_data(alpha, operator):
    _day_of_data(alpha)

    entry = tradinglog.log_entry_save(
        day=DAY,
        engine=None,
        actor=operator,
        trend="down",
        volatility="high",
        key_events="CPI at 14:30",
        notes="Quiet **morning**",
    )

    assert (entry.version, entry.trend, entry.updated_by_label) == (1, "down", "otto-operator")
    assert entry.figures == {
        "trades": 0,
        "pnl": 20.0,
        "pnl_pct": 2.0,
        "rejects": 1,
        "alerts": 1,
        "errors": 1,
        "commands": 0,
    }
    audit = AuditEvent.objects.get(action="journal.log_save")
    assert (audit.actor, audit.target_id, audit.data["version"]) == (
        "otto-operator",
        str(entry.pk),
        1,
    )


def test_each_edit_is_a_version_in_the_history_and_an_unchanged_save_is_none(alpha, operator):
    tradinglog.log_entry_save(day=DAY, engine=alpha, actor=operator, notes="first")
    tradinglog.log_entry_save(day=DAY, engine=alpha, actor=operator, notes="second", version=1)
    again = tradinglog.log_entry_save(day=DAY, engine=alpha, actor=operator, notes="second")

    assert again.version == 2
    assert [r.notes for r in tradinglog.history(again)] == ["second", "first"]
    assert AuditEvent.objects.filter(action="journal.log_save").count() == 2
    # The engine's entry and the desk's are different entries of the same day.
    tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, notes="desk")
    assert LogEntry.objects.filter(day=DAY).count() == 2


def test_an_edit_from_an_old_version_is_refused_not_overwriting(operator):
    tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, notes="first")
    tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, notes="second", version=1)

    with pytest.raises(ValidationError) as caught:
        tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, notes="mine", version=1)

    assert "version" in caught.value.message_dict
    assert LogEntry.objects.get(day=DAY).notes == "second"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("notes", "a\x00b", "NUL"),
        ("notes", "x" * 20_001, "at most 20000"),
        ("key_events", ["not", "text"], "must be text"),
        ("trend", "crashing", "must be one of"),
        ("volatility", 3, "must be one of"),
    ],
)
def test_bad_input_is_refused_by_field_and_nothing_is_stored(operator, field, value, problem):
    with pytest.raises(ValidationError) as caught:
        tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, **{field: value})

    assert problem in " ".join(caught.value.message_dict[field])
    assert not LogEntry.objects.exists()
    assert not AuditEvent.objects.filter(action="journal.log_save").exists()


def test_a_viewer_may_read_but_not_write(viewer):
    with pytest.raises(PermissionDenied):
        tradinglog.log_entry_save(day=DAY, engine=None, actor=viewer, notes="hi")

    client = Client()
    client.force_login(viewer)
    assert client.get(f"/log/{DAY}/").status_code == 200
    assert client.post(f"/log/{DAY}/", {"notes": "hi"}).status_code == 403
    status, body = put(token_client(viewer), f"/api/v1/log/{DAY}", {"notes": "hi"})
    assert status == 403, body
    assert not LogEntry.objects.exists()


def test_the_api_writes_reads_and_lists_the_history(alpha, operator, viewer):
    status, body = put(
        token_client(operator),
        f"/api/v1/log/{DAY}",
        {"engine": "alpha", "trend": "up", "notes": "ok"},
    )
    assert status == 200, body
    assert (body["engine"], body["trend"], body["version"]) == ("alpha", "up", 1)

    day = token_client(viewer).get(f"/api/v1/log/{DAY}?engine=alpha").json()
    assert day["entry"]["notes"] == "ok" and day["figures"]["trades"] == 0
    history = token_client(viewer).get(f"/api/v1/log/{DAY}/history?engine=alpha").json()
    assert [h["version"] for h in history] == [1]

    status, body = put(token_client(operator), f"/api/v1/log/{DAY}", {"trend": "sideways!"})
    assert status == 422 and "trend" in body["errors"]
    status, body = put(token_client(operator), f"/api/v1/log/{DAY}", {"engine": "nobody"})
    assert status == 404
    assert token_client(viewer).get("/api/v1/log/3000-01-01").status_code == 400


def test_search_finds_notes_and_key_events_in_any_case(operator):
    tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, notes="Fed surprise")
    tradinglog.log_entry_save(
        day=date(2026, 11, 5), engine=None, actor=operator, key_events="FED minutes"
    )
    tradinglog.log_entry_save(day=date(2026, 11, 6), engine=None, actor=operator, notes="calm")

    assert [e.day.day for e in tradinglog.search(text="fed")] == [5, 4]
    client = Client()
    client.force_login(operator)
    page = client.get("/log/search/?q=fed").content.decode()
    assert "Fed surprise" in page and "calm" not in page


def test_the_csv_export_holds_the_entries_and_defuses_spreadsheet_formulas(operator):
    tradinglog.log_entry_save(
        day=DAY, engine=None, actor=operator, trend="up", notes='=HYPERLINK("http://x")'
    )
    client = Client()
    client.force_login(operator)

    response = client.get("/log/export.csv?start=2026-11-01&end=2026-11-30")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:4] == ["day", "engine", "trend", "volatility"]
    assert rows[1][:3] == ["2026-11-04", "", "up"]
    assert rows[1][rows[0].index("notes")] == '\'=HYPERLINK("http://x")'
    assert client.get("/log/export.csv?start=2026-12-01&end=2026-11-01").status_code == 400


def test_the_day_page_renders_notes_as_safe_markdown(operator):
    tradinglog.log_entry_save(
        day=DAY, engine=None, actor=operator, notes="**bold** <script>alert(1)</script>"
    )
    client = Client()
    client.force_login(operator)

    page = client.get(f"/log/{DAY}/").content.decode()

    assert "<strong>bold</strong>" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert client.get("/log/2026-13-01/").status_code == 404


def test_the_weekly_report_summarises_the_desks_log(operator):
    from zoneinfo import ZoneInfo

    from dashboard.reports.weekly import weekly_report

    tradinglog.log_entry_save(day=DAY, engine=None, actor=operator, trend="down", key_events="CPI")
    tradinglog.log_entry_save(day=date(2026, 11, 5), engine=None, actor=operator, trend="down")

    report = weekly_report("2026-W45", ZoneInfo("UTC"))

    assert report.log is not None
    assert (report.log.days_logged, report.log.days, report.log.trends) == (2, 7, {"Down": 2})
    assert [e.key_events for e in report.log.entries] == ["CPI", ""]


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/log?start=%2B0.0", "start"),
        ("/api/v1/log?end=0", "end"),
        ("/api/v1/log?start=2026-12-7", "start"),
        ("/api/v1/log/0", "day"),
        ("/api/v1/log/1733529600/history", "day"),
        ("/api/v1/engines/alpha/divergence?start=1.5", "start"),
        ("/api/v1/engines/alpha/comparison?start=0", "start"),
        ("/api/v1/engines/alpha/comparison?end=2026-12-01", "end"),
        ("/api/v1/engines/alpha/comparison?start=2026-12-01T00:00:00", "start"),
    ],
)
def test_a_day_or_moment_not_written_as_the_schema_says_is_refused_by_name(
    alpha, viewer, path, field
):
    # A number would otherwise read as seconds since 1970 and list 1970's entries as if asked.
    response = token_client(viewer).get(path)
    assert response.status_code == 422, response.content
    assert any(field in key for key in response.json()["errors"]), response.json()


def test_days_and_moments_written_as_the_schema_says_are_taken(alpha, viewer):
    client = token_client(viewer)
    assert client.get("/api/v1/log?start=2026-12-01&end=2026-12-07").status_code == 200
    assert client.get("/api/v1/engines/alpha/divergence?start=2026-12-01").status_code == 200
    moment = (
        "/api/v1/engines/alpha/comparison"
        "?start=2026-11-01T00:00:00Z&end=2026-12-01T00:00:00%2B01:00"
    )
    assert client.get(moment).status_code == 200, client.get(moment).content
