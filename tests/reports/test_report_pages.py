"""The report page, its CSV, and each user's report settings."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from dashboard.models import Baseline, Profile
from tests.reports.conftest import (
    ALPHA_AVG_SLIPPAGE_BPS,
    ALPHA_MAX_DRAWDOWN_PCT,
    ALPHA_PROFIT_FACTOR,
    ALPHA_RETURN_PCT,
    ALPHA_SHARPE,
    ALPHA_SORTINO,
    ALPHA_UPTIME_PCT,
    ALPHA_WIN_RATE_PCT,
    BASELINE_RETURN_DIVERGENCE_PCT,
    FLEET_MAX_DRAWDOWN_PCT,
    FLEET_RETURN_PCT,
    WEEK,
    close,
)

pytestmark = pytest.mark.django_db


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def baseline(week_data: dict[str, Any]) -> Baseline:
    return Baseline.objects.create(
        engine=week_data["alpha"],
        name="bt 2026-10 v3",
        expected_annual_return_pct=25.0,
        sharpe=2.0,
        trades_per_day=2.0,
        win_rate_pct=60.0,
    )


def figure(html: str, element_id: str) -> dict[str, Any]:
    match = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', html)
    assert match, f"no {element_id} on the page"
    return json.loads(match[1])


def test_the_report_page_shows_the_week_with_its_charts_and_tables(
    viewer: User, week_data: dict[str, Any], baseline: Baseline
) -> None:
    response = logged_in(viewer).get(f"/reports/{WEEK}/")
    assert response.status_code == 200
    html = response.content.decode()

    assert "Weekly report 2026-W47" in html
    assert "vendor/plotly/plotly.min.js" in html
    equity = figure(html, "figure-equity")
    assert [t["name"] for t in equity["data"]] == ["equity", "drawdown %"]
    # Opening 150000, then one point per snapshot instant, then held to the end of the week.
    assert equity["data"][0]["y"][0] == 150000.0
    assert equity["data"][0]["y"][-1] == 150469.902
    pnl = figure(html, "figure-pnl")
    assert pnl["data"][0]["y"] == [1500.0, -1010.0, 999.8, -1019.898]
    engines = figure(html, "figure-engines")
    assert [t["name"] for t in engines["data"]] == ["alpha", "beta"]

    assert 'id="engine-table"' in html and 'data-engine="alpha"' in html
    assert 'id="tag-table"' in html and 'data-tag="momentum"' in html
    assert "+0.97 %" in html  # alpha's return
    assert "+0.31 %" in html  # the fleet's
    assert "significant divergence" in html
    assert "95.5 %" in html  # alpha's return apart from its baseline
    assert "No trading this week" not in html


def test_the_report_page_takes_a_fixed_number_of_queries(
    viewer: User, week_data: dict[str, Any], baseline: Baseline, make_engine: Any
) -> None:
    client = logged_in(viewer)
    client.get(f"/reports/{WEEK}/")  # the profile is created on the first visit
    with CaptureQueriesContext(connection) as first:
        client.get(f"/reports/{WEEK}/")
    for i in range(4):
        make_engine(f"idle-{i}", strategy_tags=["idle"])
    with CaptureQueriesContext(connection) as second:
        client.get(f"/reports/{WEEK}/")
    assert len(second) == len(first) <= 30


def test_the_csv_has_the_hand_computed_figures(
    viewer: User, week_data: dict[str, Any], baseline: Baseline
) -> None:
    response = logged_in(viewer).get(f"/reports/{WEEK}.csv")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="report-2026-W47.csv"'
    rows = {(r["scope"], r["name"]): r for r in csv.DictReader(io.StringIO(response.text))}
    assert set(rows) == {
        ("fleet", "fleet"),
        ("tag", "mean-rev"),
        ("tag", "momentum"),
        ("engine", "alpha"),
        ("engine", "beta"),
    }

    alpha = rows[("engine", "alpha")]
    assert alpha["week"] == WEEK
    assert alpha["pnl"] == "969.902"
    assert alpha["start_equity"] == "100000"
    assert alpha["end_equity"] == "100969.902"
    for column, expected in [
        ("return_pct", ALPHA_RETURN_PCT),
        ("sharpe", ALPHA_SHARPE),
        ("sortino", ALPHA_SORTINO),
        ("max_drawdown_pct", ALPHA_MAX_DRAWDOWN_PCT),
        ("win_rate_pct", ALPHA_WIN_RATE_PCT),
        ("profit_factor", ALPHA_PROFIT_FACTOR),
        ("avg_slippage_bps", ALPHA_AVG_SLIPPAGE_BPS),
        ("uptime_pct", ALPHA_UPTIME_PCT),
    ]:
        assert close(float(alpha[column]), expected, rel=1e-6), column
    assert (alpha["trades"], alpha["round_trips"]) == ("5", "3")
    assert (alpha["rejection_rate_pct"], alpha["fill_rate_pct"]) == ("12.5", "71.42857143")
    assert (alpha["alerts_fired"], alpha["commands_issued"]) == ("2", "2")
    assert close(float(alpha["return_difference_pct"]), BASELINE_RETURN_DIVERGENCE_PCT, rel=1e-6)
    assert (alpha["trade_count_ratio"], alpha["significant_divergence"]) == ("0.5", "yes")

    fleet = rows[("fleet", "fleet")]
    assert fleet["pnl"] == "469.902"
    assert close(float(fleet["return_pct"]), FLEET_RETURN_PCT, rel=1e-6)
    assert close(float(fleet["max_drawdown_pct"]), FLEET_MAX_DRAWDOWN_PCT, rel=1e-6)
    assert (fleet["alerts_fired"], fleet["commands_issued"]) == ("3", "3")
    beta = rows[("engine", "beta")]
    assert (beta["trades"], beta["win_rate_pct"], beta["profit_factor"]) == ("0", "", "")
    assert beta["return_difference_pct"] == ""  # no baseline


def test_a_week_without_trading_says_so_on_the_page(viewer: User, db: None) -> None:
    response = logged_in(viewer).get("/reports/2026-W40/")
    assert response.status_code == 200
    assert "No trading this week." in response.content.decode()
    assert logged_in(viewer).get("/reports/2026-W40.csv").status_code == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/reports/2026-W54/", "2026 has no ISO week 54."),
        ("/reports/2026-47/", "is not an ISO week: write it as YYYY-Www"),
        ("/reports/last-week.csv", "is not an ISO week: write it as YYYY-Www"),
        ("/reports/2026-W00.csv", "2026 has no ISO week 0."),
        # The calendar's ends: the weeks either side of them do not exist.
        ("/reports/9999-W52/", "out of range: reports cover 1970 to 9998"),
        ("/reports/9999-W52.csv", "out of range: reports cover 1970 to 9998"),
        ("/reports/0001-W01/", "out of range: reports cover 1970 to 9998"),
    ],
)
def test_a_bad_week_is_a_404_that_says_why(viewer: User, path: str, message: str) -> None:
    response = logged_in(viewer).get(path)
    assert response.status_code == 404
    assert message in response.content.decode()


def test_reports_need_a_login_and_a_role(outsider: User, db: None) -> None:
    response = Client().get(f"/reports/{WEEK}/")
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert logged_in(outsider).get(f"/reports/{WEEK}/").status_code == 403
    assert logged_in(outsider).get(f"/reports/{WEEK}.csv").status_code == 403


def test_reports_root_goes_to_last_week(viewer: User, db: None) -> None:
    response = logged_in(viewer).get("/reports/")
    assert response.status_code == 302
    assert re.fullmatch(r"/reports/\d{4}-W\d{2}/", response["Location"])


def test_a_user_edits_their_report_settings(viewer: User) -> None:
    client = logged_in(viewer)
    assert client.get("/reports/settings/").status_code == 200
    response = client.post(
        "/reports/settings/", {"weekly_report": "on", "timezone": "Europe/London"}
    )
    assert response.status_code == 302
    profile = Profile.objects.get(user=viewer)
    assert (profile.weekly_report, profile.timezone) == (True, "Europe/London")

    response = client.post("/reports/settings/", {"weekly_report": "on", "timezone": "Mars/Base"})
    assert response.status_code == 200
    assert "&#x27;Mars/Base&#x27; is not an IANA timezone name" in response.content.decode()
    assert Profile.objects.get(user=viewer).timezone == "Europe/London"


def test_the_page_uses_the_viewers_timezone(viewer: User, week_data: dict[str, Any]) -> None:
    Profile.objects.create(user=viewer, timezone="Asia/Tokyo")
    html = logged_in(viewer).get(f"/reports/{WEEK}/").content.decode()
    assert "(Asia/Tokyo)" in html
    # Tokyo days: Mon 16, Tue 17, Thu 19, Fri 20 (see test_analytics).
    assert figure(html, "figure-pnl")["data"][0]["x"] == [
        "2026-11-16",
        "2026-11-17",
        "2026-11-19",
        "2026-11-20",
    ]


def test_the_week_shows_each_engines_divergence_log_and_its_days_beyond(
    viewer: User, week_data: dict[str, Any], baseline: Baseline
) -> None:
    from datetime import date

    from golive.models import DivergenceDay

    alpha = week_data["alpha"]
    for day, apart, note in [
        (date(2026, 11, 13), 50.0, ""),  # the week before: not in this week's report
        (date(2026, 11, 16), 4.0, ""),
        (date(2026, 11, 17), 30.0, "a late fill feed"),
        (date(2026, 11, 18), 12.5, ""),
    ]:
        DivergenceDay.objects.create(
            engine=alpha,
            day=day,
            stage="paper",
            live_return_pct=1.0,
            baseline_return_pct=0.1,
            divergence_pct=apart,
            note=note,
            root_cause="infrastructure" if note else "",
        )
    html = logged_in(viewer).get(f"/reports/{WEEK}/").content.decode()
    rows = re.findall(r'<tr data-engine="alpha" data-day="([0-9-]+)"( class="diverged-row")?', html)
    # Beyond 10 % (DIVERGENCE_LOG_ALERT_PCT): the 17th and the 18th; the 13th is last week's.
    assert rows == [
        ("2026-11-16", ""),
        ("2026-11-17", ' class="diverged-row"'),
        ("2026-11-18", ' class="diverged-row"'),
    ]
    assert "Infrastructure: a late fill feed" in html
    assert "beyond 10 %, nothing said yet" in html
    assert "alpha 2 of 3" in html
    body = logged_in(viewer).get(f"/reports/{WEEK}.csv").content.decode()
    alpha_row = next(r for r in csv.DictReader(io.StringIO(body)) if r["name"] == "alpha")
    assert alpha_row["divergence_days_beyond"] == "2"
