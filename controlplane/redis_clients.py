"""Every Redis connection of the server is built here, so that one set of settings decides where
Redis is: ``REDIS_URL`` alone, or Redis Sentinel (``REDIS_SENTINELS``, ``REDIS_SENTINEL_MASTER``)
which hands out the current master and follows a failover.
"""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings


def client(**options: Any) -> redis.Redis:
    """A new synchronous client of the master; ``options`` go to the connection pool
    (socket_timeout, client_name...). The caller keeps it: each call makes a new pool."""
    return redis.Redis.from_url(settings.REDIS_URL, **options)
