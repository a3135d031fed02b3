"""Resuming after a kill: asked by one person, approved by another (four eyes)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from controlplane.commands import errors, resume
from controlplane.models import AuditEvent, Command, Engine, ResumeRequest
from tests.controlplane.commands.factories import kill

pytestmark = pytest.mark.django_db


@pytest.fixture
def halted(fleet, risk_manager):
    kill(risk_manager, selector="engine:alpha")
    return Engine.objects.get(name="alpha")


def test_a_resume_after_a_kill_is_asked_by_one_person_and_approved_by_another(
    halted, operator, second_risk_manager
):
    request = resume.resume_request_create(engine=halted, reason="bug fixed", actor=operator)

    command = resume.resume_request_approve(
        resume_request=request, actor=second_risk_manager, reason="checked", ip_address="10.1.1.1"
    )

    assert command.kind == "resume" and command.status == Command.Status.PENDING
    assert command.params == {
        "approved_by": "rex-risk",
        "requested_by": "otto-operator",
        "resume_request": request.pk,
    }
    request.refresh_from_db()
    decided = (request.status, request.decided_by, request.command)
    assert decided == ("approved", second_risk_manager, command)
    assert Engine.objects.get(pk=halted.pk).desired_state == "ACTIVE"
    actions = set(AuditEvent.objects.values_list("action", "outcome"))
    assert {("resume_request", "ok"), ("resume_approve", "ok"), ("command_resume", "ok")} <= actions


def test_four_eyes_cannot_be_satisfied_by_one_person(halted, risk_manager):
    request = resume.resume_request_create(engine=halted, reason="mine", actor=risk_manager)

    with pytest.raises(errors.CommandRefused, match="cannot also approve it"):
        resume.resume_request_approve(resume_request=request, actor=risk_manager)

    request.refresh_from_db()
    assert request.status == "open"
    assert not Command.objects.filter(kind="resume").exists()
    assert Engine.objects.get(pk=halted.pk).desired_state == "HALTED"
    refusal = AuditEvent.objects.get(action="resume_approve")
    assert refusal.outcome == "refused"
    # Not even a direct write gets past the database's own check.
    with pytest.raises(IntegrityError), transaction.atomic():
        ResumeRequest.objects.filter(pk=request.pk).update(
            status="approved", decided_by=risk_manager
        )


def test_an_operator_may_ask_but_not_approve(halted, operator, second_risk_manager):
    request = resume.resume_request_create(engine=halted, reason="x", actor=second_risk_manager)

    with pytest.raises(errors.CommandRefused, match="only risk managers may"):
        resume.resume_request_approve(resume_request=request, actor=operator)


def test_the_person_who_latched_the_kill_cannot_approve_its_release(
    halted, operator, risk_manager, second_risk_manager
):
    # rita-risk killed alpha; otto-operator asks for the release, so four-eyes alone would let
    # rita approve it: she would be both the kill and its release.
    request = resume.resume_request_create(engine=halted, reason="fixed", actor=operator)

    with pytest.raises(errors.CommandRefused, match="rita-risk issued the kill that halted alpha"):
        resume.resume_request_approve(resume_request=request, actor=risk_manager)

    request.refresh_from_db()
    assert request.status == "open"
    assert Engine.objects.get(pk=halted.pk).desired_state == "HALTED"
    assert AuditEvent.objects.get(action="resume_approve").outcome == "refused"
    resume.resume_request_approve(resume_request=request, actor=second_risk_manager)
    assert Engine.objects.get(pk=halted.pk).desired_state == "ACTIVE"


def test_a_second_kill_of_a_halted_engine_also_bars_its_issuer_from_the_release(
    halted, operator, second_risk_manager, admin_user
):
    kill(second_risk_manager, selector="engine:alpha")  # rex holds the latch too
    request = resume.resume_request_create(engine=halted, reason="fixed", actor=operator)

    with pytest.raises(errors.CommandRefused, match="rex-risk issued the kill"):
        resume.resume_request_approve(resume_request=request, actor=second_risk_manager)
    resume.resume_request_approve(resume_request=request, actor=admin_user)


def test_a_request_is_approved_once(halted, operator, admin_user, second_risk_manager):
    request = resume.resume_request_create(engine=halted, reason="x", actor=operator)
    resume.resume_request_approve(resume_request=request, actor=second_risk_manager)

    with pytest.raises(errors.CommandInvalid, match="already decided"):
        resume.resume_request_approve(resume_request=request, actor=admin_user)

    assert Command.objects.filter(kind="resume").count() == 1


def test_a_resume_request_needs_a_halted_engine_and_only_one_is_open(
    fleet, halted, operator, second_risk_manager
):
    with pytest.raises(errors.CommandInvalid, match="beta is not HALTED"):
        resume.resume_request_create(engine=fleet["beta"], reason="x", actor=operator)
    resume.resume_request_create(engine=halted, reason="x", actor=operator)
    with pytest.raises(errors.CommandInvalid, match="already asked for by otto-operator"):
        resume.resume_request_create(engine=halted, reason="y", actor=second_risk_manager)


def test_a_rejected_request_lifts_nothing_and_the_requester_may_withdraw(
    halted, operator, risk_manager
):
    request = resume.resume_request_create(engine=halted, reason="x", actor=operator)
    resume.resume_request_reject(resume_request=request, actor=risk_manager, reason="not yet")
    again = resume.resume_request_create(engine=halted, reason="now?", actor=operator)
    withdrawn = resume.resume_request_reject(resume_request=again, actor=operator, reason="oops")

    request.refresh_from_db()
    assert (request.status, withdrawn.status) == ("rejected", "withdrawn")
    assert Engine.objects.get(pk=halted.pk).desired_state == "HALTED"
