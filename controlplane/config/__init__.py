"""The composition root: what Django reads by dotted path and what wires the processes together.

Settings, the URL and socket routes, the ASGI and Celery apps, the periodic schedules, the health
endpoints, the embedded PostgreSQL and Redis, the web server's options. Nothing else in the
product imports this package; it may import anything (docs/architecture.md).
"""

from __future__ import annotations

# Celery's app must be loaded when Django starts so @shared_task binds to it.
from controlplane.config.celery import app as celery_app

__all__ = ("celery_app",)
