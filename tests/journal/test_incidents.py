"""Incidents: a kill opens one with its snapshot; the checklist ticks itself from the data and by
named people; the lift links to it; it closes only with its post-mortem; every change audited."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from alerts.events import alert_changed
from alerts.models import Alert, Severity
from controlplane import events
from controlplane.commands import resume
from controlplane.gateway.session import STAGE_ACTOR
from controlplane.models import AuditEvent, Engine
from journal import incidents
from journal.incidents import IncidentConflict, IncidentForbidden
from journal.models import Incident, Step
from tests.journal.conftest import answer_kill, book, flattened, fx_book

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(make_engine: Any) -> Engine:
    engine, _ = make_engine("alpha", mode="paper")
    return engine


def _steps(incident: Incident) -> dict[str, Any]:
    return {s.key: s for s in incident.steps.all()}


def _audit(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("ts"))


def test_a_persons_kill_opens_an_incident_with_the_engines_snapshot(alpha, risk_manager, kill):
    book(alpha)
    batch = kill(alpha, actor=risk_manager)

    incident = Incident.objects.get()
    assert incident.state == "open"
    assert incident.trigger == Incident.Trigger.PERSON
    assert incident.opened_by_label == "rita-risk"
    assert incident.kill_batch_id == batch.pk
    assert list(incident.engines.values_list("name", flat=True)) == ["alpha"]
    assert set(incident.commands.all()) == set(batch.commands.all())
    [engine] = incident.snapshot["engines"]
    assert engine["name"] == "alpha"
    assert engine["desired_state"] == "HALTED"
    assert engine["equity"] == "100500.00000000"
    assert [(p["symbol"], p["quantity"]) for p in engine["positions"]] == [("AAPL", "100.00000000")]
    assert [(o["client_order_id"], o["status"]) for o in engine["orders"]] == [
        ("AAPL-rest", "accepted")
    ]
    assert [s.key for s in incident.steps.all()] == list(Step.values)
    [opened] = _audit("incident_open")
    assert opened.actor == "rita-risk"
    assert opened.data["trigger"] == "person" and opened.data["engines"] == ["alpha"]


@pytest.mark.parametrize(
    ("label", "trigger"),
    [
        ("limit #3 max_daily_loss", "limit"),
        ("alert rule Daily loss", "alert_rule"),
        (STAGE_ACTOR, "red_line"),
        # As golive.redlines labels the kill of a red line whose action is "kill".
        ("red line #4 max_drawdown", "red_line"),
    ],
)
def test_the_control_planes_kill_says_what_latched_it(alpha, kill, label, trigger):
    kill(alpha, label=label)

    incident = Incident.objects.get()
    assert incident.trigger == trigger
    assert incident.opened_by_label == label


def test_a_second_kill_of_an_engine_in_an_open_incident_joins_it(alpha, risk_manager, kill):
    first = kill(alpha, actor=risk_manager)
    second = kill(alpha, label="limit #3 max_daily_loss")

    incident = Incident.objects.get()
    linked = set(incident.commands.values_list("batch_id", flat=True))
    assert linked == {first.pk, second.pk}


def test_an_alert_before_the_kill_and_one_after_are_linked(alpha, kill):
    before = Alert.objects.create(
        engine=alpha, source="test", severity=Severity.CRITICAL, summary="loss", state="firing"
    )
    kill(alpha, label="alert rule Daily loss")
    after = Alert.objects.create(
        engine=alpha, source="test2", severity=Severity.WARNING, summary="latency", state="firing"
    )
    events.announce(alert_changed, alert_id=after.pk)

    incident = Incident.objects.get()
    assert set(incident.alerts.all()) == {before, after}


def test_the_checklist_ticks_itself_as_the_engine_is_flattened(alpha, risk_manager, kill):
    seq = book(alpha)
    batch = kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    assert not any(s.done_at for s in incident.steps.all())

    flattened(alpha, seq=seq)
    answer_kill(alpha, batch)

    steps = _steps(incident)
    assert steps[Step.KILL].done_at and steps[Step.KILL].by_data
    assert steps[Step.KILL].note == "HALTED: alpha"
    assert steps[Step.CANCEL_ORDERS].done_at and steps[Step.CANCEL_ORDERS].by_data
    assert steps[Step.DECIDE].note == "flat: no open position on alpha"
    for key in (Step.ASSESS, Step.FIX, Step.TEST_ON_PAPER, Step.RESTART_SMALL, Step.MONITOR):
        assert steps[key].done_at is None, key
    ticked = {e.data["step"] for e in _audit("incident_step_done")}
    assert ticked == {"kill", "cancel_orders", "decide"}


def test_working_orders_keep_their_step_open(alpha, risk_manager, kill):
    book(alpha)
    batch = kill(alpha, actor=risk_manager)
    answer_kill(alpha, batch)

    steps = _steps(Incident.objects.get())
    assert steps[Step.KILL].done_at is not None
    assert steps[Step.CANCEL_ORDERS].done_at is None
    assert steps[Step.DECIDE].done_at is None


def test_a_named_person_ticks_the_steps_the_product_cannot_verify(
    alpha, risk_manager, operator, viewer, kill
):
    book(alpha)
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()

    step = incidents.incident_step_tick(
        incident=incident, key="assess", actor=operator, note="1 position, -500 on the day"
    )
    assert (step.done_by_label, step.by_data, step.note) == (
        "otto-operator",
        False,
        "1 position, -500 on the day",
    )
    assert step.done_at is not None
    decided = incidents.incident_step_tick(
        incident=incident, key="decide", actor=operator, decision="hold", note="hedged"
    )
    assert decided.note == "hold: hedged"
    with pytest.raises(IncidentForbidden):
        incidents.incident_step_tick(incident=incident, key="fix", actor=viewer)
    with pytest.raises(IncidentConflict, match="ticked from the data"):
        incidents.incident_step_tick(incident=incident, key="cancel_orders", actor=operator)
    with pytest.raises(IncidentConflict, match="already ticked by otto-operator"):
        incidents.incident_step_tick(incident=incident, key="assess", actor=risk_manager)
    with pytest.raises(ValidationError) as error:
        incidents.incident_step_tick(incident=incident, key="nonsense", actor=operator)
    assert "step" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        incidents.incident_step_tick(incident=incident, key="fix", actor=operator, note="a\x00b")
    assert error.value.message_dict == {"note": ["contains a NUL byte"]}
    assert [e.data["step"] for e in _audit("incident_step_done")] == ["assess", "decide"]


def test_the_decide_step_by_hand_needs_flatten_or_hold(alpha, risk_manager, operator, kill):
    book(alpha)
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    with pytest.raises(ValidationError) as error:
        incidents.incident_step_tick(incident=incident, key="decide", actor=operator)
    assert "decision" in error.value.message_dict


def test_lifting_the_kill_links_to_the_open_incident_and_the_engine_back_on_paper_ticks(
    alpha, risk_manager, second_risk_manager, operator, kill, django_capture_on_commit_callbacks
):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    request = resume.resume_request_create(engine=alpha, reason="fixed", actor=operator)
    with django_capture_on_commit_callbacks(execute=True):
        command = resume.resume_request_approve(resume_request=request, actor=second_risk_manager)

    incident.refresh_from_db()
    assert incident.lifted_at is not None
    assert incident.commands.filter(pk=command.pk).exists()
    [lifted] = _audit("incident_kill_lifted")
    assert lifted.target_id == str(incident.pk)
    assert lifted.actor == "rex-risk"
    assert lifted.data["requested_by"] == "otto-operator"
    steps = _steps(incident)
    assert steps[Step.TEST_ON_PAPER].done_at is not None
    assert steps[Step.TEST_ON_PAPER].note == "back on paper and trading: alpha"
    assert steps[Step.KILL].done_at is not None


def test_the_24_hours_of_monitoring_count_from_the_restart(alpha, risk_manager, operator, kill):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    incidents.incident_step_tick(incident=incident, key="restart_small", actor=operator)
    restarted = _steps(incident)[Step.RESTART_SMALL].done_at

    assert "monitor" not in incidents.incident_steps_evaluate(
        incident, restarted + timedelta(hours=23)
    )
    assert "monitor" in incidents.incident_steps_evaluate(incident, restarted + timedelta(hours=24))


def _postmortem(incident: Incident, actor: Any, **overrides: Any) -> Any:
    fields = {
        "cause": "execution",
        "what_went_wrong": "The broker's cancel acknowledgements stalled for 40 s.",
        "failed_assumptions": "That a cancel is acknowledged within 2 s.",
        "improvements": "Alert on cancel latency; kill when it passes 5 s.",
        "follow_ups": [{"item": "Cancel-latency alert rule", "owner": "rita-risk"}],
    }
    return incidents.postmortem_write(incident=incident, actor=actor, **fields | overrides)


def test_an_incident_closes_only_with_its_post_mortem(alpha, risk_manager, operator, kill):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()

    with pytest.raises(IncidentConflict, match="only with its post-mortem"):
        incidents.incident_close(incident=incident, actor=risk_manager)
    with pytest.raises(IncidentForbidden):
        _postmortem(incident, operator)
    with pytest.raises(IncidentForbidden):
        incidents.incident_close(incident=incident, actor=operator)
    _postmortem(incident, risk_manager)
    closed = incidents.incident_close(incident=incident, actor=risk_manager)

    assert closed.state == "closed" and closed.closed_by_label == "rita-risk"
    assert closed.postmortem.follow_ups.get().owner == "rita-risk"
    [written] = _audit("incident_postmortem_write")
    assert written.data["cause"] == "execution"
    [audit_close] = _audit("incident_close")
    assert "fix" in audit_close.data["open_steps"]
    with pytest.raises(IncidentConflict, match="closed"):
        incidents.incident_step_tick(incident=closed, key="fix", actor=operator)
    with pytest.raises(IncidentConflict, match="closed"):
        _postmortem(closed, risk_manager)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cause": "luck"}, "cause"),
        ({"cause": 3}, "cause"),
        ({"what_went_wrong": ""}, "what_went_wrong"),
        ({"failed_assumptions": "x\x00"}, "failed_assumptions"),
        ({"improvements": "x" * 10_001}, "improvements"),
        ({"improvements": ["a list"]}, "improvements"),
        ({"follow_ups": []}, "follow_ups"),
        ({"follow_ups": "fix it"}, "follow_ups"),
        ({"follow_ups": [{"item": "alert rule", "owner": ""}]}, "follow_ups[0].owner"),
        ({"follow_ups": [{"item": "alert rule", "owner": "a\nb"}]}, "follow_ups[0].owner"),
        ({"follow_ups": ["alert rule"]}, "follow_ups[0]"),
    ],
)
def test_a_bad_post_mortem_is_refused_by_field_and_nothing_is_stored(
    alpha, risk_manager, kill, overrides, field
):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    with pytest.raises(ValidationError) as error:
        _postmortem(incident, risk_manager, **overrides)
    assert field in error.value.message_dict
    incident.refresh_from_db()
    assert not hasattr(incident, "postmortem")
    assert not _audit("incident_postmortem_write")


def test_an_incident_is_opened_by_hand_from_an_alert(alpha, operator, viewer):
    alert = Alert.objects.create(
        engine=alpha, source="test", severity=Severity.WARNING, summary="slow fills"
    )
    incident = incidents.incident_open_by_hand(
        actor=operator, title="Slow fills", reason="fills 3 s late", alert_id=alert.pk
    )
    assert incident.trigger == "by_hand" and incident.source_alert == alert
    assert list(incident.engines.all()) == [alpha]
    assert list(incident.alerts.all()) == [alert]
    assert incident.snapshot["engines"][0]["desired_state"] == "ACTIVE"
    with pytest.raises(IncidentForbidden):
        incidents.incident_open_by_hand(actor=viewer, title="x", reason="y", engine_names=["alpha"])


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"title": "", "engine_names": ["alpha"]}, "title"),
        ({"title": "a\x00", "engine_names": ["alpha"]}, "title"),
        ({"title": "x" * 201, "engine_names": ["alpha"]}, "title"),
        ({"title": "two\nlines", "engine_names": ["alpha"]}, "title"),
        ({"title": 5, "engine_names": ["alpha"]}, "title"),
        ({"title": "t", "engine_names": "alpha"}, "engines"),
        ({"title": "t", "engine_names": ["nobody"]}, "engines"),
        ({"title": "t", "engine_names": []}, "engines"),
        ({"title": "t", "alert_id": 10**30}, "alert"),
        ({"title": "t", "alert_id": 999999}, "alert"),
    ],
)
def test_a_bad_opening_by_hand_is_refused_by_field(alpha, operator, fields, field):
    with pytest.raises(ValidationError) as error:
        incidents.incident_open_by_hand(actor=operator, reason="why", **fields)
    assert field in error.value.message_dict
    assert not Incident.objects.exists()


def test_an_incident_opened_by_hand_ticks_the_kill_when_a_kill_follows(
    alpha, operator, risk_manager, kill
):
    incident = incidents.incident_open_by_hand(
        actor=operator, title="Odd fills", reason="look", engine_names=["alpha"]
    )
    batch = kill(alpha, actor=risk_manager)
    answer_kill(alpha, batch)

    assert Incident.objects.count() == 1
    assert _steps(incident)[Step.KILL].done_at is not None


def test_the_periodic_sweep_evaluates_every_open_incident(alpha, risk_manager, kill):
    kill(alpha, actor=risk_manager)
    Engine.objects.filter(pk=alpha.pk).update(reported_state="HALTED")
    assert incidents.incidents_evaluate() >= 1
    assert _steps(Incident.objects.get())[Step.KILL].done_at is not None
    assert timezone.now()


def test_the_snapshot_is_the_book_as_the_kill_found_it_not_as_its_answers_left_it(alpha):
    # The engine's cancel and flatten can be stored before the incident reads the tables: what
    # it stored after the kill's seq is taken back out.
    seq = book(alpha)
    at_kill = seq - 1  # the last event stored when the kill was written
    killed_at = timezone.now()
    flattened(alpha, seq=seq)
    alpha.refresh_from_db()
    assert alpha.last_seq == seq + 2

    now = incidents.snapshot_take([alpha.pk], timezone.now())["engines"][0]
    assert now["positions"] == [] and now["orders"] == []

    [then] = incidents.snapshot_take([alpha.pk], killed_at, {alpha.pk: at_kill})["engines"]
    assert [(p["symbol"], p["quantity"]) for p in then["positions"]] == [("AAPL", "100.00000000")]
    assert [(o["client_order_id"], o["status"], float(o["filled"])) for o in then["orders"]] == [
        ("AAPL-rest", "working", 0.0)
    ]
    assert then["equity"] == "100500.00000000"


def test_the_snapshot_adds_the_pnl_up_in_the_account_currency_at_the_engines_rates(alpha):
    fx_book(alpha, {"EUR": "1.1", "JPY": "0.0067"})
    [engine] = incidents.snapshot_take([alpha.pk], timezone.now())["engines"]
    # The flat euro position's realised P&L counts: 9 euros at 1.1.
    assert Decimal(engine["realized_pnl"]) == Decimal("9.9")
    # 1000 yen at 0.0067, and 2 dollars.
    assert Decimal(engine["unrealized_pnl"]) == Decimal("8.7")
    assert (engine["currency"], engine["pnl_unconverted"]) == ("USD", [])
    currencies = {p["symbol"]: p["currency"] for p in engine["positions"]}
    assert currencies == {"7203.T": "JPY", "AAPL": "USD"}


def test_a_snapshot_total_without_a_rate_is_unknown_never_counted_at_one(alpha):
    fx_book(alpha, {"EUR": "1.1"})
    [engine] = incidents.snapshot_take([alpha.pk], timezone.now())["engines"]
    assert Decimal(engine["realized_pnl"]) == Decimal("9.9")
    assert engine["unrealized_pnl"] is None and engine["pnl_unconverted"] == ["JPY"]
