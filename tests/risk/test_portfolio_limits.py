"""Portfolio limits (risk.portfolio, docs/risk.md): correlation, portfolio drawdown and daily
loss, historical value at risk, each from account snapshots built here by hand and compared with
figures worked out on paper; their warnings, breaches and actions move once."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import count

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from alerts.models import Alert
from controlplane.config.schedules import PERIODIC_TASKS
from controlplane.models import AccountSnapshot, Command, Engine
from risk import portfolio, services
from risk.models import PortfolioLimitState, RiskEvent, RiskLimit, RiskLimitChange
from risk.tasks import portfolio_limits

pytestmark = pytest.mark.django_db

D = Decimal
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # today is 1 March: the last whole day 28 Feb
_seq = count(1)


@pytest.fixture(autouse=True)
def fresh_cache():
    portfolio.forget_cached_measures()
    yield
    portfolio.forget_cached_measures()


def save(actor, **fields) -> RiskLimit:
    limit = RiskLimit(**fields)
    services.limit_save(limit=limit, reason="desk policy", actor=actor)
    return limit


def snap(engine: Engine, ts: datetime, equity: Decimal | str | int) -> None:
    AccountSnapshot.objects.create(
        engine=engine, ts=ts, equity=D(equity), cash=D(equity), seq=next(_seq)
    )


def closes_from_returns(engine: Engine, returns: list[float], *, start: int, last_day: date):
    """One close a day, ending on ``last_day``, each the previous one moved by its return (the
    first close is ``start``, the day before the first return); an intraday snapshot before each
    close says the end of the day is what counts."""
    first = last_day - timedelta(days=len(returns))
    equity = D(start)
    snap(engine, datetime(first.year, first.month, first.day, 21, tzinfo=UTC), equity)
    for i, r in enumerate(returns, start=1):
        day = first + timedelta(days=i)
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        snap(engine, noon, equity * D("0.5"))  # not the close: ignored
        equity = (equity * (1 + D(repr(r)))).quantize(D("0.00000001"))
        snap(engine, noon + timedelta(hours=10), equity)


@pytest.fixture
def evaluate(django_capture_on_commit_callbacks):
    """One run of the task: the events raised as (subject, kind, level), their alerts too."""

    def run(now: datetime = NOW) -> list[tuple[str, str, int]]:
        portfolio.forget_cached_measures()  # another worker, or the next day: measured afresh
        with django_capture_on_commit_callbacks(execute=True):
            events = portfolio.evaluate_all(now)
        return [(e.subject, e.kind, e.level) for e in events]

    return run


# --- correlation ------------------------------------------------------------------------------

A = [0.01, 0.02, 0.03, 0.04] * 3  # 12 days
B = [0.02, 0.04, 0.05, 0.09] * 3
C = [0.01, -0.01, 0.01, -0.01] * 3


def test_correlated_engines_are_paused_once_and_only_that_pair(evaluate, make_engine, risk_manager):
    alpha, beta, gamma = (make_engine(n)[0] for n in ("alpha", "beta", "gamma"))
    last = date(2026, 2, 28)
    for engine, returns in ((alpha, A), (beta, B), (gamma, C)):
        closes_from_returns(engine, returns, start=100000, last_day=last)
    snap(alpha, NOW - timedelta(hours=1), 1)  # today's: not a whole day, not measured
    limit = save(
        risk_manager, kind="correlation", threshold=D("0.6"), action="pause", warning_levels=[]
    )
    assert limit.window_days == 60  # the default

    assert evaluate() == [("alpha & beta", "breach", 100)]
    assert evaluate() == []  # a second run, or a second worker: nothing twice

    pauses = Command.objects.filter(kind="pause")
    assert sorted(pauses.values_list("engine__name", flat=True)) == ["alpha", "beta"]
    states = {s.subject: s for s in PortfolioLimitState.objects.filter(limit=limit)}
    # Worked on paper (docs/risk.md): each 4-day cycle gives sxy = 11, sxx = 5, syy = 26.
    assert float(states["alpha & beta"].value) == pytest.approx(11 / math.sqrt(130), abs=1e-6)
    assert float(states["alpha & gamma"].value) == pytest.approx(-2 / math.sqrt(20), abs=1e-6)
    assert float(states["beta & gamma"].value) == pytest.approx(-6 / math.sqrt(104), abs=1e-6)
    assert states["alpha & beta"].level == "breached" and states["beta & gamma"].level == "ok"
    event = RiskEvent.objects.get()
    assert event.engine is None and "issued to alpha, beta" in event.message
    assert "correlation over 12 days" in event.message


def test_a_correlation_needs_ten_common_days_and_a_window_that_holds_them(
    evaluate, make_engine, risk_manager
):
    alpha, beta = (make_engine(n)[0] for n in ("alpha", "beta"))
    for engine, returns in ((alpha, A[:9]), (beta, B[:9])):
        closes_from_returns(engine, returns, start=100000, last_day=date(2026, 2, 28))
    save(risk_manager, kind="correlation", threshold=D("0.5"))
    assert evaluate() == [] and not PortfolioLimitState.objects.exists()  # 9 days: unknown

    for engine, returns in ((alpha, A[:12]), (beta, B[:12])):  # 12 days, ending 20 days ago
        AccountSnapshot.objects.filter(engine=engine).delete()
        closes_from_returns(engine, returns, start=100000, last_day=date(2026, 2, 9))
    short = save(risk_manager, kind="correlation", threshold=D("0.5"), window_days=15)
    wide = RiskLimit.objects.exclude(pk=short.pk).get(kind="correlation")
    evaluate()
    assert not PortfolioLimitState.objects.filter(limit=short).exists()  # only 3 days inside
    assert PortfolioLimitState.objects.get(limit=wide).level == "breached"


# --- value at risk ----------------------------------------------------------------------------

R = [-0.06, -0.05, -0.04, -0.03, -0.02, -0.01] + [0.01] * 34  # 40 days


def test_value_at_risk_of_the_fleet_and_of_an_engine(evaluate, make_engine, risk_manager):
    alpha, beta = (make_engine(n)[0] for n in ("alpha", "beta"))
    # The same returns on both: the fleet's returns are R too (docs/risk.md).
    closes_from_returns(alpha, R, start=100000, last_day=date(2026, 2, 28))
    closes_from_returns(beta, R, start=50000, last_day=date(2026, 2, 28))
    var95 = save(risk_manager, kind="var_95_pct", threshold=D("5.5"))
    var99 = save(
        risk_manager, kind="var_99_pct", threshold=D("5.5"), action="reduce", reduce_to_pct=50
    )
    one = save(
        risk_manager, kind="var_95_pct", scope="engine", scope_value="alpha", threshold=D(10)
    )
    assert var95.window_days == 365

    events = evaluate()

    # 95 %: k = ceil(40 x 0.05) = 2, a 5 % loss: 90.9 % of 5.5. 99 %: k = 1, 6 %: 109 %.
    assert sorted(events) == [
        ("alpha", "warning", 50),
        ("fleet", "breach", 100),
        ("fleet", "warning", 90),
    ]
    fleet95 = PortfolioLimitState.objects.get(limit=var95)
    assert float(fleet95.value) == pytest.approx(5.0, abs=1e-6)
    assert float(PortfolioLimitState.objects.get(limit=var99).value) == pytest.approx(6.0, abs=1e-6)
    assert float(PortfolioLimitState.objects.get(limit=one).value) == pytest.approx(5.0, abs=1e-6)
    reduces = Command.objects.filter(kind="reduce")
    assert sorted(reduces.values_list("engine__name", flat=True)) == ["alpha", "beta"]
    assert {c.params["target_pct"] for c in reduces} == {50.0}
    assert RiskEvent.objects.get(limit=one).engine == alpha  # one engine's: its alerts tie to it
    assert evaluate() == []


# --- portfolio drawdown -----------------------------------------------------------------------


def test_a_tags_drawdown_is_from_its_combined_peak_and_pauses_its_engines(
    evaluate, make_engine, risk_manager
):
    alpha = make_engine("alpha", strategy_tags=["momentum"])[0]
    beta = make_engine("beta", strategy_tags=["momentum"])[0]
    gamma = make_engine("gamma")[0]
    t = datetime(2026, 2, 27, 9, tzinfo=UTC)
    snap(alpha, t, 100000)
    snap(beta, t + timedelta(minutes=1), 50000)  # 150,000
    snap(gamma, t + timedelta(minutes=1), 900000)
    snap(alpha, t + timedelta(minutes=2), 110000)  # 160,000: the peak
    snap(alpha, t + timedelta(minutes=3), 104000)
    snap(beta, t + timedelta(minutes=3), 40000)  # 144,000: 10 % below the peak
    snap(gamma, t + timedelta(minutes=3), 100000)  # not of the tag
    limit = save(
        risk_manager,
        kind="portfolio_drawdown_pct",
        scope="tag",
        scope_value="momentum",
        threshold=D(12),
        action="pause",
    )

    assert evaluate() == [("tag momentum", "warning", 75)]  # 10 / 12 = 83 %
    state = PortfolioLimitState.objects.get(limit=limit)
    assert (state.value, state.peak) == (D(10), D(160000))

    # Only the snapshots after the last one folded are read: 96,000 + 40,000 = 136,000, 15 %.
    snap(alpha, t + timedelta(minutes=4), 96000)
    assert evaluate() == [("tag momentum", "breach", 100)]
    assert evaluate() == []
    assert sorted(Command.objects.filter(kind="pause").values_list("engine__name", flat=True)) == [
        "alpha",
        "beta",
    ]
    state.refresh_from_db()
    assert (state.value, state.peak, state.level) == (D(15), D(160000), "breached")

    # gamma joins the tag: the combined curve is folded again from the first snapshot.
    Engine.objects.filter(pk=gamma.pk).update(strategy_tags=["momentum"])
    evaluate()
    state.refresh_from_db()
    # Peak 150,000 + 900,000 = 1,050,000 then 1,060,000; now 96,000 + 40,000 + 100,000.
    assert state.peak == D(1060000) and state.engine_ids == sorted([alpha.pk, beta.pk, gamma.pk])
    assert float(state.value) == pytest.approx((1060000 - 236000) / 1060000 * 100)


# --- portfolio daily loss, alerts -------------------------------------------------------------


def set_day(engine: Engine, *, start: str | None, pnl: str) -> None:
    Engine.objects.filter(pk=engine.pk).update(
        session_start_equity=D(start) if start else None, day_pnl=D(pnl)
    )


def test_the_fleets_daily_loss_warns_breaches_and_clears_with_one_alert(
    evaluate, make_engine, risk_manager
):
    alpha, beta, gamma = (make_engine(n)[0] for n in ("alpha", "beta", "gamma"))
    set_day(alpha, start="100000", pnl="-3000")
    set_day(beta, start="50000", pnl="500")
    set_day(gamma, start=None, pnl="-90000")  # no session start: not counted
    limit = save(risk_manager, kind="portfolio_daily_loss_pct", threshold=D(2))

    # (3,000 - 500) / 150,000 = 1.667 %: 83 % of 2 %.
    assert evaluate() == [("fleet", "warning", 75)]
    state = PortfolioLimitState.objects.get(limit=limit)
    assert float(state.value) == pytest.approx(2500 / 150000 * 100, abs=1e-6)

    set_day(alpha, start="100000", pnl="-4000")  # 3,500 / 150,000 = 2.333 %
    assert evaluate() == [("fleet", "breach", 100)]
    assert not Command.objects.exists()  # alert only
    alert = Alert.objects.get(source=f"limit#{limit.pk}/p{state.pk}")
    assert alert.engine is None and alert.severity == "critical" and alert.state == "firing"

    set_day(alpha, start="100000", pnl="0")
    assert evaluate() == [("fleet", "cleared", 0)]
    alert.refresh_from_db()
    assert alert.state == "resolved" and Alert.objects.count() == 1


def test_switching_a_portfolio_limit_off_resolves_its_alerts(
    evaluate, make_engine, risk_manager, django_capture_on_commit_callbacks
):
    alpha = make_engine("alpha")[0]
    set_day(alpha, start="100000", pnl="-5000")
    limit = save(risk_manager, kind="portfolio_daily_loss_pct", threshold=D(2))
    evaluate()
    alert = Alert.objects.get()
    limit.enabled = False
    with django_capture_on_commit_callbacks(execute=True):
        services.limit_save(limit=limit, reason="reviewed", actor=risk_manager)
    alert.refresh_from_db()
    assert alert.state == "resolved" and "disabled by rita-risk" in alert.summary
    assert PortfolioLimitState.objects.get().level == "ok"
    assert evaluate() == []


# --- validation, rights, the schedule, the page -----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"kind": "correlation", "threshold": D("1.5")}, "threshold", "at most 1"),
        ({"kind": "var_95_pct", "threshold": D(150)}, "threshold", "at most 100"),
        (
            {"kind": "portfolio_drawdown_pct", "scope": "symbol", "scope_value": "AAPL"},
            "scope",
            "A symbol scope applies to pre-trade limits",
        ),
        (
            {"kind": "portfolio_daily_loss_pct", "scope": "engine", "scope_value": "alpha"},
            "scope",
            "takes the scope global, tag",
        ),
        (
            {"kind": "correlation", "scope": "sector", "scope_value": "tech"},
            "scope",
            "A sector scope applies to pre-trade limits",
        ),
        ({"kind": "correlation", "window_days": 5}, "window_days", "10 to 1000 days"),
        ({"kind": "var_99_pct", "window_days": 5000}, "window_days", "10 to 1000 days"),
        ({"kind": "max_daily_loss_pct", "window_days": 60}, "window_days", "Only correlation"),
    ],
)
def test_bad_portfolio_limits_are_refused_naming_the_field(
    make_engine, risk_manager, fields, field, message
):
    make_engine("alpha")
    limit = RiskLimit(**{"threshold": D("0.5"), **fields})
    with pytest.raises(ValidationError) as refused:
        services.limit_save(limit=limit, reason="desk policy", actor=risk_manager)
    assert message in " ".join(refused.value.message_dict[field])
    assert not RiskLimit.objects.filter(kind=fields["kind"]).exists()


def test_only_risk_managers_add_a_portfolio_limit_in_the_admin(operator, viewer, risk_manager):
    form = {
        "kind": "correlation",
        "scope": "global",
        "scope_value": "",
        "threshold": "0.7",
        "warning_levels": "80",
        "action": "pause",
        "reduce_to_pct": "",
        "window_days": "90",
        "enabled": "on",
        "description": "",
        "change_reason": "desk policy",
        "changes-TOTAL_FORMS": "0",
        "changes-INITIAL_FORMS": "0",
    }
    for user in (operator, viewer):
        client = Client()
        client.force_login(user)
        response = client.post("/admin/risk/risklimit/add/", form)
        assert response.status_code == 302 and "/login/" in response["Location"]
    assert not RiskLimit.objects.filter(kind="correlation").exists()

    client = Client()
    client.force_login(risk_manager)
    assert client.post("/admin/risk/risklimit/add/", form).status_code == 302
    limit = RiskLimit.objects.get(kind="correlation")
    assert limit.window_days == 90
    assert RiskLimitChange.objects.get(limit=limit).changes["window_days"] == [None, 90]


def test_the_portfolio_limits_run_every_minute_and_the_page_shows_each_subject(
    evaluate, make_engine, risk_manager, viewer
):
    spec = next(s for s in PERIODIC_TASKS.values() if s["task"] == "risk.tasks.portfolio_limits")
    assert spec["schedule"] == 60.0

    alpha = make_engine("alpha", strategy_tags=["momentum"])[0]
    set_day(alpha, start="100000", pnl="-1600")
    save(
        risk_manager,
        kind="portfolio_daily_loss_pct",
        scope="tag",
        scope_value="momentum",
        threshold=D(2),
    )
    assert portfolio_limits() == 1  # the warning at 75 %

    client = Client()
    client.force_login(viewer)
    page = client.get("/risk/").content.decode()
    assert '<span class="util-name">tag momentum</span>' in page
    assert 'class="util-fill util-amber" style="width: 80%"' in page
    assert "tag momentum: Portfolio daily loss" in page


def test_two_workers_moving_the_same_state_act_once(make_engine, risk_manager):
    alpha = make_engine("alpha")[0]
    set_day(alpha, start="100000", pnl="-5000")
    limit = save(risk_manager, kind="portfolio_daily_loss_pct", threshold=D(2), action="pause")
    subject = portfolio.subjects(limit, portfolio.members(limit))[0]
    measure = portfolio.daily_loss(subject)
    assert measure is not None and measure.value == D(5)
    state = portfolio._state(limit, subject, {})
    # Both read the state before either moved it.
    first, second = (PortfolioLimitState.objects.get(pk=state.pk) for _ in range(2))

    raised = portfolio._move(limit, first, measure) + portfolio._move(limit, second, measure)

    assert [e.kind for e in raised] == ["breach"]
    assert Command.objects.filter(kind="pause", engine=alpha).count() == 1
