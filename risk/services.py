"""Writes of the risk limits. Every change needs a reason, bumps the limit's version, is kept in
the limit's history and the audit log, and reaches the connected engines as set_limits."""

from __future__ import annotations

import logging
from decimal import Decimal
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from controlplane.audit import audit_record
from controlplane.capital import set_limits_params
from controlplane.commands import issuing
from controlplane.events import announce
from controlplane.models import CommandKind, Engine
from risk import events, selectors
from risk.models import Level, LimitState, PortfolioLimitState, RiskLimit, RiskLimitChange

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
