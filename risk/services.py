"""Writes of the risk limits. Every change needs a reason, bumps the limit's version, is kept in
the limit's history and the audit log, and reaches the connected engines as set_limits."""

from __future__ import annotations

import logging
from decimal import Decimal
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from controlplane.audit import audit_record
from controlplane.capital import set_limits_params
from controlplane.commands import issuing
from controlplane.events import announce
from controlplane.models import CommandKind, Engine
from risk import events, selectors
from risk.models import (
    Allocation,
    AllocationChange,
    AllocationScope,
    DeskCapital,
    Level,
    LimitState,
    PortfolioLimitState,
    RiskLimit,
    RiskLimitChange,
)

log = logging.getLogger(__name__)

TRACKED = (
    "kind",
    "scope",
    "scope_value",
    "threshold",
    "warning_levels",
    "action",
    "reduce_to_pct",
    "window_days",
    "enabled",
    "description",
)


class ReasonRequired(ValueError):
    pass


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value.normalize()) if value == value.to_integral() else str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def limit_save(
    *,
    limit: RiskLimit,
    reason: str,
    actor: AbstractBaseUser | None,
    actor_label: str | None = None,
    ip_address: str | None = None,
) -> RiskLimitChange | None:
    """Validate and save ``limit`` (new or changed). Returns the history entry, None if nothing
    changed. Raises ValidationError naming each bad field, ReasonRequired without a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Every change of a risk limit needs a reason.")
    limit.full_clean()
    label = actor_label or (actor.get_username() if actor is not None else "system")
    with transaction.atomic():
        before = (
            RiskLimit.objects.select_for_update().filter(pk=limit.pk).first() if limit.pk else None
        )
        changes = {
            name: [_plain(getattr(before, name)) if before else None, _plain(getattr(limit, name))]
            for name in TRACKED
            if before is None or _plain(getattr(before, name)) != _plain(getattr(limit, name))
        }
        if before is not None and not changes:
            return None
        disabled = before is not None and before.enabled and not limit.enabled
        if disabled:
            # Switched off, it measures nothing: its states start afresh if it is switched on
            # again, and what it raised is over (the alerts side resolves it, after the commit).
            LimitState.objects.filter(limit=limit).update(
                level=Level.OK, warned_at_level=0, breached_at=None, utilisation=0.0
            )
            PortfolioLimitState.objects.filter(limit=limit).update(
                level=Level.OK, warned_at_level=0, breached_at=None, utilisation=0.0
            )
            announced = partial(
                announce, events.limit_disabled, limit_id=limit.pk, actor_label=label
            )
            transaction.on_commit(announced)
        limit.version = (before.version if before else 0) + 1
        limit.updated_by = label
        limit.save()
        change = RiskLimitChange.objects.create(
            limit=limit,
            limit_label=str(limit),
            version=limit.version,
            change="created" if before is None else "changed",
            changed_by=actor,
            changed_by_label=label,
            reason=reason,
            changes=changes,
        )
        audit_record(
            action="risk_limit_create" if before is None else "risk_limit_change",
            actor=actor,
            actor_label=label,
            target=limit,
            reason=reason,
            ip_address=ip_address,
            data={"version": limit.version, "changes": changes},
        )
        transaction.on_commit(limits_push)
    return change


def limits_push() -> int:
    """Send the current pre-trade limits to every connected engine, each with its stage and
    capital ceiling (controlplane.capital); returns how many."""
    pushed = 0
    for engine in Engine.objects.filter(is_active=True, connected=True).order_by("pk"):
        revision, limits = selectors.pretrade_limits_for(engine)
        try:
            issuing.command_issue(
                kind=CommandKind.SET_LIMITS,
                selector=f"engine:{engine.name}",
                reason=f"risk limits revision {revision}",
                actor=None,
                actor_label=f"risk limits r{revision}",
                params=set_limits_params(engine, revision, limits),
            )
            pushed += 1
        except Exception:  # one engine's trouble must not keep the others on old limits
            log.exception("set_limits to %s failed", engine.name)
    return pushed


ALLOCATION_TRACKED = ("scope", "scope_value", "target_pct", "enabled")


def _shown(value: Any) -> Any:
    # As typed: 10, 12.5 (not 1E+1, which _plain gives a round Decimal).
    return format(value.normalize(), "f") if isinstance(value, Decimal) else value


def _targets_error(
    scope: str, enabled: bool, target_pct: Decimal, pk: int | None, engine_targets: list[Allocation]
) -> str | None:
    if scope != AllocationScope.ENGINE or not enabled:
        return None
    others = sum((a.target_pct for a in engine_targets if a.enabled and a.pk != pk), Decimal(0))
    if others + target_pct <= 100:
        return None
    return (
        f"The engines' targets would add up to {others + target_pct} %: the other engines "
        f"hold {others} %, so this one can have at most {100 - others} %."
    )


def engine_targets_error(
    *, scope: str, enabled: bool, target_pct: Decimal, pk: int | None
) -> str | None:
    """Why a target would take the enabled engine targets over 100 %, or None (for forms)."""
    targets = list(Allocation.objects.filter(scope=AllocationScope.ENGINE))
    return _targets_error(scope, enabled, target_pct, pk, targets)


def allocation_save(
    *,
    allocation: Allocation,
    reason: str,
    actor: AbstractBaseUser | None,
    ip_address: str | None = None,
) -> AllocationChange | None:
    """Validate and save a target share (new or changed); None if nothing changed. Raises
    ValidationError naming the field (a share outside (0, 100], an unknown engine, enabled
    engine targets that would add up to more than 100 %), ReasonRequired without a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Every change of an allocation target needs a reason.")
    allocation.scope_value = (allocation.scope_value or "").strip()
    allocation.full_clean()
    label = actor.get_username() if actor is not None else "system"
    with transaction.atomic():
        # Every engine target locked: two saves at once cannot both pass the 100 % check.
        engine_targets = list(
            Allocation.objects.select_for_update().filter(scope=AllocationScope.ENGINE)
        )
        before = next((a for a in engine_targets if a.pk == allocation.pk), None)
        if allocation.pk and before is None:
            before = Allocation.objects.select_for_update().filter(pk=allocation.pk).first()
        error = _targets_error(
            allocation.scope,
            allocation.enabled,
            allocation.target_pct,
            allocation.pk,
            engine_targets,
        )
        if error:
            raise ValidationError({"target_pct": error})
        changes = {
            name: [
                _shown(getattr(before, name)) if before else None,
                _shown(getattr(allocation, name)),
            ]
            for name in ALLOCATION_TRACKED
            if before is None or _shown(getattr(before, name)) != _shown(getattr(allocation, name))
        }
        if before is not None and not changes:
            return None
        allocation.version = (before.version if before else 0) + 1
        allocation.updated_by = actor if actor is not None and actor.pk else None
        allocation.save()
        entry = AllocationChange.objects.create(
            allocation=allocation,
            label=str(allocation)[:200],
            change="created" if before is None else "changed",
            changed_by=allocation.updated_by,
            changed_by_label=label,
            reason=reason,
            changes=changes,
        )
        audit_record(
            action="allocation.saved",
            actor=actor,
            target=allocation,
            reason=reason,
            data={"changes": changes},
            ip_address=ip_address,
        )
    return entry


def desk_capital_set(
    *,
    amount: Decimal,
    reason: str,
    actor: AbstractBaseUser | None,
    ip_address: str | None = None,
) -> AllocationChange | None:
    """Set the desk's capital (the one DeskCapital row); None if it is unchanged."""
    reason = (reason or "").strip()
    if not reason:
        raise ReasonRequired("Every change of the desk's capital needs a reason.")
    desk = DeskCapital(pk=1, amount=amount)
    desk.full_clean(validate_unique=False)
    label = actor.get_username() if actor is not None else "system"
    with transaction.atomic():
        before = DeskCapital.objects.select_for_update().filter(pk=1).first()
        old = _shown(before.amount) if before else None
        if old == _shown(desk.amount):
            return None
        desk.updated_by = actor if actor is not None and actor.pk else None
        desk.save()
        changes = {"amount": [old, _shown(desk.amount)]}
        entry = AllocationChange.objects.create(
            label="desk capital",
            change="created" if before is None else "changed",
            changed_by=desk.updated_by,
            changed_by_label=label,
            reason=reason,
            changes=changes,
        )
        audit_record(
            action="desk_capital.set",
            actor=actor,
            target=desk,
            reason=reason,
            data={"changes": changes},
            ip_address=ip_address,
        )
    return entry
