"""The append-only audit trail: every command, limit change, approval, refusal and login."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest

from controlplane.models import AuditEvent
from controlplane.sqlscript import Script


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's address: the TCP peer's, or behind TRUSTED_PROXY_COUNT reverse proxies the
    address the outermost one saw. Anyone can send X-Forwarded-For; only the entries our own
    proxies appended (the rightmost ones) are believed."""
    if request is None:
        return None
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        hops = [hop for hop in hops if hop]
        if hops:
            # Fewer hops than proxies: the request came through fewer of them; the leftmost
            # entry is still one a trusted proxy wrote.
            hop = hops[-proxies] if len(hops) >= proxies else hops[0]
            if _is_ip(hop):
                return hop
    return request.META.get("REMOTE_ADDR") or None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
    same round trip as its other statements (controlplane.commands.issuing)."""
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
        action=action,
        actor=actor,
        actor_label=actor_label,
        target=target,
        reason=reason,
        outcome=outcome,
        data=data,
        ip_address=ip_address,
    )
    event.save(force_insert=True)
    return event


_INSERT = f"""
    INSERT INTO {AuditEvent._meta.db_table}
        (ts, actor_id, actor, action, target_type, target_id, target_label, ip_address, reason,
         outcome, data)
    VALUES (%s, %s::bigint, %s, %s, %s, %s, %s, %s::inet, %s, %s, %s::jsonb)
"""


def audit_add(script: Script, event: AuditEvent, ts: datetime) -> None:
    """Write an unsaved audit row (``audit_event``) with the other statements of ``script``,
    instead of in a round trip of its own; ``ts`` is its time."""
    event.ts = ts
    script.add(
        _INSERT,
        [
            event.ts,
            event.actor_id,
            event.actor,
            event.action,
            event.target_type,
            event.target_id,
            event.target_label,
            event.ip_address,
            event.reason,
            event.outcome,
            json.dumps(event.data),
        ],
    )
