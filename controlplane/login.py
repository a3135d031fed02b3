"""Logging in: who an attempt is counted under and the page a locked-out login gets (django-axes;
settings: AXES_*), and the audit of logins, logouts, failures and lockouts (Django's and axes'
signals, connected when the app loads)."""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from controlplane.audit import audit_record, client_ip


def attempt_username(request: HttpRequest, credentials: Any = None) -> str:
    """The username a login attempt is counted under (AXES_USERNAME_CALLABLE).

    Cut to the longest a user's name can be (150): the attempts table holds 255 characters,
    and a longer name, which no account can have, must be refused as a wrong login, not fail
    the page with a database error.
    """
    username: Any = None
    if isinstance(credentials, dict):
        username = credentials.get("username")
    if username is None:
        username = request.POST.get("username", "")
    return str(username)[:150]


def locked_out(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """The login page's lockout message, as a page (429), never a bare text."""
    username = ""
    if isinstance(credentials, dict):
        username = str(credentials.get("username") or "")
    username = username or str(request.POST.get("username", ""))
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    context = {"username": username[:150], "cooloff_minutes": minutes}
    return render(request, "registration/locked_out.html", context, status=429)


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
