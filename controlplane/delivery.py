"""Pushing commands to the engines' sockets through the channel layer.

One message to one group that every engine consumer of every web process joins, carrying the
encoded frames keyed by engine id: a kill of 100 engines is one publish, not 100. Each consumer
sends its own frames and ignores the rest. The push is best effort: a message the layer loses
(Redis down, a full channel) is picked up by the gateway's check on the engine's next heartbeat.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from controlplane.models import Command

log = logging.getLogger(__name__)

COMMANDS_GROUP = "engine-commands"
MESSAGE_TYPE = "engine.commands"


def command_frames(commands: Iterable[Command]) -> dict[str, list[list[str]]]:
    """Per engine id (a string: the layer's msgpack wants string keys), [command id, frame]."""
    from controlplane.gateway import command_frame
    from engine_sdk import protocol as p

    frames: dict[str, list[list[str]]] = defaultdict(list)
    for command in commands:
        text = p.encode(command_frame(command)).decode()
        frames[str(command.engine_id)].append([str(command.pk), text])
    return dict(frames)


def push(commands: Iterable[Command]) -> bool:
    """Send the commands to the engines connected now; False when the layer could not take it."""
    frames = command_frames(commands)
    if not frames:
        return True
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        async_to_sync(layer.group_send)(COMMANDS_GROUP, {"type": MESSAGE_TYPE, "frames": frames})
    except Exception as exc:  # any layer failure only delays delivery
        log.warning(
            "command push to %d engines failed (%s); they get it on their next heartbeat",
            len(frames), exc,
        )  # fmt: skip
        return False
    return True
