"""What an EngineClient is told at construction: who the engine is and how the client behaves."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from engine_sdk import protocol
from engine_sdk.protocol import Capabilities, Mode

__all__ = ["ClientConfig", "HelloInfo"]


@dataclass(frozen=True)
class HelloInfo:
    """What the engine says about itself in every ``hello``."""

    engine_build: str
    config_hash: str
    mode: Mode
    broker: str
    account: str
    # This run's id (a backtest's, a paper run's): the server keeps order and fill ids per run,
    # so a run may repeat the ids of the one before it. "" for an engine with one run.
    run_id: str = ""
    # What the engine enforces; None: every command and limit kind.
    capabilities: Capabilities | None = None


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """The client's tunables; the defaults suit a live engine, tests shorten the timings."""

    batch_max_events: int = 1000
    """Events per frame and per journal write, 1 to ``protocol.MAX_EVENTS_PER_FRAME`` (5000)."""
    batch_interval_s: float = 0.02
    """How long the journal writer lingers to gather a batch (one write, one fsync)."""
    heartbeat_interval_s: float = 5.0
    """Between the engine's heartbeats, until the server's ``welcome`` says otherwise."""
    dead_man_after_s: float = 15.0
    """With no frame from the server for this long, an ACTIVE engine is paused."""
    backoff_initial_s: float = 0.2
    """The first reconnect delay's cap; it doubles with each failed attempt."""
    backoff_max_s: float = 10.0
    """The largest cap: a delay is uniform in [0, min(max, initial x 2^attempt)]."""
    max_unacked_events: int = 200_000
    """``emit`` raises BackpressureError beyond this many events not acked; ``emit_wait`` waits."""
    welcome_timeout_s: float = 10.0
    """How long the opening handshake and the wait for ``welcome`` may take."""
    fsync: bool = True
    """fsync each journal batch and state write; turn off only for tests and backtests."""
    connect_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Passed to ``websockets.asyncio.client.connect`` (``ssl``, ``proxy``...), over the SDK's."""
    rng: random.Random | None = field(default=None, compare=False, repr=False)
    """The source of the reconnect jitter; a seeded one makes the delays reproducible."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max_events <= protocol.MAX_EVENTS_PER_FRAME:
            raise ValueError(f"batch_max_events must be 1..{protocol.MAX_EVENTS_PER_FRAME}")
        # A read-only copy: the config is shared and must not change under a running client.
        object.__setattr__(self, "connect_kwargs", MappingProxyType(dict(self.connect_kwargs)))
