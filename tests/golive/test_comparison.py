"""Live against the baseline (golive.comparison): every figure computed from fills, orders and
snapshots built by hand, against values worked out on paper; the go-live page and the API show
them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.test import Client

from controlplane.models import AccountSnapshot, Instrument, MetricSample
from dashboard.models import Baseline
from golive import comparison
from tests.golive.test_gates import trade

pytestmark = pytest.mark.django_db

# Monday 2026-11-30 to Saturday 2026-12-05: five weekdays.
START = datetime(2026, 11, 30, tzinfo=UTC)
END = datetime(2026, 12, 5, tzinfo=UTC)


@pytest.fixture
def engine(make_engine):
    engine, _ = make_engine("compared", stage="paper")
    Baseline.objects.create(
        engine=engine,
        name="bt 2026-10",
        # 25.2 % a year: 0.5 % over five weekdays.
        expected_annual_return_pct=25.2,
        sharpe=2.0,
        trades_per_day=4.0,
        win_rate_pct=50.0,
        # 100 -> 95 -> 110: a 5 % drawdown.
        equity_curve=[["2025-01-01", "100"], ["2025-06-01", "95"], ["2025-12-31", "110"]],
    )
    # The opening equity (before the period), then Monday to Friday's closes.
    closes = [100_000, 100_100, 100_000, 100_200, 100_300, 100_350]
    AccountSnapshot.objects.bulk_create(
        AccountSnapshot(
            engine=engine,
            ts=START + timedelta(days=day - 1, hours=20),
            equity=Decimal(value),
            cash=0,
            seq=day + 1,
        )
        for day, value in enumerate(closes)
    )
    instrument = Instrument.objects.create(symbol="AAA")
    # Two round trips (buy 10 at 100, sell at 101 or 99): one win, one loss. The first buy was
    # simulated at 100 against an expected 99.99, where the market would have asked 100.02.
    trade(
        engine,
        instrument,
        0,
        START + timedelta(hours=15),
        win=True,
        expected="99.99",
        market="100.02",
    )
    trade(engine, instrument, 1, START + timedelta(days=1, hours=15), win=False)
    for n, value in enumerate((10.0, 20.0)):
        MetricSample.objects.create(
            engine=engine,
            ts=START + timedelta(hours=n + 1),
            name="latency_ms",
            value=value,
            seq=50 + n,
        )
    return engine


def test_every_figure_against_the_baseline_worked_out_by_hand(engine):
    result = comparison.compare(engine, START, END)
    f = {figure.key: figure for figure in result.figures}

    # Return: 100,350 / 100,000 - 1 = 0.35 %; expected 25.2 x 5 / 252 = 0.5 %; |0.35 - 0.5| /
    # 0.5 = 30 % apart, beyond 20 %: significant, and lower, so it points at lower returns.
    assert f["return_pct"].live == pytest.approx(0.35)
    assert f["return_pct"].baseline == pytest.approx(0.5)
    assert f["return_pct"].difference == pytest.approx(30.0)
    assert result.significant is True
    assert f["return_pct"].points_at == "lower_returns"
    # Trades: 4 fills against 4 a day x 5 weekdays = 20: ratio 0.2, fewer trades.
    assert (f["trade_count_ratio"].live, f["trade_count_ratio"].baseline) == (4.0, 20.0)
    assert f["trade_count_ratio"].difference == pytest.approx(0.2)
    assert f["trade_count_ratio"].points_at == "fewer_trades"
    # Win rate: 1 of 2 round trips, as the baseline's 50 %.
    assert (f["win_rate_pp"].live, f["win_rate_pp"].difference) == (50.0, 0.0)
    assert f["win_rate_pp"].points_at is None
    # Slippage against the expected price, of the one fill that says what the market would
    # have charged: the market (100.02 - 99.99) / 99.99 = 3.0003 bps, the simulation (100 -
    # 99.99) / 99.99 = 1.0001 bps; beyond the model (100.02 - 100) / 100 = 2 bps.
    assert f["slippage_bps"].live == pytest.approx(3.0003, abs=1e-4)
    assert f["slippage_bps"].baseline == pytest.approx(1.0001, abs=1e-4)
    assert f["slippage_bps"].difference == pytest.approx(2.0)
    # Max drawdown: 100,100 -> 100,000 = 0.0999 %, against the baseline's 5 %.
    assert f["max_drawdown_pct"].live == pytest.approx(100 / 100_100 * 100)
    assert f["max_drawdown_pct"].baseline == pytest.approx(5.0)
    assert f["max_drawdown_pct"].points_at is None
    # Orders: four, each filled; none rejected. Latency: the mean of 10 and 20 ms.
    assert f["fill_rate_pct"].live == 100.0
    assert f["rejection_rate_pct"].live == 0.0
    assert f["latency_ms"].live == 15.0
    # The causes: those pointed at first, each with the figures that point at it.
    causes = {cause.key: cause.figures for cause in result.causes}
    assert causes["fewer_trades"] == ["Trade count"]
    assert causes["lower_returns"] == ["Return", "Slippage against the expected price"]
    assert causes["different_signals"] == []
    assert [c.key for c in result.causes][:2] == ["fewer_trades", "lower_returns"]


def test_without_a_baseline_the_live_figures_stand_alone(make_engine):
    engine, _ = make_engine("alone", stage="paper")
    result = comparison.compare(engine, START, END)
    f = {figure.key: figure for figure in result.figures}
    assert result.baseline_name is None and result.significant is None
    assert f["return_pct"].text == "no account snapshot in the period"
    assert f["trade_count_ratio"].text == "0 fills; no baseline figure"
    assert all(figure.points_at is None for figure in result.figures)


def test_the_api_answers_the_comparison_and_refuses_bad_periods(engine, viewer, outsider):
    client = Client()
    url = f"/api/v1/engines/{engine.name}/comparison"
    client.force_login(outsider)
    assert client.get(url).status_code == 403
    client.force_login(viewer)
    answer = client.get(url, {"start": START.isoformat(), "end": END.isoformat()})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert (body["baseline"], body["significant"], body["threshold_pct"]) == (
        "bt 2026-10",
        True,
        20.0,
    )
    figures = {figure["key"]: figure for figure in body["figures"]}
    assert figures["return_pct"]["difference"] == pytest.approx(30.0)
    assert body["causes"][0]["key"] == "fewer_trades"
    backwards = client.get(url, {"start": END.isoformat(), "end": START.isoformat()})
    assert backwards.status_code == 400 and "must be before end" in backwards.json()["detail"]
    far = client.get(url, {"start": "9999-12-31T00:00:00Z", "end": "9999-12-31T23:00:00Z"})
    assert far.status_code == 400 and "between 1900 and 2999" in far.json()["detail"]
    naive = client.get(url, {"start": "2026-12-01T00:00:00", "end": END.isoformat()})
    assert naive.status_code == 400 and "need a timezone" in naive.json()["detail"]
    assert client.get("/api/v1/engines/nobody/comparison").status_code == 404


def test_the_go_live_page_shows_the_divergence_and_its_causes(engine, viewer):
    client = Client()
    client.force_login(viewer)
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert "Live against the baseline" in page
    assert 'data-figure="trade_count_ratio"' in page
    assert "Fewer trades than the backtest" in page
