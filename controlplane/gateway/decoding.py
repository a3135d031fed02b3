"""What arrives from an engine, decoded: its size, its JSON, its type, with the msgspec structs of
engine_sdk.protocol (the ones the SDK encodes with); and the bearer token of a connection."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from engine_sdk import protocol as p

log = logging.getLogger(__name__)


class _TypeProbe(msgspec.Struct, forbid_unknown_fields=False):
    type: Any = None


_probe = msgspec.json.Decoder(_TypeProbe)


ENGINE_FRAME_TYPES = frozenset({"hello", "events", "heartbeat", "command_ack", "command_result"})


@dataclass
class Decoded:
    frame: p.EngineFrame | None
    events: list[p.Event] | None  # set for an events frame decoded leniently
    errors: list[p.Error]
    # Each event's position in the frame it came in (``events[i]`` in an error), when it is not
    # its place in ``events`` (events refused at decoding left out, or several frames merged).
    positions: list[int] | None = None


def decode_frame(data: str | bytes) -> Decoded:
    """Decode one engine frame. An events frame with bad events still yields its good ones."""
    size = p.frame_bytes(data)  # bytes on the wire: a str's len() would count characters
    if size > p.MAX_FRAME_BYTES:
        message = f"frame is {size} bytes; the limit is {p.MAX_FRAME_BYTES}: send smaller batches"
        return Decoded(None, None, [p.Error(code="frame_too_large", message=message)])
    try:
        frame = p.decode_engine_frame(data)
    except msgspec.ValidationError as exc:
        probe_type = frame_type(data)
        if probe_type == "events":
            events, errors, positions = p.decode_events_positioned(data)
            return Decoded(None, events, errors, positions)
        if probe_type is not None and probe_type not in ENGINE_FRAME_TYPES:
            return Decoded(
                None,
                None,
                [
                    p.Error(
                        code="unknown_type",
                        message=f"unknown frame type {probe_type!r}",
                        field="type",
                    )
                ],
            )
        text, field = p.error_field(str(exc))
        return Decoded(None, None, [p.Error(code="invalid_frame", message=text, field=field)])
    except msgspec.DecodeError as exc:
        return Decoded(None, None, [p.Error(code="malformed_json", message=str(exc))])
    if isinstance(frame, p.Events):
        return Decoded(frame, list(frame.events), [])
    return Decoded(frame, None, [])


def frame_type(data: str | bytes) -> str | None:
    """The frame's ``type`` field (None if unreadable or not a string: a hostile `{"type": []}`
    would otherwise reach a set lookup as a list), its other fields skipped unchecked."""
    try:
        value = _probe.decode(data).type
    except (msgspec.MsgspecError, RecursionError):
        return None
    return value if isinstance(value, str) else None


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (ASGI header pairs or a dict)."""
    if isinstance(headers, Mapping):
        value = headers.get("Authorization") or ""
    else:
        value = ""
        for name, raw in headers:
            if name.lower() == b"authorization":
                value = raw.decode("latin-1")
                break
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
