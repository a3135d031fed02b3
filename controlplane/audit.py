"""The append-only audit trail: every command, limit change, approval, refusal and login."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest

from controlplane.models import AuditEvent


def client_ip(request: HttpRequest | None) -> str | None:
    if request is None:
        return None
    # Behind the reverse proxy of docs/operations.md the first X-Forwarded-For hop is the client.
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded:
        return forwarded.split(",")[0].strip() or None
    return request.META.get("REMOTE_ADDR") or None


def audit_event(
    *,
    action: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    actor_label: str | None = None,
    target: Any = None,
    reason: str = "",
    outcome: str = "ok",
    data: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    """An audit row, not saved yet: ``audit_record`` saves it; a command batch writes it in the
    same round trip as its other statements (controlplane.services)."""
    user_id = getattr(actor, "pk", None) if actor is not None else None
    label = actor_label or (actor.get_username() if user_id is not None else "system")
    return AuditEvent(
        actor_id=user_id,
        actor=label[:150],
        action=action,
        target_type=target._meta.model_name if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=str(target)[:200] if target is not None else "",
        ip_address=ip_address,
        reason=reason,
        outcome=outcome,
        data=data or {},
    )


def audit_record(
    *,
    action: str,
    actor: AbstractBaseUser | AnonymousUser | None = None,
    actor_label: str | None = None,
    target: Any = None,
    reason: str = "",
    outcome: str = "ok",
    data: dict[str, Any] | None = None,
    ip_address: str | None = None,
) -> AuditEvent:
    event = audit_event(
        action=action, actor=actor, actor_label=actor_label, target=target, reason=reason,
        outcome=outcome, data=data, ip_address=ip_address,
    )  # fmt: skip
    event.save(force_insert=True)
    return event
