"""The page a locked-out login gets (django-axes calls ``locked_out``; settings: AXES_*)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


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
