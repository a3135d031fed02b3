from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from controlplane.audit import audit_record, client_ip
from controlplane.roles import sync_roles


@receiver(user_logged_in)
def _audit_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit_record(action="login", actor=user, ip_address=client_ip(request))


@receiver(user_logged_out)
def _audit_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        audit_record(action="logout", actor=user, ip_address=client_ip(request))


@receiver(user_login_failed)
def _audit_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kw: Any
) -> None:
    audit_record(
        action="login_failed",
        actor_label=str(credentials.get("username", "?"))[:150],
        ip_address=client_ip(request),
        outcome="refused",
    )


@receiver(user_locked_out)
def _audit_locked_out(
    sender: Any, request: Any = None, username: Any = None, ip_address: Any = None, **kw: Any
) -> None:
    audit_record(
        action="login_locked_out",
        actor_label=str(username or "?")[:150],
        ip_address=ip_address or client_ip(request),
        outcome="refused",
    )


def sync_roles_after_migrate(sender: Any, **kwargs: Any) -> None:
    sync_roles()
