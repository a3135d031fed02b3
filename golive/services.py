"""Writes of going live.

The promotion policy: every change needs a reason, bumps the criterion's version, and is kept in
its history and the audit log (as risk limits are: risk.services).

Promotions: an operator requests an engine's next step; a second person with the risk right
approves it (four eyes). While a gate fails or is not known the approval is refused, unless the
approver overrides it with a written reason, kept on the engine's stage history as an override.
Every request, approval, rejection, cancellation, refusal and override is in the audit log.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, NoReturn

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit import audit_record
from controlplane.models import Engine, Stage
from controlplane.stages import stage_set
from golive import gates, policy, preflight
from golive.models import (
    PromotionCriterion,
    PromotionCriterionChange,
    PromotionRequest,
    RedLine,
    RedLineChange,
)

TRACKED = ("enabled", "threshold", "threshold_high")


class ReasonRequired(ValueError):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return value


def criterion_save(
    *,
    criterion: PromotionCriterion,
    reason: str,
    actor: AbstractBaseUser | None,
    actor_label: str | None = None,
    ip_address: str | None = None,
) -> PromotionCriterionChange | None:
    """Validate and save ``criterion`` (new or changed). Returns the history entry, None if
    nothing changed. Raises ValidationError naming each bad field, ReasonRequired without a
    reason."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Every change of the promotion policy needs a reason.")
    criterion.full_clean()
    label = actor_label or (actor.get_username() if actor is not None else "system")
    with transaction.atomic():
        before = (
            PromotionCriterion.objects.select_for_update().filter(pk=criterion.pk).first()
            if criterion.pk
            else None
        )
        changes = {
            name: [
                _plain(getattr(before, name)) if before else None,
                _plain(getattr(criterion, name)),
            ]
            for name in TRACKED
            if before is None or _plain(getattr(before, name)) != _plain(getattr(criterion, name))
        }
        if before is not None and not changes:
            return None
        criterion.version = (before.version if before else 0) + 1
        criterion.updated_by = label
        criterion.save()
        change = PromotionCriterionChange.objects.create(
            criterion=criterion,
            criterion_label=str(criterion),
            version=criterion.version,
            change="created" if before is None else "changed",
            changed_by=actor,
            changed_by_label=label,
            reason=reason,
            changes=changes,
        )
        audit_record(
            action="promotion_criterion_create" if before is None else "promotion_criterion_change",
            actor=actor,
            actor_label=label,
            target=criterion,
            reason=reason,
            ip_address=ip_address,
            data={"version": criterion.version, "changes": changes},
        )
    return change


# --- Promotions ----------------------------------------------------------------------------------


class PromotionRefused(PermissionDenied):
    """The actor may not do this now (four eyes, a failing gate). The message is fit for the UI."""


class PromotionForbidden(PromotionRefused):
    """The actor lacks the right altogether (a 403 for the pages)."""


def _label(actor: AbstractBaseUser) -> str:
    return actor.get_username()


def _refuse(
    message: str,
    *,
    actor: AbstractBaseUser,
    target: Any,
    reason: str,
    ip_address: str | None,
    data: dict[str, Any] | None = None,
    forbidden: bool = False,
) -> NoReturn:
    """Record the refusal in the audit log ("promotion_refused"), then raise it. Called outside
    any transaction that would roll the record back."""
    audit_record(
        action="promotion_refused",
        actor=actor,
        actor_label=_label(actor),
        target=target,
        reason=reason,
        outcome="refused",
        data={"refusal": message, **(data or {})},
        ip_address=ip_address,
    )
    raise (PromotionForbidden if forbidden else PromotionRefused)(message)


def _has(actor: AbstractBaseUser, perm: str) -> bool:
    return bool(actor.has_perm(perm))  # type: ignore[attr-defined]


def promotion_request(
    *,
    engine: Engine,
    actor: AbstractBaseUser,
    reason: str,
    ip_address: str | None = None,
) -> PromotionRequest:
    """Ask for ``engine``'s next stage. A second person with the risk right decides."""
    reason = (reason or "").strip()
    label = _label(actor)
    if not _has(actor, "golive.request_promotion"):
        _refuse(
            f"{label} may not request a promotion: operators and risk managers may",
            actor=actor,
            target=engine,
            reason=reason,
            ip_address=ip_address,
            data={"engine": engine.name},
            forbidden=True,
        )
    if not reason:
        raise ValidationError({"reason": "say why the engine is ready for its next stage"})
    with transaction.atomic():
        locked = Engine.objects.select_for_update().only("pk", "name", "stage").get(pk=engine.pk)
        to_stage = policy.NEXT_STAGE.get(locked.stage)
        if to_stage is None:
            message = f"{locked.name} is in full production: there is no next stage"
            raise ValidationError({"engine": message})
        pending = PromotionRequest.objects.filter(engine=locked, status="pending").first()
        if pending is not None:
            message = (
                f"a promotion of {locked.name} was already requested by "
                f"{pending.requested_by_label}; it awaits a decision"
            )
            raise ValidationError({"engine": message})
        try:
            with transaction.atomic():
                request = PromotionRequest.objects.create(
                    engine=locked,
                    from_stage=locked.stage,
                    to_stage=to_stage,
                    requested_by=actor,
                    requested_by_label=label,
                    reason=reason,
                )
        except IntegrityError as exc:  # another request was created meanwhile
            message = f"a promotion of {locked.name} was already requested; it awaits a decision"
            raise ValidationError({"engine": message}) from exc
        audit_record(
            action="promotion_request",
            actor=actor,
            actor_label=label,
            target=request,
            reason=reason,
            ip_address=ip_address,
            data={"engine": locked.name, "from": request.from_stage, "to": to_stage},
        )
    return request


def gate_refusal(report: gates.GateReport) -> str:
    """Why ``report``'s step may not be taken: each failing and unknown criterion, with its
    threshold and what was measured."""
    step = f"{Stage(report.from_stage).label} → {Stage(report.to_stage or report.from_stage).label}"
    if not report.criteria:
        return f"the gate of {step} is not passed: the policy sets no criterion for this step"
    parts = [
        f"{c.label} fails (threshold {c.threshold_text}, measured {c.value_text})"
        for c in report.failed
    ] + [
        f"{c.label} is not known (threshold {c.threshold_text}, measured {c.value_text})"
        for c in report.unknown
    ]
    return f"the gate of {step} is not passed: " + "; ".join(parts)


def _decision_data(request: PromotionRequest, **extra: Any) -> dict[str, Any]:
    return {
        "engine": request.engine.name,
        "from": request.from_stage,
        "to": request.to_stage,
        "requested_by": request.requested_by_label,
    } | extra


def promotion_approve(
    *,
    request: PromotionRequest,
    actor: AbstractBaseUser,
    reason: str = "",
    override: bool = False,
    ip_address: str | None = None,
    now: datetime | None = None,
) -> PromotionRequest:
    """The second person's approval: the engine moves to the requested stage if its gate passes
    now; with ``override`` (and a written reason) even if it does not."""
    reason = (reason or "").strip()
    label = _label(actor)
    engine = request.engine
    refuse = {"actor": actor, "target": request, "reason": reason, "ip_address": ip_address}
    if not _has(actor, "golive.approve_promotion"):
        _refuse(
            f"{label} may not approve a promotion: only risk managers may",
            **refuse,
            data=_decision_data(request),
            forbidden=True,
        )
    if request.requested_by_id == actor.pk:
        _refuse(
            f"{label} requested this promotion and cannot also approve it: a second person must",
            **refuse,
            data=_decision_data(request),
        )
    if request.status != PromotionRequest.Status.PENDING:
        raise ValidationError({"request": f"this request was already {request.status}"})
    current = Engine.objects.values_list("stage", flat=True).get(pk=engine.pk)
    if current != request.from_stage:
        _refuse(
            f"{engine.name} is no longer at {Stage(request.from_stage).label} "
            f"(now {Stage(current).label}): reject this request and ask again",
            **refuse,
            data=_decision_data(request, stage=current),
        )
    engine.stage = current
    report = gates.report(engine, now or timezone.now())
    failing = {
        "failed": [c.key for c in report.failed],
        "unknown": [c.key for c in report.unknown],
    }
    if not report.ready and not override:
        _refuse(
            f"Approval refused: {gate_refusal(report)}. A risk manager may override the gate "
            "with a written reason.",
            **refuse,
            data=_decision_data(request, **failing),
        )
    if not report.ready and not reason:
        raise ValidationError({"reason": "an override of the gate needs a written reason"})
    if preflight.needed(request.to_stage):
        # What must hold right now before real orders is not a gate: no override lifts it.
        blocking = preflight.failures(engine, now or timezone.now())
        if blocking:
            found = "; ".join(f"{c.label}: {c.detail}" for c in blocking)
            _refuse(
                f"Approval refused: the pre-flight checks before real money do not pass: {found}.",
                **refuse,
                data=_decision_data(request, preflight=[c.key for c in blocking]),
            )
    asked = f"requested by {request.requested_by_label}: {request.reason}"
    with transaction.atomic():
        locked = Engine.objects.select_for_update().only("pk", "stage").get(pk=engine.pk)
        # Claimed with a conditional update: two approvers clicking at once make one promotion.
        claimed = PromotionRequest.objects.filter(
            pk=request.pk, status="pending", from_stage=locked.stage
        ).update(
            status=PromotionRequest.Status.APPROVED,
            decided_by=actor,
            decided_by_label=label,
            decided_at=timezone.now(),
            decision_reason=reason,
            override=override and not report.ready,
        )
        if claimed != 1:
            raise ValidationError({"request": "this request was already decided"})
        request.refresh_from_db()
        if request.override:
            # The history marks an override as such (in red); its reason is the approver's.
            stage_reason = f"{reason} (approved by {label} over the gate; {asked})"
        else:
            note = f"; {reason}" if reason else ""
            stage_reason = f"{asked} (approved by {label}{note})"
        stage_set(
            engine=engine,
            to_stage=request.to_stage,
            reason=stage_reason,
            actor=actor,
            actor_label=label,
            override=request.override,
        )
        data = _decision_data(request)
        if request.override:
            data |= failing | {"refusal": gate_refusal(report)}
        audit_record(
            action="promotion_override" if request.override else "promotion_approve",
            actor=actor,
            actor_label=label,
            target=request,
            reason=reason,
            ip_address=ip_address,
            data=data,
        )
    return request


def _close(
    *,
    request: PromotionRequest,
    actor: AbstractBaseUser,
    reason: str,
    status: str,
    action: str,
    ip_address: str | None,
) -> PromotionRequest:
    label = _label(actor)
    with transaction.atomic():
        claimed = PromotionRequest.objects.filter(pk=request.pk, status="pending").update(
            status=status,
            decided_by=actor,
            decided_by_label=label,
            decided_at=timezone.now(),
            decision_reason=reason,
        )
        if claimed != 1:
            raise ValidationError({"request": "this request was already decided"})
        audit_record(
            action=action,
            actor=actor,
            actor_label=label,
            target=request,
            reason=reason,
            ip_address=ip_address,
            data=_decision_data(request),
        )
    request.refresh_from_db()
    return request


def promotion_reject(
    *,
    request: PromotionRequest,
    actor: AbstractBaseUser,
    reason: str,
    ip_address: str | None = None,
) -> PromotionRequest:
    """A risk manager, not the requester, turns the request down, saying why."""
    reason = (reason or "").strip()
    label = _label(actor)
    refuse = {"actor": actor, "target": request, "reason": reason, "ip_address": ip_address}
    if not _has(actor, "golive.approve_promotion"):
        _refuse(
            f"{label} may not reject a promotion: only risk managers may",
            **refuse,
            data=_decision_data(request),
            forbidden=True,
        )
    if request.requested_by_id == actor.pk:
        _refuse(
            f"{label} requested this promotion: cancel it rather than reject it",
            **refuse,
            data=_decision_data(request),
        )
    if not reason:
        raise ValidationError({"reason": "say why the promotion is rejected"})
    return _close(
        request=request,
        actor=actor,
        reason=reason,
        status=PromotionRequest.Status.REJECTED,
        action="promotion_reject",
        ip_address=ip_address,
    )


def promotion_cancel(
    *,
    request: PromotionRequest,
    actor: AbstractBaseUser,
    reason: str = "",
    ip_address: str | None = None,
) -> PromotionRequest:
    """The requester withdraws the request."""
    reason = (reason or "").strip()
    if request.requested_by_id != actor.pk:
        _refuse(
            f"{_label(actor)} did not request this promotion: only its requester may cancel it",
            actor=actor,
            target=request,
            reason=reason,
            ip_address=ip_address,
            data=_decision_data(request),
            forbidden=True,
        )
    return _close(
        request=request,
        actor=actor,
        reason=reason or "cancelled by the requester",
        status=PromotionRequest.Status.CANCELLED,
        action="promotion_cancel",
        ip_address=ip_address,
    )


# --- Red lines -----------------------------------------------------------------------------------

RED_LINE_TRACKED = ("enabled", "threshold", "window", "action", "demote_to")


def red_line_save(
    *,
    red_line: RedLine,
    reason: str,
    actor: AbstractBaseUser,
    ip_address: str | None = None,
) -> RedLineChange | None:
    """Validate and save a changed red line (golive.redlines). Only those with the right to change
    red lines (risk managers) may. Returns the history entry, None if nothing changed. Raises
    ValidationError naming each bad field, ReasonRequired without a reason."""
    if not actor.has_perm("golive.change_redline"):  # type: ignore[attr-defined]
        raise PromotionForbidden(f"{actor.get_username()} may not change the red lines")
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Every change of a red line needs a reason.")
    if "\x00" in reason:
        raise ValidationError({"change_reason": "a reason cannot hold a NUL character"})
    red_line.full_clean()
    label = actor.get_username()
    with transaction.atomic():
        before = RedLine.objects.select_for_update().get(pk=red_line.pk)
        changes = {
            name: [_plain(getattr(before, name)), _plain(getattr(red_line, name))]
            for name in RED_LINE_TRACKED
            if _plain(getattr(before, name)) != _plain(getattr(red_line, name))
        }
        if not changes:
            return None
        red_line.version = before.version + 1
        red_line.updated_by = label
        red_line.save()
        change = RedLineChange.objects.create(
            red_line=red_line,
            red_line_label=red_line.label,
            version=red_line.version,
            changed_by=actor,
            changed_by_label=label,
            reason=reason,
            changes=changes,
        )
        audit_record(
            action="red_line_change",
            actor=actor,
            actor_label=label,
            target=red_line,
            reason=reason,
            ip_address=ip_address,
            data={"version": red_line.version, "changes": changes},
        )
    return change
