"""The gates, measured on seeded data: each criterion's passing and failing sides, and unknown
where the data is missing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from alerts.models import Alert, Severity
from controlplane.models import (
    AccountSnapshot,
    BrokerStatement,
    Command,
    EngineLog,
    Fill,
    Instrument,
    Order,
    Stage,
    StageChange,
)
from dashboard.models import Baseline
from golive import gates
from golive.models import KillDrill, PromotionCriterion
from risk.models import POST_TRADE, RiskLimit

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)  # a Friday


def by_key(report: gates.GateReport) -> dict[str, gates.Criterion]:
    return {c.key: c for c in report.criteria}


@pytest.fixture
def instrument() -> Instrument:
    return Instrument.objects.create(symbol="AAA")


def trade(
    engine,
    instrument,
    n: int,
    ts: datetime,
    *,
    win: bool,
    expected: str = "100",
    market: str | None = None,
) -> None:
    """A round trip: buy 10 at 100, sell 10 at 101 (a win) or 99 (a loss); the buy simulated at
    ``expected`` and, given ``market``, saying what a real order would have paid."""
    for leg, (side, price) in enumerate((("buy", "100"), ("sell", "101" if win else "99"))):
        order = Order.objects.create(
            engine=engine,
            client_order_id=f"o{n}-{leg}",
            instrument=instrument,
            side=side,
            order_type="market",
            quantity=10,
            status="filled",
            filled_quantity=10,
            created_at=ts,
            updated_at=ts,
            last_seq=1,
        )
        Fill.objects.create(
            engine=engine,
            fill_id=f"f{n}-{leg}",
            order=order,
            instrument=instrument,
            side=side,
            quantity=10,
            price=Decimal(price),
            expected_price=Decimal(expected) if side == "buy" else None,
            market_price=Decimal(market) if market is not None and side == "buy" else None,
            ts=ts + timedelta(minutes=leg),
            seq=2 * n + leg + 1,
        )


def equity(engine, start: datetime, values: list[float]) -> None:
    AccountSnapshot.objects.bulk_create(
        AccountSnapshot(
            engine=engine, ts=start + timedelta(days=i), equity=Decimal(str(v)), cash=0, seq=i + 1
        )
        for i, v in enumerate(values)
    )


def frame(engine, first: int, last: int, received: datetime, event_ts: datetime, refused=None):
    events = json.dumps([{"seq": first, "kind": "log", "ts": event_ts.isoformat()}])
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO controlplane_eventframe (engine_id, first_seq, last_seq, received_at,"
            " events, refused) VALUES (%s, %s, %s, %s, %s, %s)",
            [engine.pk, first, last, received, events, refused],
        )


def test_backtest_to_paper_reads_the_baseline(make_engine):
    good, _ = make_engine("good")
    poor, _ = make_engine("poor")
    bare, _ = make_engine("bare")
    for e in (good, poor, bare):
        e.stage = "backtest"
    day0 = datetime(2025, 1, 1, tzinfo=UTC)
    Baseline.objects.create(
        engine=good,
        name="bt",
        sharpe=1.6,
        gross_profit=1500.0,
        gross_loss=1000.0,
        equity_curve=[[day0.isoformat(), "100"], [(day0 + timedelta(days=400)).isoformat(), "130"]],
    )
    Baseline.objects.create(
        engine=poor,
        name="bt",
        sharpe=0.7,
        gross_profit=1200.0,
        gross_loss=1000.0,
        equity_curve=[
            [day0.isoformat(), "100"],
            [(day0 + timedelta(days=100)).isoformat(), "80"],
            [(day0 + timedelta(days=200)).isoformat(), "120"],
        ],
    )
    good_r, poor_r, bare_r = gates.reports([good, poor, bare], NOW)
    assert (good_r.from_stage, good_r.to_stage) == ("backtest", "paper")
    g, p, b = by_key(good_r), by_key(poor_r), by_key(bare_r)
    assert g["baseline_sharpe"].passed is True and p["baseline_sharpe"].passed is False
    assert g["baseline_max_drawdown_pct"].value == 0 and g["baseline_max_drawdown_pct"].passed
    assert p["baseline_max_drawdown_pct"].value == pytest.approx(20)
    assert p["baseline_max_drawdown_pct"].passed is False
    assert g["baseline_history_days"].passed is True and p["baseline_history_days"].passed is False
    # Gross profit / gross loss: 1.5 passes (> 1.3), 1.2 fails.
    assert g["baseline_profit_factor"].value == pytest.approx(1.5)
    assert g["baseline_profit_factor"].passed is True
    assert p["baseline_profit_factor"].value == pytest.approx(1.2)
    assert p["baseline_profit_factor"].passed is False
    assert g["baseline_profit_factor"].evidence == "/engines/good/#baseline"
    assert good_r.ready is True
    # Without gross figures: unknown, never a pass.
    Baseline.objects.filter(engine=good).update(gross_profit=None, gross_loss=None)
    unknown = by_key(gates.report(good, NOW))["baseline_profit_factor"]
    assert unknown.passed is None
    assert unknown.value_text == "the baseline gives no gross profit and gross loss"
    assert (
        b["baseline_sharpe"].passed is None
        and "no backtest baseline" in b["baseline_sharpe"].value_text
    )
    assert g["baseline_sharpe"].evidence == "/engines/good/#baseline"
    assert not poor_r.ready and not bare_r.ready


def paper_engine(make_engine, instrument, name: str, *, wins: int, losses: int, days: int = 20):
    engine, _ = make_engine(name)
    start = NOW - timedelta(days=days)
    equity(engine, start, [100_000 + 100 * i for i in range(days)])
    for n in range(wins + losses):
        trade(engine, instrument, n, start + timedelta(hours=n + 1), win=n < wins)
    return engine, start


def test_paper_to_shadow_on_both_sides(make_engine, instrument):
    good, start = paper_engine(make_engine, instrument, "good", wins=20, losses=12)
    short, _ = paper_engine(make_engine, instrument, "short", wins=3, losses=2, days=5)
    # 20 days touch 15 weekdays; a baseline that expects what "good" did.
    live_return = (100_000 + 100 * 19) / 100_000 - 1
    for engine in (good, short):
        Baseline.objects.create(
            engine=engine,
            name="bt",
            expected_annual_return_pct=live_return * 100 * 252 / 15,
            win_rate_pct=60.0,
            trades_per_day=64 / 15,
        )
    Order.objects.filter(engine=short, client_order_id="o0-0").update(status="rejected")
    EngineLog.objects.create(engine=short, ts=NOW - timedelta(days=1), level="error", message="x")
    EngineLog.objects.create(engine=good, ts=NOW - timedelta(days=1), level="warning", message="w")
    # good: a disconnect recovered (a frame of events 5 minutes old after a 10-minute silence).
    frame(good, 1, 10, start + timedelta(days=1), start + timedelta(days=1))
    late = start + timedelta(days=1, minutes=10)
    frame(good, 11, 20, late, late - timedelta(minutes=5))
    # short: a gap in seq and a refused event.
    frame(short, 1, 10, NOW - timedelta(days=2), NOW - timedelta(days=2))
    frame(short, 12, 12, NOW - timedelta(days=1), NOW - timedelta(days=1), refused="bad")

    good_r, short_r = gates.reports([good, short], NOW)
    g, s = by_key(good_r), by_key(short_r)
    assert g["min_days"].passed is True and g["min_days"].value == 20
    assert g["min_days"].since == start + timedelta(days=14)
    assert s["min_days"].passed is False
    assert g["min_round_trips"].value == 32 and g["min_round_trips"].passed
    assert s["min_round_trips"].value == 5 and s["min_round_trips"].passed is False
    assert g["return_vs_baseline_pct"].passed is True
    assert g["return_vs_baseline_pct"].value == pytest.approx(0, abs=0.01)  # 15 weekdays
    assert s["return_vs_baseline_pct"].passed is False  # 0.4 % against 0.51 %
    assert g["win_rate_vs_baseline_pp"].value == pytest.approx(2.5)  # 62.5 % against 60 %
    assert g["win_rate_vs_baseline_pp"].passed is True
    assert g["trade_count_ratio"].value == pytest.approx(1.0)
    assert g["trade_count_ratio"].passed is True
    assert s["trade_count_ratio"].passed is False
    assert g["rejection_rate_pct"].value == 0 and g["rejection_rate_pct"].passed
    assert s["rejection_rate_pct"].value == pytest.approx(10) and not s["rejection_rate_pct"].passed
    assert g["error_logs"].passed is True and s["error_logs"].passed is False
    assert "enginelog" in s["error_logs"].evidence
    assert g["disconnects_recovered"].value == 1 and g["disconnects_recovered"].passed is True
    assert s["disconnects_recovered"].passed is False
    assert "1 missing from the seq, 1 refused" in s["disconnects_recovered"].value_text
    assert good_r.ready is True
    assert short_r.ready is False


def test_slippage_is_unknown_when_no_fill_says_what_the_market_would_have_charged(
    make_engine, instrument
):
    engine, _ = make_engine("real-fills")
    engine.stage = "shadow"
    trade(engine, instrument, 0, NOW - timedelta(days=1), win=True, expected="99.9")
    slippage = by_key(gates.report(engine, NOW))["slippage_bps"]
    assert slippage.passed is None
    assert "fill.market_price" in slippage.value_text


def test_paper_unknown_without_data(make_engine):
    engine, _ = make_engine("empty")
    c = by_key(gates.report(engine, NOW))
    for key in (
        "return_vs_baseline_pct",
        "win_rate_vs_baseline_pp",
        "trade_count_ratio",
        "rejection_rate_pct",
        "disconnects_recovered",
    ):
        assert c[key].passed is None, key
    assert "no event frame" in c["disconnects_recovered"].value_text
    # Connected without a drop, nothing recovered: not a pass either.
    assert c["min_round_trips"].passed is False


def test_shadow_to_small_capital(make_engine, instrument):
    calm, _ = make_engine("calm")
    slippy, _ = make_engine("slippy")
    for engine in (calm, slippy):
        engine.stage = "shadow"
    start = NOW - timedelta(days=10)
    equity(calm, start, [100_000] * 10)
    equity(slippy, start, [100_000] * 3)
    # The market would have charged 1 bp more than the simulated 100, and 10 bps more.
    trade(
        calm, instrument, 0, start + timedelta(days=1), win=True, expected="99.99", market="100.01"
    )
    trade(
        slippy, instrument, 0, start + timedelta(days=1), win=True, expected="99.9", market="100.1"
    )
    for engine, explanation in ((slippy, ""), (slippy, ""), (calm, "the venue's outage")):
        Alert.objects.create(
            engine=engine,
            severity=Severity.CRITICAL,
            summary="x",
            state="resolved",
            fired_at=NOW - timedelta(days=1),
            explanation=explanation,
        )
    # Before the period, or not critical: not counted.
    Alert.objects.create(
        engine=slippy,
        severity=Severity.CRITICAL,
        summary="old",
        state="resolved",
        fired_at=start - timedelta(days=1),
    )
    Alert.objects.create(
        engine=slippy,
        severity=Severity.WARNING,
        summary="w",
        state="resolved",
        fired_at=NOW - timedelta(days=1),
    )
    calm_r, slippy_r = gates.reports([calm, slippy], NOW)
    c, s = by_key(calm_r), by_key(slippy_r)
    assert (calm_r.from_stage, calm_r.to_stage) == ("shadow", "small_capital")
    assert c["slippage_bps"].value == pytest.approx(1.0, abs=0.01) and c["slippage_bps"].passed
    # Against the expected 99.99: the market 2.00 bps, the simulation 1.00.
    assert c["slippage_bps"].value_text == (
        "1.00 bps beyond the simulated prices over 1 fills (the market 2.00 bps, modelled 1.00)"
    )
    assert s["slippage_bps"].value == pytest.approx(10.0, abs=0.02)
    assert s["slippage_bps"].passed is False
    assert c["unexplained_critical_alerts"].passed is True
    assert c["unexplained_critical_alerts"].value_text == (
        "1 critical alerts in the period, each explained"
    )
    assert s["unexplained_critical_alerts"].passed is False
    assert s["unexplained_critical_alerts"].value == 2
    assert s["unexplained_critical_alerts"].value_text.startswith(
        "2 of 2 critical alerts unexplained (last 2026-11-26 12:00)"
    )
    assert s["unexplained_critical_alerts"].evidence == "/alerts/?engine=slippy"
    assert c["min_days"].passed is True
    assert calm_r.ready is True and slippy_r.ready is False


def test_small_capital_to_full(make_engine, instrument):
    engine, _ = make_engine("big", strategy_tags=["momentum"])
    engine.stage = "small_capital"
    equity(engine, NOW - timedelta(days=30), [100_000 + (i % 3) * 50 for i in range(30)])
    c = by_key(gates.report(engine, NOW))
    assert c["min_days"].passed is True
    assert c["kill_drill_days"].passed is None
    assert c["kill_drill_days"].value_text == "no kill drill passed yet"
    assert c["sharpe_vs_paper_pct"].passed is None
    # The risk migration's global capital ceiling limit covers its kind, the others are missing.
    shipped = RiskLimit.objects.filter(kind="capital_ceiling_pct", enabled=True).count()
    assert c["post_trade_limit_kinds_missing"].value == len(POST_TRADE) - shipped
    assert c["post_trade_limit_kinds_missing"].passed is False

    for kind in POST_TRADE:
        RiskLimit.objects.create(kind=kind, scope="tag", scope_value="momentum", threshold=50)
    # A plain kill carried out to HALTED is no drill: it does not count.
    Command.objects.create(
        engine=engine,
        kind="kill",
        reason="risk limit",
        issued_by_label="rita",
        status="succeeded",
        state_after="HALTED",
        completed_at=NOW - timedelta(days=1),
    )
    drill = {"engine": engine, "kind": "halt_path", "stage": "small_capital", "reason": "drill"}
    KillDrill.objects.create(**drill, status="failed", done_at=NOW - timedelta(days=1))
    assert by_key(gates.report(engine, NOW))["kill_drill_days"].passed is None
    KillDrill.objects.create(**drill, status="passed", done_at=NOW - timedelta(days=3), done_ms=42)
    c = by_key(gates.report(engine, NOW))
    assert c["post_trade_limit_kinds_missing"].passed is True
    assert c["kill_drill_days"].value == 3 and c["kill_drill_days"].passed is True
    assert "done in 42 ms" in c["kill_drill_days"].value_text
    assert c["kill_drill_days"].evidence == "/engines/big/go-live/#drills"


def test_the_stage_history_gives_the_periods(make_engine):
    engine, _ = make_engine("hist")
    engine.stage = "small_capital"
    paper_start = NOW - timedelta(days=60)
    equity(engine, paper_start, [100_000 * (1 + 0.001 * i + 0.002 * (i % 2)) for i in range(60)])
    history = {
        engine.pk: [
            ("paper", paper_start),
            ("shadow", NOW - timedelta(days=40)),
            ("small_capital", NOW - timedelta(days=30)),
        ]
    }
    gates.stage_history_from(lambda ids: history)
    try:
        c = by_key(gates.report(engine, NOW))
    finally:
        gates.stage_history_from(None)
    assert c["min_days"].value == 30 and "stage history" in c["min_days"].value_text
    assert c["sharpe_vs_paper_pct"].value is not None
    assert c["sharpe_vs_paper_pct"].passed is True


def test_pnl_is_verified_by_the_latest_broker_statement_matching_the_ledger(make_engine):
    none, _ = make_engine("no-statement", stage="small_capital")
    matched, _ = make_engine("matched", stage="small_capital")
    differs, _ = make_engine("differs", stage="small_capital")
    for engine, day, count in (
        (matched, NOW.date() - timedelta(days=12), 0),
        (matched, NOW.date() - timedelta(days=2), 0),
        (differs, NOW.date() - timedelta(days=3), 0),
        # The latest day differs: an earlier match does not verify it.
        (differs, NOW.date() - timedelta(days=1), 2),
    ):
        BrokerStatement.objects.create(
            engine=engine,
            statement_date=day,
            sha256="x",
            differences_count=count,
            imported_by_label="rita",
        )
    reports = gates.reports([none, matched, differs], NOW)
    n, m, d = (by_key(r)["statement_verified_days"] for r in reports)
    assert (n.passed, n.value_text) == (
        None,
        "no broker statement imported (docs/broker-statements.md)",
    )
    assert (m.passed, m.value) == (True, 2.0)
    assert (
        m.value_text
        == f"2 days ago (the statement of {NOW.date() - timedelta(days=2)} matched the ledger)"
    )
    assert d.passed is False
    assert d.value_text == (
        f"the last statement, of {NOW.date() - timedelta(days=1)}, differs from the ledger "
        "in 2 places"
    )


def test_a_disabled_criterion_is_left_out_and_full_has_no_step(make_engine):
    PromotionCriterion.objects.filter(from_stage="paper").exclude(key="min_days").update(
        enabled=False
    )
    engine, _ = make_engine("solo")
    Fill.objects.none()
    report = gates.report(engine, NOW)
    assert [c.key for c in report.criteria] == ["min_days"]
    engine.stage = "full"
    final = gates.report(engine, NOW)
    assert final.to_stage is None and final.criteria == [] and final.ready is False


def test_the_fleet_takes_the_same_number_of_queries_whatever_its_size(make_engine, instrument):
    stages = ["backtest", "paper", "shadow", "small_capital", "full"]

    def fleet(n: int, prefix: str) -> list:
        engines = []
        for i in range(n):
            engine, _ = make_engine(f"{prefix}-{i}")
            engine.stage = stages[i % 5]
            equity(engine, NOW - timedelta(days=5), [100_000, 100_100, 100_050])
            trade(engine, instrument, 0, NOW - timedelta(days=2), win=True)
            engines.append(engine)
        return engines

    small, large = fleet(5, "s"), fleet(25, "l")
    with CaptureQueriesContext(connection) as few:
        gates.reports(small, NOW)
    with CaptureQueriesContext(connection) as many:
        gates.reports(large, NOW)
    assert len(many.captured_queries) == len(few.captured_queries) <= 14


def test_the_stage_start_is_known_at_the_last_stage_and_with_no_criterion(make_engine) -> None:
    # Full production has no step ahead, and a flushed policy has no criterion: the period its
    # comparison and red lines are judged over is still when its stage began.
    full, _ = make_engine("full-1", stage=Stage.FULL)
    began = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
    StageChange.objects.filter(engine=full).update(at=began - timedelta(days=1))
    StageChange.objects.filter(engine=full, to_stage=Stage.FULL).update(at=began)
    now = began + timedelta(days=10)
    assert gates.report(full, now).period_start == began
    PromotionCriterion.objects.all().delete()
    paper, _ = make_engine("paper-1")
    StageChange.objects.filter(engine=paper).update(at=began)
    report = gates.report(paper, now)
    assert report.criteria == [] and report.period_start == began
