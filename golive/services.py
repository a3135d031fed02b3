"""Writes of the promotion policy. Every change needs a reason, bumps the criterion's version,
and is kept in its history and the audit log (as risk limits are: risk.services)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from controlplane.audit import audit_record
from golive.models import PromotionCriterion, PromotionCriterionChange

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
