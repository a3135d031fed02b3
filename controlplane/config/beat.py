"""Celery beat's scheduler: django_celery_beat's, sending only while it holds the beat lock, and
touching a heartbeat file after each pass."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django_celery_beat.schedulers import DatabaseScheduler

from controlplane import hub, redis_clients
from controlplane.beat_lock import BeatLock
from controlplane.config.heartbeat import touch

log = logging.getLogger(__name__)


def beat_lock() -> BeatLock:
    # Under the channel layer's prefix, as the hubs' channels: one lock per environment and
    # Redis database, so that test runs and demos sharing a Redis do not hold each other's.
    return BeatLock(
        client=redis_clients.client(socket_timeout=2, socket_connect_timeout=2),
        key=hub.channel_name("beat_lock"),
        ttl_s=settings.BEAT_LOCK_TTL_S,
    )


class HeartbeatScheduler(DatabaseScheduler):
    """Sends due tasks only while this beat holds the beat lock (controlplane.beat_lock); the
    others tick without sending and take over when the holder's lease runs out.

    Touches settings.BEAT_HEARTBEAT_PATH (when set) after every pass that completed, waiting or
    not. The database scheduler wakes at least every 5 s (beat_max_loop_interval), so a file
    older than a minute means the loop is stuck or failing."""

    # Write the entries' last run times every 10 s rather than every 3 minutes: a beat that takes
    # over reads them, and would otherwise send again what the dead holder sent since its last
    # write.
    sync_every = 10

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lock = beat_lock()
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        was_held = self.lock.held
        if self.lock.hold():
            if not was_held:
                # What the previous holder sent is in the database, not in this process's copy
                # of the schedule: read it again before sending anything.
                self._initial_read = True
                self._heap = None
            interval: float = min(super().tick(*args, **kwargs), self.lock.retry_interval_s)
        else:
            interval = self.lock.retry_interval_s
        if settings.BEAT_HEARTBEAT_PATH:
            touch(Path(settings.BEAT_HEARTBEAT_PATH))
        return interval

    def close(self) -> None:
        super().close()  # writes the last run times first, for whoever takes over
        self.lock.release()
