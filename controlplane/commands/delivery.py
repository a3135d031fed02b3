"""Getting commands to the engines: pushed to their sockets, and handed over when they connect.

One Redis message per push, whatever the number of engines: a kill of 100 engines is one publish.
Every web process holds one subscription (controlplane.hub), decodes the message once and hands
each engine connected to it its own frames; the delivered commands of a push are then marked in
one statement. The push is best effort: a message lost on the way (Redis down, a process
resubscribing) is picked up by the gateway's check on the engine's next heartbeat, which hands
the engine what waits (pending_commands), as its welcome does.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from controlplane import hub
from controlplane.commands import lifecycle
from controlplane.models import Command
from engine_sdk import protocol as p

log = logging.getLogger(__name__)

HUB = "engine-commands"

# {engine id (a string: JSON object keys are strings): [[command id, encoded frame], ...]}
Frames = dict[str, list[tuple[str, str]]]
_decode = msgspec.json.Decoder(Frames)
_background: set[asyncio.Task[Any]] = set()


class CommandListener(Protocol):
    async def push_commands(self, entries: list[tuple[str, str]]) -> list[uuid.UUID]:
        """Send the frames to the engine; the ids of those sent (none before its hello)."""


def engine_group(engine_id: int) -> str:
    """The channel-layer group of an engine's sockets, in every web process."""
    return f"engine-{engine_id}"


def close_sockets(engine_id: int) -> None:
    """Close the engine's open sockets now (it was deactivated), in every web process.

    Best effort, as a push: a socket the message misses is refused at its next hello or
    heartbeat, which check that the engine is still active.
    """
    try:
        async_to_sync(get_channel_layer().group_send)(
            engine_group(engine_id), {"type": "engine.deactivated"}
        )
    except Exception as exc:  # Redis away: the heartbeat check closes it instead
        log.warning(
            "engine %s: closing its sockets failed (%s); its next heartbeat does", engine_id, exc
        )


def close_live_sockets(engine_id: int) -> None:
    """The engine left the stages that send real orders (controlplane.stages.stage_set): a socket
    on which it said hello in live mode is closed now, with 4403 as a refused live hello, in every
    web process. Best effort: a socket the message misses keeps running until its next hello,
    which is refused (its registered mode no longer fits)."""
    try:
        async_to_sync(get_channel_layer().group_send)(
            engine_group(engine_id), {"type": "engine.live_forbidden"}
        )
    except Exception as exc:  # Redis away: its next hello is refused instead
        log.warning("engine %s: closing its live sockets failed (%s)", engine_id, exc)


def frames_for(
    targets: Iterable[tuple[int, uuid.UUID]],
    *,
    kind: str,
    params: dict[str, Any],
    reason: str,
    issued_by: str,
    issued_at: datetime,
    expires_at: datetime | None,
) -> Frames:
    """The frames of one batch's commands, (engine id, command id) each, without model rows."""
    frames: Frames = defaultdict(list)
    for engine_id, command_id in targets:
        frame = p.Command(
            command_id=command_id,
            kind=kind,  # type: ignore[arg-type]
            params=params,
            reason=reason,
            issued_by=issued_by,
            issued_at=issued_at,
            expires_at=expires_at,
        )
        frames[str(engine_id)].append((str(command_id), p.encode(frame).decode()))
    return dict(frames)


def command_frame(command: Command) -> p.Command:
    return p.Command(
        command_id=command.pk,
        kind=command.kind,  # type: ignore[arg-type]
        params=command.params,
        reason=command.reason,
        issued_by=command.issued_by_label,
        issued_at=command.created_at,
        expires_at=command.expires_at,
    )


def pending_commands(
    engine_id: int, *, now: datetime | None = None, undelivered_only: bool = False
) -> list[p.Command]:
    """Commands without a result that have not expired, oldest first, marked delivered.

    On a (re)connection every open command is sent again, acknowledged ones too: an engine that
    crashed between its ack and its result must still carry it out (the engine applies each
    command_id once). On a heartbeat only the undelivered ones are: those a lost push left behind.
    """
    now = now or datetime.now(UTC)
    waiting = Command.sources(Command.Event.DELIVER)
    statuses = waiting if undelivered_only else list(Command.OPEN)
    with transaction.atomic():
        lifecycle.commands_expire(now=now, engine_id=engine_id)
        commands = list(
            Command.objects.select_for_update(skip_locked=True)
            .filter(engine_id=engine_id, status__in=statuses)
            .order_by("created_at")
        )
        lifecycle.commands_deliver(commands, now=now)
    return [command_frame(c) for c in commands]


def push(frames: Frames) -> bool:
    """Send the frames to the engines connected now; False when Redis could not take it."""
    if not frames:
        return True
    try:
        hub.publish(HUB, msgspec.json.encode(frames))
    except Exception as exc:  # any Redis failure only delays delivery
        log.warning(
            "command push to %d engines failed (%s); they get it on their next heartbeat",
            len(frames),
            exc,
        )
        return False
    return True


def commands_hub() -> hub.Hub:
    """This process's subscription to command pushes (call it on the event loop)."""
    return hub.hub(HUB, _dispatch)


async def listen(engine_id: int, listener: CommandListener) -> None:
    await commands_hub().add(engine_id, listener)


def stop_listening(engine_id: int, listener: CommandListener) -> None:
    commands_hub().discard(engine_id, listener)


async def _dispatch(commands_hub: hub.Hub, data: bytes) -> None:
    frames = _decode.decode(data)
    sends = []
    for key, entries in frames.items():
        engine_id = int(key)
        for listener in commands_hub.listeners.get(engine_id, ()):
            sends.append((engine_id, listener.push_commands(entries)))
    if not sends:
        return
    # Concurrently: an engine whose socket is slow to drain must not hold up the others.
    results = await asyncio.gather(*(send for _, send in sends), return_exceptions=True)
    delivered: list[tuple[int, uuid.UUID]] = []
    for (engine_id, _), result in zip(sends, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("command push to engine %s failed: %s", engine_id, result)
        else:
            delivered.extend((engine_id, command_id) for command_id in result)
    if delivered:
        # Not awaited: the engines' acks (already on their way) must not queue behind this
        # bookkeeping; an ack that wins fills in delivered_at itself.
        task = asyncio.create_task(
            database_sync_to_async(lifecycle.mark_delivered, thread_sensitive=False)(delivered)
        )
        _background.add(task)
        task.add_done_callback(_background.discard)
