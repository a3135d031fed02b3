from __future__ import annotations

import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
# The web process is the event loop plus threads that mostly wait on PostgreSQL. Each time such a
# thread has its answer it must win the GIL back from whichever thread runs Python; at the default
# 5 ms switch interval a transaction of eight statements could wait 40 ms for it under load
# (bench/command_latency.py). A shorter interval trades a little throughput for that latency.
sys.setswitchinterval(float(os.environ.get("PYTHON_SWITCH_INTERVAL_S", "0.0005")))
# Django must be set up before anything imports models (the consumers below do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from controlplane.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Each route does its own authentication: engines by bearer token, browsers by session
        # with an origin check (see the consumers).
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
