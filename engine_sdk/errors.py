"""The exceptions an engine may see from the client."""

from __future__ import annotations

__all__ = [
    "BackpressureError",
    "EngineClientError",
    "EngineReplaced",
    "ServerTrouble",
    "StageForbidsLive",
    "Unauthorized",
]


class EngineClientError(Exception):
    pass


class Unauthorized(EngineClientError):
    """The server refused the token (close code 4401 or HTTP 401); retrying would not help."""


class EngineReplaced(EngineClientError):
    """Another connection with this engine's token took over (close code 4409).

    Two processes are running as the same engine; they would hand out the same seqs, so this one
    stops rather than fight for the connection.
    """


class StageForbidsLive(EngineClientError):
    """The control plane refused a live-mode hello: the engine's stage sends no real orders
    (error ``stage_forbids_live``, close code 4403). The message is the server's, naming the stage.

    The control plane holds the engine HALTED; a person must promote it or start it in the mode
    its stage allows, so the client stops instead of reconnecting.
    """


class ServerTrouble(EngineClientError):
    """The server could not store what it was sent; reconnect (with backoff) and resend."""


class BackpressureError(EngineClientError):
    """Too many events are waiting for the server; use ``emit_wait`` to wait for room instead."""
