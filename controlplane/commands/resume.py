"""Resuming an engine after a kill: one person asks, a second approves (four eyes)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from controlplane.audit import audit_record
from controlplane.commands.errors import CommandInvalid, command_refuse
from controlplane.commands.issuing import command_issue
from controlplane.models import Command, CommandKind, Engine, ResumeRequest, TradingState


def resume_request_create(
    *,
    engine: Engine,
    reason: str,
    actor: AbstractBaseUser,
    ip_address: str | None = None,
) -> ResumeRequest:
    """Ask for a HALTED engine to be resumed; a second person approves or rejects."""
    reason = (reason or "").strip()
    label = actor.get_username()
    audit = {
        "action": "resume_request",
        "actor": actor,
        "ip_address": ip_address,
        "reason": reason,
        "target": engine,
        "actor_label": label,
    }
    if not reason:
        raise CommandInvalid({"reason": "say why the engine may trade again"})
    if not actor.has_perm("controlplane.issue_pause"):  # type: ignore[attr-defined]
        command_refuse(f"{label} may not ask for a resume", **audit)
    with transaction.atomic():
        locked = Engine.objects.select_for_update().get(pk=engine.pk)
        if locked.desired_state != TradingState.HALTED:
            message = f"{engine.name} is not HALTED ({locked.desired_state}); resume it directly"
            raise CommandInvalid({"engine": message})
        existing = ResumeRequest.objects.filter(engine=engine, status="open").first()
        if existing is not None:
            message = (
                f"a resume of {engine.name} was already asked for by "
                f"{existing.requested_by_label}; it awaits approval"
            )
            raise CommandInvalid({"engine": message})
        request = ResumeRequest.objects.create(
            engine=engine, reason=reason, requested_by=actor, requested_by_label=label
        )
        audit_record(**audit | {"target": request}, data={"engine": engine.name})
    return request


def resume_request_approve(
    *,
    resume_request: ResumeRequest,
    actor: AbstractBaseUser,
    reason: str = "",
    ip_address: str | None = None,
) -> Command:
    """The second person's approval: issues the resume that lifts the kill."""
    label = actor.get_username()
    audit = {
        "action": "resume_approve",
        "actor": actor,
        "actor_label": label,
        "ip_address": ip_address,
        "reason": reason,
        "target": resume_request,
    }
    if not actor.has_perm("controlplane.approve_resume"):  # type: ignore[attr-defined]
        command_refuse(
            f"{label} may not approve a resume after a kill: only risk managers may", **audit
        )
    if resume_request.requested_by_id == actor.pk:
        command_refuse(
            f"{label} asked for this resume and cannot also approve it: a second person must",
            **audit,
        )
    if _latched_by(resume_request.engine, actor):
        command_refuse(
            f"{label} issued the kill that halted {resume_request.engine.name} and cannot also "
            "approve its release: another risk manager must",
            **audit,
        )
    now = timezone.now()
    with transaction.atomic():
        # Claimed with a conditional update: two approvers clicking at once make one resume.
        claimed = ResumeRequest.objects.filter(pk=resume_request.pk, status="open").update(
            status=ResumeRequest.Status.APPROVED,
            decided_by=actor,
            decided_by_label=label,
            decided_at=now,
            decision_reason=reason,
        )
        if claimed != 1:
            raise CommandInvalid({"resume_request": "this request was already decided"})
        resume_request.refresh_from_db()
        asked_and_approved = f"asked by {resume_request.requested_by_label}, approved by {label}"
        batch = command_issue(
            kind=CommandKind.RESUME,
            selector=f"engine:{resume_request.engine.name}",
            reason=f"{resume_request.reason} ({asked_and_approved})",
            actor=actor,
            ip_address=ip_address,
            approved_resume=resume_request,
        )
        command = batch.commands.get()
        ResumeRequest.objects.filter(pk=resume_request.pk).update(command=command)
        data = {
            "engine": resume_request.engine.name,
            "requested_by": resume_request.requested_by_label,
            "command": str(command.pk),
        }
        audit_record(**audit, data=data)
    return command


def kills_latched_by(actor: AbstractBaseUser, engine_ids: list[int]) -> set[int]:
    """Which of these engines ``actor`` holds HALTED by a kill: the kill that latched it, or one
    issued since (it held the latch too). Their release needs someone else's approval."""
    kills = Command.objects.filter(
        engine_id__in=engine_ids,
        kind=CommandKind.KILL,
        issued_by=actor,
        engine__desired_state=TradingState.HALTED,
        created_at__gte=Coalesce("engine__desired_changed_at", "created_at"),
    )
    return set(kills.values_list("engine_id", flat=True))


def _latched_by(engine: Engine, actor: AbstractBaseUser) -> bool:
    return engine.pk in kills_latched_by(actor, [engine.pk])


def resume_request_reject(
    *,
    resume_request: ResumeRequest,
    actor: AbstractBaseUser,
    reason: str,
    ip_address: str | None = None,
) -> ResumeRequest:
    """A risk manager turns a request down, or its requester withdraws it."""
    label = actor.get_username()
    withdraw = resume_request.requested_by_id == actor.pk
    action = "resume_withdraw" if withdraw else "resume_reject"
    audit = {
        "action": action,
        "actor": actor,
        "actor_label": label,
        "ip_address": ip_address,
        "reason": reason,
        "target": resume_request,
    }
    if not withdraw and not actor.has_perm("controlplane.approve_resume"):  # type: ignore[attr-defined]
        command_refuse(f"{label} may not reject a resume request: only risk managers may", **audit)
    status = ResumeRequest.Status.WITHDRAWN if withdraw else ResumeRequest.Status.REJECTED
    with transaction.atomic():
        claimed = ResumeRequest.objects.filter(pk=resume_request.pk, status="open").update(
            status=status,
            decided_by=actor,
            decided_by_label=label,
            decided_at=timezone.now(),
            decision_reason=reason,
        )
        if claimed != 1:
            raise CommandInvalid({"resume_request": "this request was already decided"})
        audit_record(**audit, data={"engine": resume_request.engine.name})
    resume_request.refresh_from_db()
    return resume_request
