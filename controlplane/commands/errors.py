"""What issuing a command refuses with: the actor may not (CommandRefused), or the request is
wrong (CommandInvalid)."""

from __future__ import annotations

from typing import Any, NoReturn

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError

from controlplane.audit import audit_record


class CommandRefused(PermissionDenied):
    """The actor may not do this. The message says what was refused and why, fit for the UI."""


class CommandInvalid(ValidationError):
    """The request itself is wrong (unknown kind, bad parameter, no engine selected)."""


def command_refuse(
    message: str,
    *,
    action: str,
    actor: AbstractBaseUser | None,
    actor_label: str | None,
    reason: str,
    ip_address: str | None,
    target: Any = None,
    data: dict[str, Any] | None = None,
) -> NoReturn:
    """Record the refusal in the audit log, then raise CommandRefused (a 403) with ``message``."""
    # Written before raising and outside any transaction of the caller's that would roll it back.
    audit_record(
        action=action,
        actor=actor,
        actor_label=actor_label,
        target=target,
        reason=reason,
        outcome="refused",
        data={"refusal": message, **(data or {})},
        ip_address=ip_address,
    )
    raise CommandRefused(message)
