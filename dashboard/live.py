"""Live updates for the operators' browsers: what changed, coalesced, published per topic.

The web process that holds an engine's socket marks the engine dirty as each batch is stored.
Every ``INTERVAL_S`` one flush reads the dirty engines' fleet rows in one go (the same reads as
the page) and publishes them on the ``fleet`` topic; for the engines someone has open on the
engine page it also publishes what is new there (fills, equity and latency points, positions,
working orders). So the database work is per flush, not per event or per browser.

A flush is one Redis message on the ``live`` hub (controlplane.hub): each web process decodes it
once and hands each update to its browser sockets that listen to the topic (dashboard.consumers).
When no web process listens, a flush reads nothing.

What changes reaches this module as domain events (controlplane.events, alerts.events), connected
in DashboardConfig.ready: ``show_engines`` marks the engines for the next flush, or, in a process
without an event loop (a Celery worker), publishes their rows itself once the transaction that
changed them commits; ``show_alert`` sends an alert's toast the same way. Nothing else in the
product publishes to browsers.

Every update carries its publisher's id and a sequence number per topic. Pub/sub drops messages
silently when it must; a browser consumer that sees a gap tells the browser to fetch a fresh
snapshot, so a lost message never leaves a stale screen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import close_old_connections, transaction

from alerts import runbooks
from alerts.models import Alert
from controlplane import hub, redis_clients
from controlplane.loops import PerLoop
from controlplane.models import Engine
from dashboard import overview

log = logging.getLogger(__name__)

INTERVAL_S = 0.1
HUB = "live"
FLEET = "fleet"
ALERTS = "alerts"  # the alerts' toasts and badge (show_alert)
WATCH_TTL_S = 30.0


def engine_topic(engine_id: int) -> str:
    return f"engine:{engine_id}"


def encode(updates: list[dict[str, Any]]) -> bytes:
    """One hub message: JSON-ready already (decimals and datetimes as DjangoJSONEncoder writes
    them), so each web process decodes it once and its sockets send the values as they are."""
    return json.dumps({"updates": updates}, cls=DjangoJSONEncoder).encode()


def watch_key() -> str:
    return f"{settings.CHANNEL_LAYERS['default']['CONFIG'].get('prefix', 'cp')}:live:watched"


class _Cursor:
    """How far the engine page's streams were published, per engine (this process only)."""

    def __init__(self) -> None:
        self.fill_id: int | None = None
        self.equity_ts: datetime | None = None
        self.equity_peak: float | None = None  # the session's peak at equity_ts
        self.latency_ts: datetime | None = None


def engine_delta(engine_id: int, cursor: _Cursor) -> dict[str, Any] | None:
    """What is new on the engine page since ``cursor`` (moved forward); None if it is gone."""
    engine = Engine.objects.filter(pk=engine_id).first()
    if engine is None:
        return None
    now = datetime.now(UTC)
    fills = overview.engine_fills(engine, after_id=cursor.fill_id, limit=100)
    if fills:
        cursor.fill_id = fills[0]["id"]
    equity = overview.equity_series(
        engine, since=cursor.equity_ts, peak=cursor.equity_peak, limit=500
    )
    peak = equity.pop("peak")  # the cursor's, not a column of the series the pages extend
    if equity["ts"]:
        cursor.equity_ts = datetime.fromisoformat(equity["ts"][-1])
        cursor.equity_peak = peak
    latency = overview.metric_series(engine, "latency_ms", since=cursor.latency_ts, limit=500)
    if latency["ts"]:
        cursor.latency_ts = datetime.fromisoformat(latency["ts"][-1])
    return {
        "positions": overview.engine_positions(engine),
        "pnl": overview.engine_pnl(engine),
        "orders": overview.engine_working_orders(engine),
        "fills": fills,
        "equity": equity,
        "latency": latency,
        "rejections": overview.rejection_series(engine, minutes=5, now=now),
    }


class Publisher:
    def __init__(self) -> None:
        self.source = uuid.uuid4().hex
        self._dirty: set[int] = set()
        self._seq: dict[str, int] = defaultdict(int)
        self._cursors: dict[int, _Cursor] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-publisher")
        self.published = 0

    def mark(self, engine_id: int) -> None:
        """Note that an engine changed; call from the web process's event loop."""
        self._dirty.add(engine_id)
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._task = loop.create_task(self._run(), name="live-publisher")

    async def _run(self) -> None:
        # Runs while there is something to publish, then ends; the next mark starts it again.
        # The first change is published at once; later ones wait for the rest of the interval.
        while self._dirty:
            started = time.monotonic()
            dirty, self._dirty = self._dirty, set()
            try:
                await self.flush(dirty)
            except Exception:
                # A failed flush must not stop live updates for good; browsers resync on the
                # next sequence gap or reconnect.
                log.exception("live: publishing %d engines failed", len(dirty))
            await asyncio.sleep(max(INTERVAL_S - (time.monotonic() - started), 0.0))

    def _next(self, topic: str) -> int:
        self._seq[topic] += 1
        return self._seq[topic]

    async def flush(self, engine_ids: set[int]) -> None:
        redis = _redis()
        channel = hub.channel_name(HUB)
        listened, watched = await self._audience(channel, engine_ids)
        if not listened:
            return  # no browser anywhere: nothing to read
        # A thread of its own: the engines' writes fill the shared pool, and the live view must
        # not queue behind them.
        loop = asyncio.get_running_loop()
        rows, deltas = await loop.run_in_executor(
            self._executor, self._read_closing, engine_ids, watched
        )
        updates = [fleet_update(self.source, self._next(FLEET), rows)]
        for engine_id, delta in deltas.items():
            topic = engine_topic(engine_id)
            row = next((r.as_dict() for r in rows if r.id == engine_id), None)
            updates.append(
                {
                    "type": "live.update",
                    "topic": topic,
                    "source": self.source,
                    "seq": self._next(topic),
                    "row": row,
                    **delta,
                }
            )
        await redis.publish(channel, encode(updates))
        self.published += 1

    def _read_closing(
        self, engine_ids: set[int], watched: set[int]
    ) -> tuple[list[overview.FleetRow], dict[int, dict[str, Any]]]:
        close_old_connections()
        try:
            return self._read(engine_ids, watched)
        finally:
            close_old_connections()

    def _read(
        self, engine_ids: set[int], watched: set[int]
    ) -> tuple[list[overview.FleetRow], dict[int, dict[str, Any]]]:
        rows = overview.fleet_rows(engine_ids=engine_ids)
        deltas = {}
        for engine_id in watched:
            delta = engine_delta(engine_id, self._cursors.setdefault(engine_id, _Cursor()))
            if delta is not None:
                deltas[engine_id] = delta
        return rows, deltas

    async def _audience(self, channel: str, engine_ids: set[int]) -> tuple[bool, set[int]]:
        """Whether a browser listens to ``channel`` at all, and which of ``engine_ids`` one has
        open (in any web process): one Redis round trip, which each row's latency waits for."""
        redis = _redis()
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.pubsub_numsub(channel)
                pipe.zrangebyscore(watch_key(), time.time(), "+inf")
                subscribers, members = await pipe.execute()
        except Exception:  # Redis trouble: publish for every engine rather than for none
            return True, set(engine_ids)
        if not dict(subscribers).get(channel.encode()):
            return False, set()
        return True, {int(m) for m in members} & engine_ids


def _new_redis() -> Any:
    return redis_clients.async_client(socket_connect_timeout=1, socket_timeout=1)


# One client per event loop: an asyncio Redis connection belongs to the loop that opened it.
_redis = PerLoop(_new_redis).get


async def watch(engine_id: int) -> None:
    """Say that a browser has this engine's page open, for the next WATCH_TTL_S seconds."""
    redis = _redis()
    with contextlib.suppress(Exception):
        now = time.time()
        await redis.zadd(watch_key(), {str(engine_id): now + WATCH_TTL_S})
        await redis.zremrangebyscore(watch_key(), "-inf", now)


def fleet_update(source: str, seq: int, rows: list[overview.FleetRow]) -> dict[str, Any]:
    """A ``fleet`` topic update, as every publisher (web process or worker) sends it."""
    return {
        "type": "live.update",
        "topic": FLEET,
        "source": source,
        "seq": seq,
        "rows": [r.as_dict() for r in rows],
    }


publisher = Publisher()

# Processes without an event loop of their own (Celery workers) publish at once (show_engines).
_SYNC_SOURCE = uuid.uuid4().hex
_sync_seq = 0


def show_engines(engine_ids: list[int]) -> None:
    """Put these engines' new rows (and engine pages) on the operators' screens.

    On a web process's event loop (the engine sockets): marked for the next flush. From a thread
    of a process whose publisher runs (the HTTP engine endpoints): handed to its loop. Elsewhere
    (a worker, a management command, a request before any socket marked): published from here,
    after the commit of the transaction that changed them.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = publisher._loop
        if loop is not None and loop.is_running():
            for engine_id in engine_ids:
                loop.call_soon_threadsafe(publisher.mark, engine_id)
        else:
            ids = list(engine_ids)
            transaction.on_commit(lambda: _publish_quietly(lambda: [_rows_update(ids)]))
        return
    for engine_id in engine_ids:
        publisher.mark(engine_id)


def alert_payload(alert: Alert) -> dict[str, object]:
    return {
        "id": alert.pk,
        "state": alert.state,
        "severity": alert.severity,
        "summary": alert.summary,
        "engine": alert.engine.name if alert.engine else None,
        "acknowledged_by": alert.acknowledged_by_label or None,
        "runbook": asdict(runbook) if (runbook := runbooks.runbook_of(alert)) else None,
    }


def show_alert(alert_id: int) -> None:
    """An alert's toast and the badge on every page, and its engine's fleet row (its count of
    firing alerts), after the commit of the change."""

    def updates() -> list[dict[str, Any]]:
        alert = Alert.objects.select_related("engine").filter(pk=alert_id).first()
        if alert is None:
            return []
        found = [{"type": "live.alert", "topic": ALERTS, "alert": alert_payload(alert)}]
        if alert.engine_id is not None:
            found.append(_rows_update([alert.engine_id]))
        return found

    transaction.on_commit(lambda: _publish_quietly(updates))


def _rows_update(engine_ids: list[int]) -> dict[str, Any]:
    # Under a source id of this process's own, so browsers' gap detection stays per publisher.
    global _sync_seq
    _sync_seq += 1
    return fleet_update(_SYNC_SOURCE, _sync_seq, overview.fleet_rows(engine_ids=engine_ids))


def _publish_quietly(read: Callable[[], list[dict[str, Any]]]) -> None:
    """Read the updates and publish them; what changed is stored already, and a browser that
    misses this resyncs on the next sequence gap or reconnect."""
    try:
        updates = read()
        if updates:
            hub.publish(HUB, encode(updates))
    except Exception as exc:
        log.warning("live update not published: %s", exc)


def on_engines_changed(sender: Any, *, engine_ids: list[int], **kwargs: Any) -> None:
    """controlplane.events.engines_changed and command_answered."""
    show_engines(engine_ids)


def on_alert_changed(sender: Any, *, alert_id: int, **kwargs: Any) -> None:
    """alerts.events.alert_changed."""
    show_alert(alert_id)
