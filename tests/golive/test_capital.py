"""The capital ramp: an engine's share of its target capital follows its stage and steps up on
schedule while its gates still pass; its ceiling reaches it in the welcome and in every
set_limits (over a real socket), and the server checks it after trades as every other limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.test import Client
from django.utils import timezone

from alerts.models import Notification, NotificationChannel
from controlplane import stages
from controlplane.config.env import env_ramp
from controlplane.gateway import session
from controlplane.models import (
    AuditEvent,
    Command,
    Engine,
    Instrument,
    MetricSample,
    Position,
    StageChange,
)
from engine_sdk import protocol as p
from golive import capital, gates
from golive.capital import ramp_engine_ids
from golive.models import KillDrill, PromotionCriterion
from golive.tasks import capital_ramp_engine
from risk import evaluation
from risk import services as risk_services
from risk.models import POST_TRADE, LimitKind, RiskEvent, RiskLimit
from risk.selectors import limits_revision
from tests.gateway.test_engine_socket import hello_frame, open_socket
from tests.gateway.test_hub import next_command


def ramp_every_engine() -> int:
    """The hourly ramp's per-engine tasks, run here one after another as a worker would."""
    return sum(capital_ramp_engine(engine_id) for engine_id in ramp_engine_ids())


@pytest.fixture(autouse=True)
def fresh_cache():
    evaluation.forget_cached_limits()
    yield
    evaluation.forget_cached_limits()


# --- the share follows the stage ------------------------------------------------------------------


@pytest.mark.django_db
def test_the_share_follows_the_stage_and_is_kept_in_the_history(make_engine):
    engine, _ = make_engine("alpha", stage="shadow")
    assert engine.capital_pct is None
    stages.stage_set(engine=engine, to_stage="small_capital", reason="promoted")
    engine.refresh_from_db()
    assert engine.capital_pct == 25
    assert StageChange.objects.filter(engine=engine).latest("pk").capital_pct == 25
    stages.stage_set(engine=engine, to_stage="full", reason="promoted")
    engine.refresh_from_db()
    assert engine.capital_pct == 100
    stages.stage_set(engine=engine, to_stage="paper", reason="back to paper")
    engine.refresh_from_db()
    assert engine.capital_pct is None and engine.capital_ceiling is None
    audit = AuditEvent.objects.filter(action="engine_stage").latest("pk")
    assert audit.data["capital_pct_from"] == 100 and audit.data["capital_pct_to"] is None


@pytest.mark.django_db
def test_the_ceiling_is_the_share_of_the_target_at_real_money_stages(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    Engine.objects.filter(pk=engine.pk).update(target_capital=Decimal("200000"))
    engine.refresh_from_db()
    assert engine.capital_ceiling == Decimal("50000.00")


@pytest.mark.django_db
def test_a_ramp_step_must_be_a_higher_step_within_small_capital(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    with pytest.raises(ValidationError, match="not a ramp step"):
        stages.stage_set(engine=engine, to_stage="small_capital", reason="x", capital_pct=30)
    with pytest.raises(ValidationError, match="at 25 % already"):
        stages.stage_set(engine=engine, to_stage="small_capital", reason="x", capital_pct=25)
    paper, _ = make_engine("beta")
    with pytest.raises(ValidationError, match="within small capital"):
        stages.stage_set(engine=paper, to_stage="small_capital", reason="x", capital_pct=50)
    assert StageChange.objects.filter(engine=engine).count() == 2  # created, placed


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("25,fifty,100", "'fifty' is not a whole number"),
        ("0,50,100", "between 1 and 100"),
        ("50,25,100", "must rise"),
        ("25,50", "the last step is 100"),
        ("25,50,150", "between 1 and 100"),
    ],
)
def test_bad_ramp_settings_stop_the_start_with_a_clear_error(monkeypatch, raw, words):
    monkeypatch.setenv("CAPITAL_RAMP_STEPS", raw)
    with pytest.raises(ImproperlyConfigured, match=words):
        env_ramp("CAPITAL_RAMP_STEPS", (25, 50, 100))


def test_the_ramp_settings_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("CAPITAL_RAMP_STEPS", " 10, 40 ,100")
    assert env_ramp("CAPITAL_RAMP_STEPS", (25, 50, 100)) == (10, 40, 100)
    monkeypatch.delenv("CAPITAL_RAMP_STEPS")
    assert env_ramp("CAPITAL_RAMP_STEPS", (25, 50, 100)) == (25, 50, 100)


# --- the target capital ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0", "above zero"),
        ("-5000", "above zero"),
        ("abc", "is not a number"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
        ("1e30", "at most"),
        ("100.001", "at most 2 decimals"),
        ("", "give the target capital"),
        (["1"], "is a number"),
        (True, "is a number"),
    ],
)
def test_a_bad_target_capital_is_refused_and_nothing_is_stored(
    make_engine, risk_manager, value, words
):
    engine, _ = make_engine("alpha", stage="small_capital")
    with pytest.raises(ValidationError, match=words):
        capital.target_capital_set(engine=engine, value=value, reason="r", actor=risk_manager)
    engine.refresh_from_db()
    assert engine.target_capital is None
    assert not AuditEvent.objects.filter(action="engine_target_capital").exists()


@pytest.mark.django_db
def test_a_target_capital_needs_a_reason(make_engine, risk_manager):
    engine, _ = make_engine("alpha")
    with pytest.raises(ValidationError, match="say why"):
        capital.target_capital_set(engine=engine, value="1000", reason="  ", actor=risk_manager)
    engine.refresh_from_db()
    assert engine.target_capital is None


@pytest.mark.django_db
def test_only_risk_managers_set_a_target_capital_and_a_refusal_is_audited(
    make_engine, operator, viewer
):
    engine, _ = make_engine("alpha")
    for user in (operator, viewer):
        with pytest.raises(capital.CapitalForbidden, match="only risk managers"):
            capital.target_capital_set(engine=engine, value="1000", reason="r", actor=user)
    engine.refresh_from_db()
    assert engine.target_capital is None
    refusals = AuditEvent.objects.filter(action="target_capital_refused", outcome="refused")
    assert refusals.count() == 2


@pytest.mark.django_db
def test_the_go_live_page_sets_the_target_and_refuses_others_with_403(
    make_engine, risk_manager, operator
):
    engine, _ = make_engine("alpha", stage="small_capital")
    url = f"/engines/{engine.name}/go-live/target-capital/"
    client = Client()
    client.force_login(operator)
    assert client.post(url, {"target_capital": "1000", "reason": "r"}).status_code == 403
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert 'id="capital"' in page and "capital-form" not in page

    client.force_login(risk_manager)
    response = client.post(url, {"target_capital": "12,5x", "reason": "r"}, follow=True)
    assert "is not a number" in response.content.decode()
    response = client.post(url, {"target_capital": "400000", "reason": "desk budget"}, follow=True)
    page = response.content.decode()
    assert "Target capital of alpha set to" in page
    assert 'data-capital="share">25 %' in page
    assert 'data-capital="ceiling">100,000.00' in page
    assert 'data-ramp="held"' in page  # a fresh engine passes no pre-flight check
    assert "capital-form" in page
    engine.refresh_from_db()
    assert engine.target_capital == Decimal("400000")
    audit = AuditEvent.objects.get(action="engine_target_capital")
    assert audit.actor == risk_manager.username and audit.reason == "desk budget"
    assert audit.data["to"] == "400000.00" and audit.data["ceiling"] == "100000.00"


# --- pushed to the engine -------------------------------------------------------------------------


@pytest.mark.django_db
def test_limits_push_carries_each_engines_stage_and_ceiling(
    make_engine, risk_manager, django_capture_on_commit_callbacks
):
    small, _ = make_engine("alpha", stage="small_capital")
    paper, _ = make_engine("beta")
    Engine.objects.filter(pk=small.pk).update(target_capital=Decimal(80000), connected=True)
    Engine.objects.filter(pk=paper.pk).update(connected=True)
    assert risk_services.limits_push() == 2
    params = {c.engine.name: c.params for c in Command.objects.filter(kind="set_limits")}
    assert params["alpha"]["stage"] == "small_capital"
    assert params["alpha"]["capital_ceiling"] == "20000.00"
    assert params["beta"]["stage"] == "paper" and params["beta"]["capital_ceiling"] is None
    assert params["alpha"]["limits_version"] == limits_revision()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_the_welcome_carries_the_ceiling_and_changes_reach_the_socket_at_once(
    make_engine, risk_manager
):
    def place() -> tuple[Engine, str]:
        engine, token = make_engine("alpha", stage="small_capital")
        Engine.objects.filter(pk=engine.pk).update(target_capital=Decimal(200000))
        return engine, token

    engine, token = await database_sync_to_async(place)()
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="live"))
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    assert (welcome["stage"], welcome["capital_ceiling"]) == ("small_capital", "50000.00")

    # A change of the target capital.
    await database_sync_to_async(capital.target_capital_set)(
        engine=engine, value="400000", reason="bigger budget", actor=risk_manager
    )
    frame = await next_command(ws)
    assert frame["kind"] == "set_limits"
    assert frame["params"]["stage"] == "small_capital"
    assert frame["params"]["capital_ceiling"] == "100000.00"

    # A step of the ramp.
    await database_sync_to_async(stages.stage_set)(
        engine=engine,
        to_stage="small_capital",
        reason="ramp",
        actor_label=capital.RAMP_ACTOR,
        capital_pct=50,
    )
    frame = await next_command(ws)
    assert frame["params"]["capital_ceiling"] == "200000.00"

    # A promotion to full production.
    await database_sync_to_async(stages.stage_set)(
        engine=engine, to_stage="full", reason="promoted"
    )
    frame = await next_command(ws)
    assert (frame["params"]["stage"], frame["params"]["capital_ceiling"]) == ("full", "400000.00")
    assert isinstance(frame["params"]["limits"], list)
    await ws.disconnect()


@pytest.mark.django_db
def test_a_paper_engine_is_welcomed_with_no_ceiling(make_engine):
    engine, _ = make_engine("alpha")
    Engine.objects.filter(pk=engine.pk).update(target_capital=Decimal(200000))
    frame = p.Hello(
        protocol=1,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="sim",
        account="a",
        trading_state="ACTIVE",
        last_seq=0,
    )
    (welcome,) = session.hello(engine, frame, connection_id=None)
    assert isinstance(welcome, p.Welcome)
    assert welcome.stage == "paper" and welcome.capital_ceiling is None


# --- the ramp -------------------------------------------------------------------------------------


def every_post_trade_kind_configured() -> None:
    for kind in POST_TRADE:
        RiskLimit.objects.get_or_create(
            kind=kind, scope="global", defaults={"threshold": Decimal(100), "action": "alert"}
        )


def ready_for_the_ramp(engine: Engine, *, days_ago: int) -> None:
    """Everything the pre-flight checks ask for, held now; the last capital change days ago."""
    now = timezone.now()
    Engine.objects.filter(pk=engine.pk).update(
        target_capital=Decimal(100000), limits_version=limits_revision(), connected=True
    )
    for seq, (name, value) in enumerate((("quote_age_ms", 100), ("broker_connected", 1)), 1):
        MetricSample.objects.create(engine=engine, ts=now, name=name, value=value, seq=seq)
    channel = NotificationChannel(name="desk-mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    Notification.objects.create(
        key="test-ramp",
        channel=channel,
        event=Notification.Event.TEST,
        subject="TEST",
        body="",
        status=Notification.Status.SENT,
        sent_at=now,
    )
    KillDrill.objects.create(
        engine=engine,
        kind="halt_path",
        stage="small_capital",
        reason="drill",
        status="passed",
        done_at=now,
        ack_ms=3,
        done_ms=40,
    )
    beat = p.Heartbeat(
        ts=datetime.now(UTC), trading_state="ACTIVE", last_seq=0, limits_version=None
    )
    assert session.heartbeat(engine.pk, beat) == []
    StageChange.objects.filter(engine=engine).update(at=now - timedelta(days=days_ago))
    engine.refresh_from_db()


@pytest.mark.django_db
def test_the_ramp_steps_25_to_50_after_the_interval_and_tells_the_engine(
    make_engine, django_capture_on_commit_callbacks
):
    engine, _ = make_engine("alpha", stage="small_capital")
    every_post_trade_kind_configured()
    ready_for_the_ramp(engine, days_ago=8)
    before = gates.report(engine, timezone.now())
    assert [c.key for c in before.failed] == ["min_days"]  # time alone: it does not hold a step

    with django_capture_on_commit_callbacks(execute=True):
        assert ramp_every_engine() == 1

    engine.refresh_from_db()
    assert engine.capital_pct == 50 and engine.capital_ceiling == Decimal("50000.00")
    step = StageChange.objects.filter(engine=engine).latest("pk")
    assert (step.from_stage, step.to_stage, step.capital_pct) == ("small_capital",) * 2 + (50,)
    assert step.actor_label == "capital ramp"
    assert "25 % → 50 % after 7 days" in step.reason
    assert "every pre-flight check passes" in step.reason
    audit = AuditEvent.objects.get(action="engine_capital_step")
    assert audit.data["capital_pct_from"] == 25 and audit.data["capital_pct_to"] == 50
    (pushed,) = Command.objects.filter(engine=engine, kind="set_limits")
    assert pushed.params["capital_ceiling"] == "50000.00"
    assert pushed.params["stage"] == "small_capital"
    # The stage's period still runs from its entry: the step begins no stage.
    days = next(c for c in gates.report(engine, timezone.now()).criteria if c.key == "min_days")
    assert days.value == 8

    # Stepped just now: the next step waits its 7 days.
    with django_capture_on_commit_callbacks(execute=True):
        assert ramp_every_engine() == 0
    status = capital.ramp_status(engine, timezone.now())
    assert status is not None and status.next_pct == 100 and not status.held
    assert status.due_at is not None and status.due_at > timezone.now() + timedelta(days=6)


@pytest.mark.django_db
def test_the_ramp_waits_for_its_interval(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    every_post_trade_kind_configured()
    ready_for_the_ramp(engine, days_ago=6)
    assert ramp_every_engine() == 0
    engine.refresh_from_db()
    assert engine.capital_pct == 25


@pytest.mark.django_db
def test_a_failing_criterion_holds_the_step_and_the_page_says_which(
    make_engine, risk_manager, caplog
):
    engine, _ = make_engine("alpha", stage="small_capital")
    # No post-trade limit of most kinds: the gate's criterion fails.
    ready_for_the_ramp(engine, days_ago=8)
    assert ramp_every_engine() == 0
    engine.refresh_from_db()
    assert engine.capital_pct == 25
    assert not StageChange.objects.filter(engine=engine, capital_pct=50).exists()
    held = [r.getMessage() for r in caplog.records if "held at 25 %" in r.getMessage()]
    assert held and "Post-trade limit kinds not configured fails" in held[0]

    client = Client()
    client.force_login(risk_manager)
    page = client.get(f"/engines/{engine.name}/go-live/").content.decode()
    assert 'data-ramp="held"' in page
    assert "held: criterion Post-trade limit kinds not configured fails" in page


@pytest.mark.django_db
def test_a_failing_pre_flight_check_holds_the_step(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    every_post_trade_kind_configured()
    ready_for_the_ramp(engine, days_ago=8)
    Engine.objects.filter(pk=engine.pk).update(limits_version=0)  # old limits
    status = capital.ramp_status(Engine.objects.get(pk=engine.pk), timezone.now())
    assert status is not None and status.held
    assert any("Risk system active" in b for b in status.blocking)
    assert ramp_every_engine() == 0


@pytest.mark.django_db
def test_a_disabled_criterion_and_the_last_step_end_the_ramp(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    PromotionCriterion.objects.filter(key="post_trade_limit_kinds_missing").update(enabled=False)
    ready_for_the_ramp(engine, days_ago=8)
    assert ramp_every_engine() == 1
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=8))
    assert ramp_every_engine() == 1
    engine.refresh_from_db()
    assert engine.capital_pct == 100
    status = capital.ramp_status(engine, timezone.now())
    assert status is not None and status.next_pct is None
    assert ramp_every_engine() == 0


# --- the post-trade check -------------------------------------------------------------------------


@pytest.mark.django_db
def test_gross_exposure_over_the_ceiling_warns_then_breaches_and_pauses(make_engine):
    engine, _ = make_engine("alpha", stage="small_capital")
    Engine.objects.filter(pk=engine.pk).update(target_capital=Decimal(100000))  # ceiling 25,000
    limit, _ = RiskLimit.objects.get_or_create(
        kind=LimitKind.CAPITAL_CEILING_PCT,
        scope="global",
        defaults={"threshold": Decimal(100), "warning_levels": [80, 90], "action": "pause"},
    )
    instrument = Instrument.objects.create(symbol="AAPL", sector="tech")
    position = Position.objects.create(
        engine=engine,
        instrument=instrument,
        quantity=Decimal(210),
        avg_price=Decimal(100),
        last_price=Decimal(100),
    )
    (warning,) = evaluation.evaluate_engine(engine.pk)
    assert (warning.kind, warning.level) == ("warning", 80)  # 21,000 of 25,000
    assert "Gross exposure (% of the engine's capital ceiling)" in warning.message

    Position.objects.filter(pk=position.pk).update(quantity=Decimal(-260))  # short counts too
    (breach,) = evaluation.evaluate_engine(engine.pk)
    assert breach.kind == "breach" and float(breach.value) == pytest.approx(104.0)
    assert "gross of 25,000.00" in breach.message
    pause = Command.objects.get(kind="pause", engine=engine)
    assert pause.issued_by_label == f"limit #{limit.pk} capital_ceiling_pct"
    assert breach.command == pause


@pytest.mark.django_db
def test_an_engine_without_a_ceiling_is_not_measured(make_engine):
    engine, _ = make_engine("alpha")  # paper: no ceiling, whatever its target
    Engine.objects.filter(pk=engine.pk).update(target_capital=Decimal(1000))
    RiskLimit.objects.get_or_create(
        kind=LimitKind.CAPITAL_CEILING_PCT, scope="global", defaults={"threshold": Decimal(100)}
    )
    instrument = Instrument.objects.create(symbol="AAPL", sector="tech")
    Position.objects.create(
        engine=engine,
        instrument=instrument,
        quantity=Decimal(1000),
        avg_price=Decimal(100),
        last_price=Decimal(100),
    )
    assert evaluation.evaluate_engine(engine.pk) == []
    assert not RiskEvent.objects.exists()


@pytest.mark.django_db
def test_the_default_capital_limit_ships_with_the_migration():
    limit = RiskLimit.objects.get(kind="capital_ceiling_pct", scope="global")
    assert (limit.threshold, limit.warning_levels, limit.action) == (
        Decimal(100),
        [80, 90],
        "pause",
    )
    assert limit.changes.get().reason.startswith("The default capital ceiling limit")
