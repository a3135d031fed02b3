from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from controlplane.gateway.socket import EngineConsumer
from dashboard.consumers import LiveConsumer


def origin_checked(app: Any) -> Any:
    """Refuse a browser socket whose Origin is not one of ALLOWED_HOSTS (read per connection)."""

    async def check(scope: Any, receive: Any, send: Any) -> Any:
        return await AllowedHostsOriginValidator(app)(scope, receive, send)

    return check


websocket_urlpatterns: list[Any] = [
    # Engines authenticate by bearer token and send no Origin: no session, no origin check.
    path("ws/engine/v1", EngineConsumer.as_asgi()),
    # Browsers: the login session, and an Origin that must be one of ALLOWED_HOSTS.
    path("ws/live/v1", origin_checked(AuthMiddlewareStack(LiveConsumer.as_asgi()))),
]
