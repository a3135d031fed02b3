"""Live against the baseline (golive.comparison): every figure computed from fills, orders and
snapshots built by hand, against values worked out on paper; the go-live page and the API show
them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane.models import AccountSnapshot, Instrument, MetricSample, Order
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
    # Refused by the parameter's own format (RFC 3339 with its offset), naming it.
    assert naive.status_code == 422 and "offset" in naive.json()["errors"]["start"]
    assert client.get("/api/v1/engines/nobody/comparison").status_code == 404


def test_the_go_live_page_shows_the_divergence_and_its_causes(engine, viewer):
    client = Client()
    client.force_login(viewer)
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert "Live against the baseline" in page
    assert 'data-figure="trade_count_ratio"' in page
    assert "Fewer trades than the backtest" in page


# --- Against an earlier stage's record over the same days ----------------------------------------


def _closes(engine, values: list[str], start: datetime) -> None:
    """The opening equity (the evening before the period), then each day's close."""
    AccountSnapshot.objects.bulk_create(
        AccountSnapshot(
            engine=engine,
            ts=start + timedelta(days=day - 1, hours=20),
            equity=Decimal(value),
            cash=0,
            seq=day + 1,
        )
        for day, value in enumerate(values)
    )


def _order(engine, instrument, n: int, status: str, filled: int, start: datetime) -> None:
    ts = start + timedelta(days=2, hours=16)
    Order.objects.create(
        engine=engine,
        client_order_id=f"x{n}",
        instrument=instrument,
        side="buy",
        order_type="limit",
        quantity=10,
        status=status,
        filled_quantity=filled,
        created_at=ts,
        updated_at=ts,
        last_seq=1,
    )


def _latency(engine, values: list[float], start: datetime) -> None:
    for n, value in enumerate(values):
        MetricSample.objects.create(
            engine=engine,
            ts=start + timedelta(hours=n + 1),
            name="latency_ms",
            value=value,
            seq=90 + n,
        )


@pytest.fixture
def pair(make_engine):
    return build_pair(make_engine, START)


def build_pair(make_engine, start: datetime):
    """A small-capital engine and its paper companion running the same strategy over the five
    days from ``start`` (a midnight UTC)."""
    live, _ = make_engine("small-1", stage="small_capital", mode="live")
    paper, _ = make_engine("paper-1", stage="paper")
    instrument = Instrument.objects.create(symbol="BBB")
    # Live: +1 %, -1 %, +2 %, -1 % a day (the analytics worked example's returns).
    _closes(live, ["100000", "101000", "99990", "101989.8", "100969.902"], start)
    # Paper: +0.5 %, 0, +0.5 %, 0.
    _closes(paper, ["50000", "50250", "50250", "50501.25", "50501.25"], start)
    # Live: three round trips, one won; each buy filled at 100 against a decision at 99.95.
    for n, win in enumerate((True, False, False)):
        at = start + timedelta(days=n, hours=15)
        trade(live, instrument, n, at, win=win, expected="99.95")
    # and two orders without a fill: one rejected, one still working.
    _order(live, instrument, 1, "rejected", 0, start)
    _order(live, instrument, 2, "accepted", 0, start)
    # Paper: four round trips, three won; its buys simulated at 100 against 99.99.
    for n, win in enumerate((True, True, False, True)):
        at = start + timedelta(days=n, hours=15)
        trade(paper, instrument, n, at, win=win, expected="99.99")
    _latency(live, [30.0, 50.0], start)
    _latency(paper, [10.0], start)
    return live, paper


def test_every_figure_against_an_earlier_stage_worked_out_by_hand(pair):
    live, paper = pair
    result = comparison.compare(live, START, END, against=paper)
    f = result.by_key
    assert result.baseline_name == "paper-1" and result.against == paper

    # Return: 100,969.902 / 100,000 - 1 = 0.969902 %; paper 50,501.25 / 50,000 - 1 = 1.0025 %;
    # |0.969902 - 1.0025| / 1.0025 = 3.2517 % apart: within 20 %.
    assert f["return_pct"].live == pytest.approx(0.969902)
    assert f["return_pct"].baseline == pytest.approx(1.0025)
    assert f["return_pct"].difference == pytest.approx(0.032598 / 1.0025 * 100)
    assert result.significant is False and f["return_pct"].points_at is None
    # Trades: 6 fills against paper's 8: 0.75, fewer trades.
    assert (f["trade_count_ratio"].live, f["trade_count_ratio"].baseline) == (6.0, 8.0)
    assert f["trade_count_ratio"].difference == pytest.approx(0.75)
    assert f["trade_count_ratio"].points_at == "fewer_trades"
    # Win rate: 1 of 3 against 3 of 4: 33.33 - 75 = -41.67 points, different signals.
    assert f["win_rate_pp"].live == pytest.approx(100 / 3)
    assert f["win_rate_pp"].baseline == pytest.approx(75.0)
    assert f["win_rate_pp"].difference == pytest.approx(100 / 3 - 75)
    assert f["win_rate_pp"].points_at == "different_signals"
    # Slippage against the decision price: live (100 - 99.95) / 99.95 = 5.0025 bps a buy; the
    # paper model (100 - 99.99) / 99.99 = 1.0001 bps; 4.0024 bps beyond the model.
    assert f["slippage_bps"].live == pytest.approx(0.05 / 99.95 * 10_000)
    assert f["slippage_bps"].baseline == pytest.approx(0.01 / 99.99 * 10_000)
    assert f["slippage_bps"].difference == pytest.approx(
        0.05 / 99.95 * 10_000 - 0.01 / 99.99 * 10_000
    )
    assert f["slippage_bps"].points_at == "lower_returns"
    # Sharpe of the daily returns: live mean 0.0025, sample sd 0.015: 0.0025 / 0.015 x
    # sqrt(252) = sqrt(7); paper mean 0.0025, sd sqrt(0.000025 / 3): sqrt(3) / 2 x sqrt(252) =
    # sqrt(189). Live below half of paper's: higher variance.
    assert f["sharpe"].live == pytest.approx(7**0.5)
    assert f["sharpe"].baseline == pytest.approx(189**0.5)
    assert f["sharpe"].difference == pytest.approx(7**0.5 - 189**0.5)
    assert f["sharpe"].points_at == "higher_variance"
    # Max drawdown: 101,000 -> 99,990 is 1 % (as 101,989.8 -> 100,969.902); paper never fell.
    assert f["max_drawdown_pct"].live == pytest.approx(1.0)
    assert f["max_drawdown_pct"].baseline == pytest.approx(0.0)
    assert f["max_drawdown_pct"].points_at == "higher_variance"
    # Orders: live 6 of 8 filled (75 %), 1 of 8 rejected (12.5 %); paper 8 of 8, none.
    assert (f["fill_rate_pct"].live, f["fill_rate_pct"].baseline) == (75.0, 100.0)
    assert f["fill_rate_pct"].difference == -25.0
    assert f["fill_rate_pct"].points_at == "fewer_trades"
    assert (f["rejection_rate_pct"].live, f["rejection_rate_pct"].baseline) == (12.5, 0.0)
    assert f["rejection_rate_pct"].points_at == "lower_returns"
    # Latency: the mean of 30 and 50 ms against paper's 10 ms.
    assert (f["latency_ms"].live, f["latency_ms"].baseline, f["latency_ms"].difference) == (
        40.0,
        10.0,
        30.0,
    )
    causes = {cause.key: cause.figures for cause in result.causes}
    assert causes == {
        "fewer_trades": ["Trade count", "Fill rate"],
        "lower_returns": ["Slippage against the expected price", "Order rejection rate"],
        "higher_variance": ["Sharpe ratio", "Max drawdown"],
        "different_signals": ["Win rate"],
    }


def test_a_batch_compares_each_as_alone_in_a_fixed_number_of_queries(pair, engine):
    live, paper = pair
    requests = [
        comparison.Request(live, START, END, paper),
        comparison.Request(engine, START, END),
        comparison.Request(paper, START, END),
    ]
    with CaptureQueriesContext(connection) as captured:
        batch = comparison.compare_many(requests)
    # The records (equity, activity, round trips), the latencies and the baselines.
    assert len(captured.captured_queries) == 5
    for request, together in zip(requests, batch, strict=True):
        alone = comparison.compare(request.engine, request.start, request.end, request.against)
        assert together.figures == alone.figures
        assert together.significant == alone.significant


def test_the_api_compares_with_a_named_engine_and_refuses_a_bad_one(pair, viewer):
    live, _paper = pair
    client = Client()
    client.force_login(viewer)
    url = f"/api/v1/engines/{live.name}/comparison"
    period = {"start": START.isoformat(), "end": END.isoformat()}
    body = client.get(url, {**period, "against": "paper-1"}).json()
    assert (body["against"], body["against_stage"], body["baseline"]) == (
        "paper-1",
        "paper",
        "paper-1",
    )
    figures = {figure["key"]: figure for figure in body["figures"]}
    assert figures["trade_count_ratio"]["difference"] == pytest.approx(0.75)
    assert client.get(url, period).json()["against"] == "backtest"
    itself = client.get(url, {**period, "against": live.name})
    assert itself.status_code == 400 and "against" in itself.json()["detail"]
    unknown = client.get(url, {**period, "against": "nobody"})
    assert unknown.status_code == 400 and "no engine is named 'nobody'" in unknown.json()["detail"]


def test_the_engine_page_compares_with_the_chosen_engine(pair, viewer):
    live, _paper = pair
    client = Client()
    client.force_login(viewer)
    html = client.get(f"/engines/{live.name}/").content.decode()
    assert 'id="comparison"' in html and 'data-figure="latency_ms"' in html
    assert '<option value="paper-1">paper-1 (Paper) over the same days</option>' in html
    chosen = client.get(f"/engines/{live.name}/?against=paper-1").content.decode()
    assert "the record of paper-1 (Paper) over the same days" in chosen
    unknown = client.get(f"/engines/{live.name}/?against=nobody", follow=True)
    assert "no other engine with a record is named" in unknown.content.decode()
