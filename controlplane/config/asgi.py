from __future__ import annotations

import gc
import os
import sys

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.config.settings")
# The web process is the event loop plus threads that mostly wait on PostgreSQL. Each time such a
# thread has its answer it must win the GIL back from whichever thread runs Python; at the default
# 5 ms switch interval a transaction of eight statements could wait 40 ms for it under load
# (bench/command_latency.py). A shorter interval trades a little throughput for that latency.
sys.setswitchinterval(float(os.environ.get("PYTHON_SWITCH_INTERVAL_S", "0.0005")))
# Django must be set up before anything imports models (the consumers below do).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from controlplane.config import memory  # noqa: E402
from controlplane.config.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Each route does its own authentication: engines by bearer token, browsers by session
        # with an origin check (see the consumers).
        "websocket": URLRouter(websocket_urlpatterns),
    }
)

# The collector's full passes stop the event loop while they walk every object: in the kill
# bench (100 engine sockets) they came twice in half a minute, at 80 ms each, and each one
# delayed a fleet kill's push by as much. What Django set up above lives as long as the process:
# frozen, no pass walks it again. And passes come less often: the young generation is collected
# after 20,000 allocations instead of 700, a full pass after 1,000 young ones instead of 100
# (at some 100,000 allocations a second under load: every few minutes, and cyclic garbage waits
# that long to be freed).
gc.freeze()
gc.set_threshold(20_000, 20, 50)
# Since full passes are that rare, and none comes in a quiet process, the memory a burst left in
# cycles or in glibc's free lists is handed back once the burst is over (config.memory).
if settings.MEMORY_TIDY_ENABLED:
    memory.tidier.start()
