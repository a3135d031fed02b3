"""The browsers' live socket: /ws/live/v1 (session-authenticated, origin-checked in routing).

A browser subscribes to topics (``fleet``, ``engine:<name>``). Updates from the publishers
(dashboard.live) reach every socket of the process through one subscription (the ``live`` hub,
decoded once per process); each socket merges them per topic and sends at most
``MAX_SENDS_PER_S`` times in any second, at least ``MIN_GAP_S`` apart. Every
message to the browser carries a sequence number that grows by one; the browser fetches a fresh
snapshot when one is missing, when it reconnects, or when this consumer says ``resync`` because a
publisher's own sequence skipped (a message Redis pub/sub dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import msgspec
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane import hub
from controlplane.hub import DirectDispatch
from controlplane.models import Engine
from dashboard import live

log = logging.getLogger(__name__)

MAX_SENDS_PER_S = 10
# Within the limit, sends may come closer together than 1/MAX_SENDS_PER_S: the publishers flush
# about every 100 ms, and holding an update that arrives a little early until a strict 100 ms
# gap has passed added up to that much to what the operator sees (bench/fanout.py).
MIN_GAP_S = 0.05
CLOSE_FORBIDDEN = 4403


def live_hub() -> hub.Hub:
    """This process's subscription to the live updates (call it on the event loop)."""
    return hub.hub(live.HUB, _dispatch)


async def _dispatch(live_hub: hub.Hub, data: bytes) -> None:
    alerts = []
    for update in json.loads(data)["updates"]:
        for consumer in list(live_hub.listeners.get(update["topic"], ())):
            if update["type"] == "live.alert":
                alerts.append(consumer.live_alert(update))
            else:
                consumer.live_update(update)
    if alerts:
        for failed in await asyncio.gather(*alerts, return_exceptions=True):
            if isinstance(failed, Exception):
                log.warning("live alert not sent to a browser: %s", failed)


class LiveConsumer(DirectDispatch, AsyncJsonWebsocketConsumer):
    seq = 0

    _flush_task: asyncio.Task[None] | None = None
    _watch_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        allowed = (
            user is not None
            and user.is_authenticated
            and await database_sync_to_async(user.has_perm)("controlplane.view_engine")
        )
        if not allowed:
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.topics: set[str] = set()
        self.watching: set[int] = set()
        self.last_seq: dict[tuple[str, str], int] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        self.resync: set[str] = set()
        # When the last MAX_SENDS_PER_S updates were sent: never more than that in any second.
        self.sent_at: deque[float] = deque(maxlen=MAX_SENDS_PER_S)
        # Alerts reach every page (a toast and the badge), whatever it subscribed to.
        await self._listen(live.ALERTS)
        await self._send({"type": "hello"})

    async def disconnect(self, code: int) -> None:
        for task in (self._flush_task, self._watch_task):
            if task is not None:
                task.cancel()
        if getattr(self, "topics", None):
            listeners = live_hub()
            for topic in self.topics:
                listeners.discard(topic, self)

    async def _listen(self, topic: str) -> None:
        if topic not in self.topics:
            self.topics.add(topic)
            await live_hub().add(topic, self)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        topics = content.get("subscribe") if isinstance(content, dict) else None
        if not isinstance(topics, list):
            await self._send({"type": "error", "message": 'send {"subscribe": [topics]}'})
            return
        for topic in topics:
            key = await self._key_for(topic)
            if key is None:
                await self._send({"type": "error", "message": f"unknown topic {topic!r}"})
                continue
            await self._listen(key)
        await self._send({"type": "subscribed", "topics": topics})

    async def _key_for(self, topic: Any) -> str | None:
        """What the publishers call a browser's topic: engines by id, not by name."""
        if topic == live.FLEET:
            return live.FLEET
        if isinstance(topic, str) and topic.startswith("engine:"):
            name = topic.removeprefix("engine:")
            engine_id = await database_sync_to_async(
                lambda: Engine.objects.filter(name=name).values_list("pk", flat=True).first()
            )()
            if engine_id is None:
                return None
            self.watching.add(engine_id)
            await live.watch(engine_id)
            if self._watch_task is None:
                self._watch_task = asyncio.create_task(self._keep_watching())
            return live.engine_topic(engine_id)
        return None

    async def _keep_watching(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(live.WATCH_TTL_S / 3)
                for engine_id in self.watching:
                    await live.watch(engine_id)

    async def live_alert(self, message: dict[str, Any]) -> None:
        """An alert changed (from the hub)."""
        # Rare and urgent: sent at once, not coalesced.
        await self._send({"type": "alert", "alert": message["alert"]})

    # --- from the publishers ------------------------------------------------------------------

    def live_update(self, message: dict[str, Any]) -> None:
        """An update of a topic this socket listens to (from the hub): merged, sent soon."""
        topic, source, seq = message["topic"], message["source"], message["seq"]
        key = (source, topic)
        last = self.last_seq.get(key)
        if last is not None and seq != last + 1:
            self.resync.add(topic)
        self.last_seq[key] = seq
        self._merge(topic, message)
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush_soon())

    def _merge(self, topic: str, message: dict[str, Any]) -> None:
        pending = self.pending.setdefault(topic, {"topic": topic})
        if topic == live.FLEET:
            rows = pending.setdefault("rows", {})
            for row in message["rows"]:
                rows[row["id"]] = row  # the newest row of an engine wins
            return
        if message.get("row") is not None:
            pending["row"] = message["row"]
        for name in ("positions", "orders", "rejections"):
            pending[name] = message[name]  # whole lists: the newest wins
        pending.setdefault("fills", [])[:0] = message["fills"]  # newest first, as on the page
        for name in ("equity", "latency"):
            series = pending.setdefault(name, {})
            for column, values in message[name].items():
                series.setdefault(column, []).extend(values)

    async def _flush_soon(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        wait = 0.0
        if self.sent_at:
            wait = self.sent_at[-1] + MIN_GAP_S - now
            if len(self.sent_at) == MAX_SENDS_PER_S:
                wait = max(wait, self.sent_at[0] + 1.0 - now)
        if wait > 0:
            await asyncio.sleep(wait)
        pending, self.pending = self.pending, {}
        resync, self.resync = self.resync, set()
        updates = []
        for topic, update in pending.items():
            if topic == live.FLEET:
                update = {**update, "rows": list(update["rows"].values())}
            updates.append(update)
        self.sent_at.append(loop.time())
        try:
            await self._send({"type": "update", "updates": updates, "resync": sorted(resync)})
        except OSError:
            # The browser went away while this waited (uvicorn's ClientDisconnected); its
            # disconnect follows. Left on the task, the exception would be logged as never
            # retrieved, and its traceback would hold this consumer and its updates in a cycle
            # until the collector's next full pass.
            return

    async def _send(self, content: dict[str, Any]) -> None:
        self.seq += 1
        # msgspec, not the json module: a hundred browsers each encode every fleet update.
        await self.send(text_data=_encoder.encode({**content, "seq": self.seq}).decode())


_encoder = msgspec.json.Encoder()
