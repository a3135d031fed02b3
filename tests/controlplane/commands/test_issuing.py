"""Issuing commands: guards, batches, desired state, audit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane import selectors
from controlplane.commands import errors, issuing
from controlplane.models import AuditEvent, Command, CommandBatch, Engine
from tests.controlplane.commands.factories import kill

pytestmark = pytest.mark.django_db


def test_a_kill_of_the_fleet_is_one_batch_with_one_command_per_engine(fleet, risk_manager):
    batch = kill(risk_manager, ip_address="10.0.0.7")

    commands = list(batch.commands.order_by("engine__name"))
    assert [c.engine.name for c in commands] == ["alpha", "beta", "gamma"]
    assert {c.status for c in commands} == {Command.Status.PENDING}
    assert {c.params["flatten"] for c in commands} == {True}
    assert all(c.expires_at is None for c in commands)
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"HALTED"}
    event = AuditEvent.objects.get(action="command_kill")
    assert (event.actor, event.outcome, event.ip_address) == ("rita-risk", "ok", "10.0.0.7")
    assert event.reason == "desk says stop"
    assert event.data["engines"] == ["alpha", "beta", "gamma"]


def test_each_command_records_whether_its_engine_was_connected_when_issued(fleet, risk_manager):
    Engine.objects.filter(name="beta").update(connected=True)

    batch, returned = issuing.command_batch_issue(
        kind="pause", selector="all", reason="desk says wait", actor=risk_manager
    )

    stored = dict(batch.commands.values_list("engine__name", "engine_connected"))
    assert stored == {"alpha": False, "beta": True, "gamma": False}
    assert {c.engine.name: c.engine_connected for c in returned} == stored


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("all", {"alpha", "beta", "gamma"}),
        ("live", {"alpha", "beta"}),
        ("tag:momentum", {"alpha", "gamma"}),
        ("engine:beta", {"beta"}),
    ],
)
def test_a_selector_names_the_engines_of_the_batch(fleet, operator, selector, names):
    batch = issuing.command_issue(kind="pause", selector=selector, reason="news", actor=operator)

    assert {c.engine.name for c in batch.commands.all()} == names


def test_a_selector_that_matches_nothing_is_refused_and_issues_nothing(fleet, operator):
    with pytest.raises(errors.CommandInvalid, match="no active engine matches 'tag:nope'"):
        issuing.command_issue(kind="pause", selector="tag:nope", reason="x", actor=operator)
    with pytest.raises(errors.CommandInvalid, match="unknown selector 'everything'"):
        issuing.command_issue(kind="pause", selector="everything", reason="x", actor=operator)

    assert not Command.objects.exists() and not CommandBatch.objects.exists()


@pytest.mark.parametrize("persona", ["viewer", "operator", "outsider"])
def test_only_risk_managers_may_kill_and_a_refusal_is_audited(fleet, persona, request):
    user = request.getfixturevalue(persona)

    with pytest.raises(errors.CommandRefused, match="may not kill"):
        kill(user, ip_address="10.0.0.9")

    assert not Command.objects.exists()
    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"ACTIVE"}
    event = AuditEvent.objects.get(action="command_kill")
    assert (event.actor, event.outcome, event.ip_address) == (user.username, "refused", "10.0.0.9")
    assert "issue_kill" in event.data["refusal"]


def test_a_viewer_may_not_pause(fleet, viewer):
    with pytest.raises(errors.CommandRefused, match="vera-viewer may not pause"):
        issuing.command_issue(kind="pause", selector="all", reason="x", actor=viewer)


def test_an_operator_may_flatten_named_symbols_but_not_everything(fleet, operator):
    batch = issuing.command_issue(
        kind="flatten",
        selector="engine:alpha",
        reason="earnings",
        actor=operator,
        params={"symbols": ["AAPL"]},
    )
    assert batch.commands.get().params == {"symbols": ["AAPL"]}

    with pytest.raises(errors.CommandRefused, match="may not flatten every position"):
        issuing.command_issue(kind="flatten", selector="all", reason="x", actor=operator)


def test_set_limits_is_never_issued_by_a_person(fleet, admin_user):
    with pytest.raises(errors.CommandRefused, match="edit the limits in the admin"):
        issuing.command_issue(
            kind="set_limits",
            selector="all",
            reason="x",
            actor=admin_user,
            params={"limits_version": 2, "limits": []},
        )


@pytest.mark.parametrize(
    ("kind", "params", "field", "message"),
    [
        ("reduce", {}, "target_pct", "reduce needs target_pct"),
        ("reduce", {"target_pct": 150}, "target_pct", "below 100"),
        ("reduce", {"target_pct": "half"}, "target_pct", "a number"),
        ("pause", {"duration": -5}, "duration", "from 1 to"),
        ("pause", {"cancel_open": "yes"}, "cancel_open", "true or false"),
        ("cancel_all", {"symbols": []}, "symbols", "non-empty list"),
        ("kill", {"flatten": "no"}, "flatten", "true or false"),
        ("resume", {"force": True}, "force", "takes no parameter 'force'"),
        ("explode", {}, "kind", "unknown command 'explode'"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    fleet, risk_manager, kind, params, field, message
):
    with pytest.raises(errors.CommandInvalid) as caught:
        issuing.command_issue(
            kind=kind,
            selector="all",
            reason="x",
            actor=risk_manager,
            params=params,
            confirmation="KILL ALL",  # a kill's, read by no other kind
        )

    assert message in caught.value.message_dict[field][0]
    assert not Command.objects.exists()


def test_a_command_needs_a_reason(fleet, risk_manager):
    with pytest.raises(errors.CommandInvalid, match="without a reason"):
        issuing.command_issue(
            kind="kill", selector="all", reason="  ", actor=risk_manager, confirmation="KILL ALL"
        )


def test_a_kill_never_expires_and_a_pause_may(fleet, risk_manager):
    with pytest.raises(errors.CommandInvalid, match="a kill never expires"):
        kill(risk_manager, expires_in=timedelta(minutes=5))
    # The database holds the line too.
    engine = fleet["alpha"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Command.objects.create(
            engine=engine,
            kind="kill",
            reason="x",
            issued_by_label="x",
            expires_at=timezone.now() + timedelta(minutes=1),
        )

    batch = issuing.command_issue(
        kind="pause",
        selector="engine:alpha",
        reason="x",
        actor=risk_manager,
        expires_in=timedelta(minutes=5),
    )
    assert batch.commands.get().expires_at is not None


def test_a_timed_pause_sets_the_desired_state_until_its_end(fleet, operator):
    before = timezone.now()
    issuing.command_issue(
        kind="pause",
        selector="engine:alpha",
        reason="fomc",
        actor=operator,
        params={"duration": 600, "cancel_open": True},
    )

    alpha = Engine.objects.get(name="alpha")
    assert alpha.desired_state == "PAUSED"
    assert (
        before + timedelta(seconds=599)
        < alpha.desired_until
        < timezone.now() + timedelta(seconds=601)
    )


def test_a_kill_supersedes_undelivered_pauses_but_not_delivered_ones(fleet, operator, risk_manager):
    first = issuing.command_issue(kind="pause", selector="engine:alpha", reason="a", actor=operator)
    second = issuing.command_issue(kind="pause", selector="engine:beta", reason="b", actor=operator)
    Command.objects.filter(batch=second).update(status=Command.Status.DELIVERED)

    kill(risk_manager)

    assert first.commands.get().status == Command.Status.SUPERSEDED
    assert "superseded by kill" in first.commands.get().detail
    assert second.commands.get().status == Command.Status.DELIVERED


def test_a_halted_engine_cannot_be_resumed_directly_even_by_an_admin(
    fleet, risk_manager, admin_user
):
    kill(risk_manager, selector="engine:alpha")

    with pytest.raises(errors.CommandRefused, match="alpha is HALTED by a kill"):
        issuing.command_issue(kind="resume", selector="all", reason="ok", actor=admin_user)

    assert not Command.objects.filter(kind="resume").exists()
    assert Engine.objects.get(name="alpha").desired_state == "HALTED"
    assert AuditEvent.objects.get(action="command_resume").outcome == "refused"


@pytest.mark.parametrize(
    "kind, params",
    [("flatten", {}), ("reduce", {"target_pct": 0}), ("reduce", {"target_pct": 0.0})],
)
def test_flattening_everything_needs_the_flatten_right_whichever_command_spells_it(
    fleet, operator, risk_manager, kind, params
):
    with pytest.raises(errors.CommandRefused, match="otto-operator may not flatten every"):
        issuing.command_issue(
            kind=kind, selector="engine:alpha", reason="x", actor=operator, params=params
        )
    assert not Command.objects.exists()
    assert AuditEvent.objects.get(action=f"command_{kind}").outcome == "refused"

    issuing.command_issue(
        kind=kind, selector="engine:alpha", reason="x", actor=risk_manager, params=params
    )
    assert Engine.objects.get(name="alpha").desired_state == "REDUCING"


def test_an_operator_may_reduce_everything_partly_or_named_symbols_to_zero(fleet, operator):
    for params in ({"target_pct": 50}, {"target_pct": 0, "symbols": ["AAPL"]}):
        issuing.command_issue(
            kind="reduce", selector="engine:alpha", reason="x", actor=operator, params=params
        )
    assert Command.objects.filter(kind="reduce").count() == 2


def test_an_operator_cannot_resume_what_a_risk_managers_flatten_set(
    fleet, operator, risk_manager, second_risk_manager
):
    issuing.command_issue(kind="flatten", selector="engine:alpha", reason="x", actor=risk_manager)

    with pytest.raises(errors.CommandRefused) as refused:
        issuing.command_issue(kind="resume", selector="all", reason="y", actor=operator)

    assert str(refused.value.args[0]) == (
        "alpha is REDUCING, set by a flatten of every position of rita-risk: resuming it needs "
        "the issue_kill permission, which otto-operator does not have"
    )
    assert Engine.objects.get(name="alpha").desired_state == "REDUCING"
    assert not Command.objects.filter(kind="resume").exists()
    assert AuditEvent.objects.get(action="command_resume").outcome == "refused"
    # Another risk manager may: the right, not the person, is what the state asks for.
    issuing.command_issue(kind="resume", selector="all", reason="y", actor=second_risk_manager)
    assert Engine.objects.get(name="alpha").desired_state == "ACTIVE"
    assert Engine.objects.get(name="alpha").desired_set_by_right == ""


def test_a_flatten_on_top_of_an_operators_reduce_still_needs_the_flatten_right_to_undo(
    fleet, operator, risk_manager
):
    reduce = {"target_pct": 50}
    issuing.command_issue(
        kind="reduce", selector="engine:alpha", reason="x", actor=operator, params=reduce
    )
    issuing.command_issue(kind="flatten", selector="engine:alpha", reason="x", actor=risk_manager)
    # and an operator's reduce after it does not lower the right that holds the state
    issuing.command_issue(
        kind="reduce", selector="engine:alpha", reason="x", actor=operator, params=reduce
    )

    with pytest.raises(errors.CommandRefused, match="set by a flatten of every position of "):
        issuing.command_issue(kind="resume", selector="engine:alpha", reason="y", actor=operator)
    assert Engine.objects.get(name="alpha").desired_set_by_right == "issue_kill"


def test_an_operator_resumes_an_operators_reduce_and_a_limits_partial_reduce(fleet, operator):
    issuing.command_issue(
        kind="reduce",
        selector="engine:alpha",
        reason="x",
        actor=operator,
        params={"target_pct": 50},
    )
    issuing.command_issue(
        kind="reduce",
        selector="engine:beta",
        reason="x",
        actor_label="limit #1",
        params={"target_pct": 25},
    )

    issuing.command_issue(kind="resume", selector="all", reason="y", actor=operator)

    assert set(Engine.objects.values_list("desired_state", flat=True)) == {"ACTIVE"}


def test_a_limits_flatten_needs_the_flatten_right_to_resume(fleet, operator, risk_manager):
    issuing.command_issue(
        kind="reduce",
        selector="engine:alpha",
        reason="x",
        actor_label="limit #7",
        params={"target_pct": 0},
    )

    with pytest.raises(errors.CommandRefused, match="of limit #7: resuming it needs"):
        issuing.command_issue(kind="resume", selector="engine:alpha", reason="y", actor=operator)
    issuing.command_issue(kind="resume", selector="engine:alpha", reason="y", actor=risk_manager)


def test_a_paused_engine_is_resumed_by_an_operator(fleet, operator):
    issuing.command_issue(kind="pause", selector="engine:beta", reason="a", actor=operator)

    issuing.command_issue(kind="resume", selector="engine:beta", reason="b", actor=operator)

    assert Engine.objects.get(name="beta").desired_state == "ACTIVE"


# --- progress -------------------------------------------------------------------------------------


def test_batch_progress_counts_the_engines_that_reached_the_state(fleet, risk_manager):
    batch = kill(risk_manager)
    alpha, beta, gamma = batch.commands.order_by("engine__name")
    Command.objects.filter(pk=alpha.pk).update(status="succeeded", state_after="HALTED")
    Command.objects.filter(pk=beta.pk).update(
        status="partial", state_after="HALTED", result={"working": ["o-1", "o-2"], "left": {}}
    )

    progress = selectors.batch_progress(batch)

    assert progress.summary == "2 of 3 engines halted"
    assert not progress.finished
    assert progress.incomplete == ["beta: kill incomplete: 2 orders still working"]
    Command.objects.filter(pk=gamma.pk).update(status="failed", detail="broker down")
    progress = selectors.batch_progress(batch)
    assert progress.finished
    assert progress.incomplete[1] == "gamma: broker down"


def test_deleting_an_engine_deletes_its_commands_and_no_one_elses(fleet, risk_manager):
    # The database keeps no foreign keys for commands (migration 0010): Django's collector does.
    batch = kill(risk_manager)
    fleet["alpha"].delete()
    assert sorted(Command.objects.values_list("engine__name", flat=True)) == ["beta", "gamma"]
    assert CommandBatch.objects.filter(pk=batch.pk).exists()


def test_deleting_the_issuer_keeps_the_commands_and_their_label(fleet, operator):
    issuing.command_issue(kind="pause", selector="all", reason="lunch", actor=operator)
    operator.delete()
    assert Command.objects.count() == 3
    assert set(Command.objects.values_list("issued_by_id", "issued_by_label")) == {
        (None, "otto-operator")
    }


def test_a_persons_kill_needs_its_typed_confirmation_and_the_control_planes_does_not(
    fleet, risk_manager
):
    for typed in (None, "", "kill all", "alpha"):
        with pytest.raises(errors.CommandInvalid) as caught:
            issuing.command_issue(
                kind="kill", selector="live", reason="x", actor=risk_manager, confirmation=typed
            )
        words = "type KILL ALL exactly to confirm a kill of live"
        assert caught.value.message_dict == {"confirm": [words]}
    assert not Command.objects.exists()
    assert not AuditEvent.objects.filter(action="command_kill").exists()

    issuing.command_issue(
        kind="kill", selector="engine:beta", reason="x", actor=risk_manager, confirmation=" beta "
    )
    issuing.command_issue(kind="kill", selector="all", reason="limit", actor_label="limit #1")
    assert Command.objects.filter(kind="kill").count() == 1 + 3
