from __future__ import annotations

from typing import Any

from django.urls import path

from controlplane.consumers import EngineConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/engine/v1", EngineConsumer.as_asgi()),
]
