"""Backtest baselines: the equity-curve CSV, live against baseline, and the divergence alert."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from alerts import rule_metrics
from alerts.evaluation import evaluate_engine
from alerts.models import Alert, AlertRule
from alerts.rule_metrics import METRICS
from dashboard.models import Baseline
from dashboard.reports.baselines import parse_equity_curve_csv
from golive.comparison import compare
from tests.reports.conftest import (
    ALPHA_RETURN_PCT,
    ALPHA_WIN_RATE_PCT,
    BASELINE_EXPECTED_RETURN_PCT,
    BASELINE_RETURN_DIFF_PP,
    BASELINE_RETURN_DIVERGENCE_PCT,
    BASELINE_TRADE_RATIO,
    BASELINE_WIN_RATE_DIFF_PP,
    DIVERGENCE_30D_PCT,
    WEEK_END,
    WEEK_START,
    close,
)

pytestmark = pytest.mark.django_db
UTC_ZONE = ZoneInfo("UTC")


def messages(exc: pytest.ExceptionInfo[ValidationError]) -> list[str]:
    return exc.value.messages


# --- CSV -----------------------------------------------------------------------------------------


def test_a_good_curve_is_parsed_oldest_first() -> None:
    rows = parse_equity_curve_csv("ts,equity\n2026-11-16,100000\n2026-11-17T21:00:00Z,100250.5\n")
    assert rows == [
        ["2026-11-16T00:00:00+00:00", "100000"],
        ["2026-11-17T21:00:00+00:00", "100250.5"],
    ]


HEAD = "ts,equity\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "The file is empty"),
        ("time,value\n2026-11-16,1\n", "line 1: the header must be 'ts,equity'"),
        (HEAD + "2026-11-16,100\n2026-11-17,abc\n", "line 3, column equity: 'abc' is not a number"),
        (HEAD + "yesterday,100\n2026-11-17,101\n", "line 2, column ts: 'yesterday' is not a date"),
        (HEAD + "2026-11-16,100\n2026-11-17,-5\n", "line 3, column equity: -5 must be above 0"),
        (HEAD + "2026-11-17,100\n2026-11-16,101\n", "line 3, column ts: 2026-11-16 is not after"),
        (HEAD + "2026-11-16,100,7\n2026-11-17,1\n", "line 2: expected 2 columns (ts,equity)"),
        (HEAD + "2026-11-16,100\n", "At least 2 rows"),
        (HEAD + "2026-11-16,NaN\n2026-11-17,101\n", "line 2, column equity: 'NaN' is not a number"),
    ],
)
def test_a_bad_curve_is_refused_naming_the_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as exc:
        parse_equity_curve_csv(text)
    assert any(expected in m for m in messages(exc)), messages(exc)


def test_every_bad_line_is_reported_not_only_the_first() -> None:
    with pytest.raises(ValidationError) as exc:
        parse_equity_curve_csv("ts,equity\nnope,1\n2026-11-17,zero\n2026-11-18,3\n")
    assert messages(exc) == [
        "line 2, column ts: 'nope' is not a date or an ISO 8601 timestamp (e.g. 2026-11-16 or "
        "2026-11-16T21:00:00Z).",
        "line 3, column equity: 'zero' is not a number.",
    ]


def test_the_admin_stores_nothing_when_the_csv_is_bad(
    admin_user: User, week_data: dict[str, Any]
) -> None:
    client = Client()
    client.force_login(admin_user)
    form = {
        "engine": week_data["alpha"].pk,
        "name": "bt v3",
        "tolerance_pct": "20",
        "expected_annual_return_pct": "25",
    }
    bad = SimpleUploadedFile("curve.csv", b"ts,equity\n2026-11-16,100\n2026-11-17,abc\n")
    add = reverse("admin:dashboard_baseline_add")
    response = client.post(add, {**form, "equity_curve_csv": bad})
    assert response.status_code == 200
    assert "line 3, column equity: &#x27;abc&#x27; is not a number." in response.content.decode()
    assert not Baseline.objects.exists()

    good = SimpleUploadedFile("curve.csv", b"ts,equity\n2026-11-16,100\n2026-11-17,101\n")
    response = client.post(add, {**form, "equity_curve_csv": good})
    assert response.status_code == 302
    assert Baseline.objects.get().equity_curve == [
        ["2026-11-16T00:00:00+00:00", "100"],
        ["2026-11-17T00:00:00+00:00", "101"],
    ]


@pytest.mark.parametrize(
    ("gross", "field", "message"),
    [
        ({"gross_profit": "1500"}, "gross_loss", "Give gross profit and gross loss together"),
        ({"gross_loss": "1000"}, "gross_profit", "Give gross profit and gross loss together"),
        ({"gross_profit": "1500", "gross_loss": "0"}, "gross_loss", "no profit factor"),
        ({"gross_profit": "-1", "gross_loss": "1000"}, "gross_profit", "greater than or equal"),
        ({"gross_profit": "inf", "gross_loss": "1000"}, "gross_profit", "Enter a number"),
    ],
)
def test_the_admin_refuses_a_bad_gross_profit_or_loss_naming_it(
    admin_user: User, week_data: dict[str, Any], gross: dict, field: str, message: str
) -> None:
    client = Client()
    client.force_login(admin_user)
    form = {"engine": week_data["alpha"].pk, "name": "bt v3", "tolerance_pct": "20", **gross}
    response = client.post(reverse("admin:dashboard_baseline_add"), form)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Baseline.objects.exists()


def test_the_profit_factor_is_gross_profit_over_gross_loss(
    admin_user: User, week_data: dict[str, Any]
) -> None:
    client = Client()
    client.force_login(admin_user)
    form = {
        "engine": week_data["alpha"].pk,
        "name": "bt v3",
        "tolerance_pct": "20",
        "gross_profit": "1500",
        "gross_loss": "1000",
    }
    response = client.post(reverse("admin:dashboard_baseline_add"), form)
    assert response.status_code == 302
    assert Baseline.objects.get().profit_factor == pytest.approx(1.5)


# --- Live against baseline -----------------------------------------------------------------------


def alpha_baseline(engine: Any, **extra: Any) -> Baseline:
    fields = {
        "expected_annual_return_pct": 25.0,
        "sharpe": 2.0,
        "trades_per_day": 2.0,
        "win_rate_pct": 60.0,
        **extra,
    }
    return Baseline.objects.create(engine=engine, name="bt 2026-10 v3", **fields)


def test_live_is_compared_with_the_baseline_and_divergence_flagged(
    week_data: dict[str, Any],
) -> None:
    alpha_baseline(week_data["alpha"])
    c = compare(week_data["alpha"], WEEK_START, WEEK_END)
    f = c.by_key

    assert close(f["return_pct"].live, ALPHA_RETURN_PCT)
    assert close(f["return_pct"].baseline, BASELINE_EXPECTED_RETURN_PCT)
    assert close(f["return_pct"].live - f["return_pct"].baseline, BASELINE_RETURN_DIFF_PP)
    assert close(f["return_pct"].difference, BASELINE_RETURN_DIVERGENCE_PCT, rel=1e-7)
    assert (f["trade_count_ratio"].live, f["trade_count_ratio"].baseline) == (5.0, 10.0)
    assert close(f["trade_count_ratio"].difference, BASELINE_TRADE_RATIO)
    assert close(f["win_rate_pp"].live, ALPHA_WIN_RATE_PCT)
    assert close(f["win_rate_pp"].difference, BASELINE_WIN_RATE_DIFF_PP)
    assert c.significant is True  # 95.5 % apart, beyond 20 %


def test_a_wider_threshold_flags_nothing(week_data: dict[str, Any], settings: Any) -> None:
    settings.DIVERGENCE_SIGNIFICANT_PCT = 100.0
    alpha_baseline(week_data["alpha"])
    assert compare(week_data["alpha"], WEEK_START, WEEK_END).significant is False


def test_the_expected_return_comes_from_the_uploaded_curve_when_not_given(
    week_data: dict[str, Any],
) -> None:
    # 100000 -> 101000 from Mon 2 00:00 to Fri 13 00:00 Nov 2026: the weekdays of [first, last)
    # are Mon 2 to Thu 12 = 9 (as many as the daily returns); 1 % * 252 / 9 = 28 %/year.
    curve = [["2026-11-02T00:00:00+00:00", "100000"], ["2026-11-13T00:00:00+00:00", "101000"]]
    alpha_baseline(week_data["alpha"], expected_annual_return_pct=None, equity_curve=curve)
    # 28 * 5 / 252 = 0.5555... % expected over the week's 5 weekdays.
    result = compare(week_data["alpha"], WEEK_START, WEEK_END)
    assert close(result.by_key["return_pct"].baseline, 5 / 9)


def test_divergence_is_the_largest_relative_gap_of_the_last_30_days(
    week_data: dict[str, Any],
) -> None:
    alpha = week_data["alpha"]
    assert rule_metrics.backtest_divergence_pct(alpha, WEEK_END) is None  # no baseline yet
    alpha_baseline(alpha)
    assert close(
        rule_metrics.backtest_divergence_pct(alpha, WEEK_END), DIVERGENCE_30D_PCT, rel=1e-7
    )
    assert close(
        METRICS["backtest_divergence_pct"].measure(alpha, WEEK_END), DIVERGENCE_30D_PCT, rel=1e-7
    )


def test_an_alert_rule_on_the_divergence_fires(week_data: dict[str, Any]) -> None:
    alpha = week_data["alpha"]
    alpha_baseline(alpha)
    AlertRule.objects.filter(metric="backtest_divergence_pct").delete()
    rule = AlertRule.objects.create(
        name="Live diverges from backtest",
        metric="backtest_divergence_pct",
        comparator=">",
        threshold=50,
        scope="engine",
        scope_value="alpha",
    )
    evaluate_engine(alpha.pk, now=datetime(2026, 11, 23, tzinfo=UTC))
    alert = Alert.objects.get(rule=rule, engine=alpha)
    assert alert.state == Alert.State.FIRING
    assert close(alert.value, DIVERGENCE_30D_PCT, rel=1e-7)
