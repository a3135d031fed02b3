"""Every Redis connection of the server is built here, so that one set of settings decides where
Redis is: ``REDIS_URL`` alone, or Redis Sentinel, which names the current master and follows a
failover.

With Sentinel (``REDIS_SENTINELS`` a list of ``host:port``, ``REDIS_SENTINEL_MASTER`` the name the
sentinels monitor, ``REDIS_SENTINEL_PASSWORD`` if they require one), ``REDIS_URL`` still gives the
database number and the master's password; its host and port are not used.

What builds connections of its own from a configuration (Celery's broker, the channel layer)
gets that configuration from here too: ``celery_broker``, ``channel_layer_host``. Django's cache
uses ``RedisCache`` below, whose connections come from ``client``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class RedisConfig:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    sentinel_password: str = ""

    @property
    def uses_sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def db(self) -> int:
        path = urlsplit(self.url).path.strip("/")
        return int(path) if path else 0

    @property
    def password(self) -> str | None:
        password = urlsplit(self.url).password
        return unquote(password) if password else None

    @property
    def username(self) -> str | None:
        username = urlsplit(self.url).username
        return unquote(username) if username else None

    def __repr__(self) -> str:
        # No password: settings are shown on the demo's debug pages.
        parts = urlsplit(self.url)
        where = f"{parts.scheme}://{parts.hostname}:{parts.port}/{self.db}"
        return f"RedisConfig({where}, sentinels={self.sentinels!r}, master={self.master!r})"

    def sentinel_kwargs(self) -> dict[str, Any]:
        # Options for the connections to the sentinels themselves (not to the master).
        return {"password": self.sentinel_password} if self.sentinel_password else {}

    def master_kwargs(self) -> dict[str, Any]:
        return {"db": self.db, "password": self.password, "username": self.username}


def parse_sentinels(entries: list[str]) -> tuple[tuple[str, int], ...]:
    """``["host:port", ...]`` as (host, port) pairs; refuses anything else, naming the entry."""
    parsed = []
    for entry in entries:
        host, sep, port = entry.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ImproperlyConfigured(
                f"REDIS_SENTINELS: {entry!r} is not host:port (a port from 1 to 65535)"
            )
        parsed.append((host.strip("[]"), int(port)))
    return tuple(parsed)


def make_config(
    url: str, sentinels: list[str], master: str, sentinel_password: str = ""
) -> RedisConfig:
    """The settings' Redis configuration, checked: Sentinel needs both its list and its master."""
    parsed = parse_sentinels(sentinels)
    if parsed and not master:
        raise ImproperlyConfigured("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not")
    if master and not parsed:
        raise ImproperlyConfigured("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not")
    return RedisConfig(
        url=url, sentinels=parsed, master=master, sentinel_password=sentinel_password
    )


def config() -> RedisConfig:
    from django.conf import settings

    return settings.REDIS_CONFIG


# --- Clients --------------------------------------------------------------------------------------


def client(cfg: RedisConfig | None = None, **options: Any) -> redis.Redis:
    """A new synchronous client of the master; ``options`` go to its connections
    (socket_timeout, client_name...). The caller keeps it: each call makes a new pool."""
    cfg = cfg or config()
    if not cfg.uses_sentinel:
        return redis.Redis.from_url(cfg.url, **options)
    sentinel = redis.sentinel.Sentinel(
        list(cfg.sentinels),
        sentinel_kwargs=cfg.sentinel_kwargs(),
        socket_timeout=options.get("socket_timeout"),
        socket_connect_timeout=options.get("socket_connect_timeout"),
    )
    return sentinel.master_for(cfg.master, **cfg.master_kwargs(), **options)


def async_client(cfg: RedisConfig | None = None, **options: Any) -> redis.asyncio.Redis:
    """A new asyncio client of the master, for the event loop that calls it."""
    cfg = cfg or config()
    if not cfg.uses_sentinel:
        return redis.asyncio.Redis.from_url(cfg.url, **options)
    sentinel = redis.asyncio.sentinel.Sentinel(
        list(cfg.sentinels),
        sentinel_kwargs=cfg.sentinel_kwargs(),
        socket_timeout=options.get("socket_timeout"),
        socket_connect_timeout=options.get("socket_connect_timeout"),
    )
    return sentinel.master_for(cfg.master, **cfg.master_kwargs(), **options)


# --- What other libraries build from a configuration ----------------------------------------------


def channel_layer_host(cfg: RedisConfig) -> str | dict[str, Any]:
    """One entry of channels_redis's ``hosts``: the URL, or its Sentinel form (channels_redis 4)."""
    if not cfg.uses_sentinel:
        return cfg.url
    return {
        "sentinels": list(cfg.sentinels),
        "master_name": cfg.master,
        "sentinel_kwargs": cfg.sentinel_kwargs(),
        **{k: v for k, v in cfg.master_kwargs().items() if v is not None},
    }


def celery_broker(cfg: RedisConfig) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options it needs besides (kombu's ``sentinel://``)."""
    if not cfg.uses_sentinel:
        return cfg.url, {}
    # kombu takes the master's password from the URLs and the sentinels' from sentinel_kwargs.
    auth = f":{quote(cfg.password, safe='')}@" if cfg.password else ""
    urls = ";".join(f"sentinel://{auth}{host}:{port}/{cfg.db}" for host, port in cfg.sentinels)
    options: dict[str, Any] = {"master_name": cfg.master}
    if cfg.sentinel_password:
        options["sentinel_kwargs"] = cfg.sentinel_kwargs()
    return urls, options


class _CacheClient(RedisCacheClient):
    """Django's Redis cache client, with its connections from ``client`` (one per process)."""

    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._options = {k: v for k, v in options.items() if k.startswith("socket_")}
        self._shared: redis.Redis | None = None
        self._lock = threading.Lock()

    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        with self._lock:
            if self._shared is None:
                self._shared = client(**self._options)
            return self._shared


class RedisCache(DjangoRedisCache):
    """Django's Redis cache backend on the factory's connections (Sentinel included); its
    LOCATION is not used to connect. OPTIONS may set socket_timeout and socket_connect_timeout."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _CacheClient
