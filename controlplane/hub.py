"""One Redis pub/sub subscription per web process, fanned out to that process's sockets.

The channel layer gives every consumer its own copy of a group message: a fleet kill to a hundred
engine sockets in one process meant a hundred deserialisations of the fleet's message and a
hundred consumer wake-ups before the last engine heard of it. A ``Hub`` subscribes once per event
loop (one per web process), decodes each message once and hands it to the listeners registered in
this process, keyed by what they listen for (an engine id, say).

Like the channel layer it is at most once: a message published while a subscription is down is
lost. Its users cover that themselves (the gateway re-checks undelivered commands on every
heartbeat). ``publish`` is synchronous and cheap enough to call inside a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import redis
from channels.consumer import get_handler_name
from django.conf import settings

from controlplane import redis_clients
from controlplane.loops import PerLoop

log = logging.getLogger(__name__)

RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# A dead Redis must not hold up the request that publishes: it only delays delivery.
PUBLISH_TIMEOUT_S = 0.5

Dispatch = Callable[["Hub", bytes], Awaitable[None]]


def channel_name(name: str) -> str:
    """The Redis channel of a hub: under the channel layer's prefix (per environment and database,
    so parallel test workers and demos on one Redis do not hear each other)."""
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    return f"{prefix}:hub:{name}"


def client_name(name: str) -> str:
    """The subscription's connection name in Redis's CLIENT LIST."""
    return f"controlplane-hub-{name}"


_publisher_lock = threading.Lock()
_publisher: tuple[redis_clients.RedisConfig, redis.Redis] | None = None


def sync_client() -> redis.Redis:
    """A synchronous client for short commands (publish, counters), shared by the process."""
    global _publisher
    with _publisher_lock:
        # Made again when the settings change (tests point the process at another Redis).
        if _publisher is None or _publisher[0] is not settings.REDIS_CONFIG:
            client = redis_clients.client(
                socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S
            )
            _publisher = (settings.REDIS_CONFIG, client)
        return _publisher[1]


def publish(name: str, payload: bytes) -> int:
    """Publish to every process's hub ``name``; returns how many processes were subscribed.

    Raises redis.RedisError when Redis cannot be reached (within ``PUBLISH_TIMEOUT_S``).
    """
    return int(sync_client().publish(channel_name(name), payload))


class Hub:
    """The subscription of one event loop to one hub channel, and its local listeners."""

    def __init__(self, name: str, dispatch: Dispatch) -> None:
        self.name = name
        self.channel = channel_name(name)
        self.listeners: dict[Hashable, set[Any]] = {}
        self._dispatch = dispatch
        # Set while subscribed: what is published from then on arrives. (A message published
        # while the SUBSCRIBE is on its way may or may not: at most once, like the layer.)
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def add(self, key: Hashable, listener: Any) -> None:
        """Listen for ``key``. The first listener of the process waits for the subscription, so
        that what is published once it returns arrives; with Redis down it gives up after a
        second and the subscription is retried in the background."""
        self.listeners.setdefault(key, set()).add(listener)
        if self._task is None or self._task.done():
            self.ready.clear()
            self._task = asyncio.create_task(self._run(), name=f"hub-{self.name}")
            # Only the first listener waits, and not long: with Redis down the subscription is
            # retried in the background and every later listener goes on at once.
            waiter = asyncio.create_task(self.ready.wait())
            await asyncio.wait(
                [waiter, self._task],
                timeout=PUBLISH_TIMEOUT_S * 2,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()

    def discard(self, key: Hashable, listener: Any) -> None:
        listeners = self.listeners.get(key)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self.listeners[key]

    async def _run(self) -> None:
        attempt = 0
        while True:
            client = redis_clients.async_client(client_name=client_name(self.name))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                if attempt:
                    log.info("hub %s: subscribed again", self.name)
                attempt = 0
                while True:
                    message = await pubsub.get_message(timeout=None)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        await self._dispatch(self, message["data"])
                    except Exception:  # one bad message must not end the subscription
                        log.exception("hub %s: a message could not be handed out", self.name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.ready.clear()
                delay = RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)]
                attempt += 1
                log.warning("hub %s: subscription lost (%s); again in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
            finally:
                # Closing a broken connection can fail too; the next attempt opens a new one.
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                    await client.aclose()


_hubs: PerLoop[dict[str, Hub]] = PerLoop(dict)


def hub(name: str, dispatch: Dispatch) -> Hub:
    """This event loop's hub ``name`` (made on first use). Tests run several loops one after
    another; each gets its own subscription."""
    per_loop = _hubs.get()
    found = per_loop.get(name)
    if found is None:
        found = per_loop[name] = Hub(name, dispatch)
    return found


class DirectDispatch:
    """Consumers' dispatch without Channels' per-message close_old_connections.

    Channels runs it through asgiref's single shared thread for every message, which makes a
    hundred sockets queue behind each other (a fleet kill's fan-out took a second). The
    consumers here touch the database only through database_sync_to_async, which closes stale
    connections in its own thread anyway.
    """

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)
