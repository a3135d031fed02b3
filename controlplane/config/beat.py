"""Celery beat's scheduler: django_celery_beat's, touching a heartbeat file after each pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane.config.heartbeat import touch


class HeartbeatScheduler(DatabaseScheduler):
    """Touches settings.BEAT_HEARTBEAT_PATH (when set) after every pass that completed.

    The database scheduler wakes at least every 5 s (beat_max_loop_interval), so a file older
    than a minute means the loop is stuck or failing."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        if settings.BEAT_HEARTBEAT_PATH:
            touch(Path(settings.BEAT_HEARTBEAT_PATH))
        return interval
