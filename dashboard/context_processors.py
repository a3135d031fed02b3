"""What every page of the desk shows whatever page it is: the fleet-wide kill while it holds."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from dashboard.selectors import fleet_kill_latched


def fleet_kill(request: HttpRequest) -> dict[str, Any]:
    # Lazy: read only by a page that shows the banner (base.html, for a signed-in user), once.
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"fleet_kill": SimpleLazyObject(fleet_kill_latched)}
