from __future__ import annotations

# Celery's app must be loaded when Django starts so @shared_task binds to it.
from controlplane.celery import app as celery_app

__all__ = ("celery_app",)
