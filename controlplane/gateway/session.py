"""An engine's session: its token, its hello and the welcome, its heartbeats, its command answers,
its disconnection. Synchronous and on the database; the socket calls it through
``database_sync_to_async``, the HTTP endpoints directly."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from controlplane import capabilities, events
from controlplane.capital import ceiling_text
from controlplane.commands.delivery import pending_commands
from controlplane.commands.desired_state import enforce_desired_state, timed_pauses_end
from controlplane.commands.issuing import command_issue
from controlplane.commands.lifecycle import command_answers, limits_replace
from controlplane.events import limits_for
from controlplane.models import (
    REAL_MONEY_STAGES,
    Command,
    CommandKind,
    Engine,
    Mode,
    Stage,
    TradingState,
    hash_token,
)
from engine_sdk import protocol as p

log = logging.getLogger(__name__)


def engine_by_token(token: str | None) -> Engine | None:
    if not token or not token.startswith("cpe_") or len(token) > 200:
        return None
    return Engine.objects.filter(token_hash=hash_token(token), is_active=True).first()


def hello(engine: Engine, frame: p.Hello, connection_id: uuid.UUID | None) -> list[p.ServerFrame]:
    """Register a (re)connection and build the welcome. Refusals come back as error frames."""
    if frame.protocol != p.PROTOCOL_VERSION:
        message = (
            f"protocol {frame.protocol} is not supported; this server speaks {p.PROTOCOL_VERSION}"
        )
        return [p.Error(code="protocol_version", message=message, field="protocol")]
    if frame.mode == Mode.LIVE:
        # The stage is read afresh: a promotion may have come since the socket authenticated.
        engine.refresh_from_db(fields=["stage", "mode"])
        if engine.stage not in REAL_MONEY_STAGES:
            # Before the registered mode's check: what the engine must hear is its stage.
            return [stage_violation(engine, frame)]
    if frame.mode != engine.mode:
        return [
            p.Error(
                code="engine_mismatch",
                message=f"this token belongs to {engine.name}, registered as {engine.mode}; "
                f"the engine says it runs {frame.mode}",
                field="mode",
            )
        ]
    now = datetime.now(UTC)
    update: dict[str, Any] = {
        "reported_state": frame.trading_state,
        "engine_build": frame.engine_build,
        "config_hash": frame.config_hash,
        "limits_version": frame.limits_version,
        # The run its orders and fills are stored under from now on (docs/protocol.md, "Runs").
        "run_id": frame.run_id,
        "capabilities": None
        if frame.capabilities is None
        else msgspec.to_builtins(frame.capabilities),
        "last_seen_at": now,
        # Starting again: no longer stopped (a stop is said by the final heartbeat).
        "stopped_at": None,
    }
    if connection_id is not None:
        update |= {"connected": True, "connection_id": connection_id}
    # The token was checked on connecting; an engine deactivated since then is refused here.
    if not Engine.objects.filter(pk=engine.pk, is_active=True).update(**update):
        return [_deactivated()]
    # A timed pause that is over is over in this welcome too: the engine is told ACTIVE (and a
    # dead-man pause lifts), not PAUSED until the periodic sweep comes round.
    timed_pauses_end(now=now, engine_id=engine.pk)
    fields = ["last_seq", "desired_state", "desired_until", "strategy_tags", "stage"]
    fields += ["target_capital", "capital_pct"]
    engine.refresh_from_db(fields=fields)
    # The welcome carries the current limits: set_limits not yet acknowledged are obsolete.
    limits_replace(engine_id=engine.pk, now=now)
    limits_version, limits = limits_for(engine)
    if frame.capabilities is not None:
        caps = msgspec.to_builtins(frame.capabilities)
        unenforced = capabilities.unenforced_limit_kinds(caps, (str(x["kind"]) for x in limits))
        if unenforced:
            # Still sent in the welcome (the engine may enforce some of it); flagged and alerted.
            what = f"pre-trade limits it cannot enforce ({', '.join(unenforced)})"
            capabilities.announce_missing(engine.pk, what)
    latched = enforce_desired_state(engine, frame.trading_state)
    commands = pending_commands(engine.pk)
    if latched is not None:
        # The latched command goes before anything else, whatever its age among the others.
        first = [c for c in commands if c.command_id == latched]
        commands = first + [c for c in commands if c.command_id != latched]
    welcome = p.Welcome(
        protocol=p.PROTOCOL_VERSION,
        engine_id=engine.pk,
        engine_name=engine.name,
        last_seq=engine.last_seq,
        heartbeat_interval_s=settings.ENGINE_HEARTBEAT_INTERVAL_S,
        desired_state=engine.desired_state,  # type: ignore[arg-type]
        limits_version=limits_version,
        limits=limits,
        commands=commands,
        stage=engine.stage,  # type: ignore[arg-type]
        capital_ceiling=ceiling_text(engine),
    )
    return [welcome]


STAGE_ACTOR = "control plane (stage)"


def stage_violation(engine: Engine, frame: p.Hello) -> p.Error:
    """A live hello from an engine whose stage sends no real orders: refused, the engine held
    HALTED by a kill (latched, audited, visible), and ``stage_violated`` announced (alerts raise
    a critical alert)."""
    stage = engine.stage
    words = Stage(stage).label.lower()
    message = (
        f"engine {engine.name} is at stage {words}, which sends no real orders: a live-mode "
        "hello is refused until it is promoted to small capital (docs/going-live.md)"
    )
    log.warning("engine %s: %s", engine.pk, message)
    desired = Engine.objects.filter(pk=engine.pk).values_list("desired_state", flat=True).first()
    if desired != TradingState.HALTED:
        reason = f"live-mode hello refused: engine at stage {words} (docs/going-live.md)"
        command_issue(
            kind=CommandKind.KILL,
            selector=f"engine:{engine.name}",
            reason=reason,
            actor=None,
            actor_label=STAGE_ACTOR,
        )
    transaction.on_commit(
        partial(
            events.announce,
            events.stage_violated,
            engine_id=engine.pk,
            stage=stage,
            mode=frame.mode,
        )
    )
    return p.Error(code="stage_forbids_live", message=message, field="mode")


# Whether anything waits for delivery: a command the deliver transition can still move.
_UNDELIVERED = ", ".join(f"'{status}'" for status in Command.sources(Command.Event.DELIVER))
_HEARTBEAT_SQL = f"""
    UPDATE {Engine._meta.db_table} SET last_seen_at = %s, reported_state = %s,
        limits_version = COALESCE(%s, limits_version), clock_offset_ms = %s
    WHERE id = %s AND is_active
    RETURNING name, desired_state, desired_until,
        EXISTS (SELECT 1 FROM {Command._meta.db_table}
                WHERE engine_id = %s AND status IN ({_UNDELIVERED}))
"""


# Beyond this the offset is stored as this (an int column; the protocol bounds ts to 1900-2999).
_MAX_OFFSET_MS = 2**31 - 1


def _clock_offset_ms(engine_ts: datetime, now: datetime) -> int:
    offset = round((engine_ts - now).total_seconds() * 1000)
    return max(-_MAX_OFFSET_MS, min(_MAX_OFFSET_MS, offset))


def heartbeat(engine_id: int, frame: p.Heartbeat) -> list[p.ServerFrame]:
    """Record the heartbeat; answer the commands a lost push left undelivered, if any.

    One statement in the usual case (a hundred engines send one every two seconds): the update
    returns what the latch check needs and whether anything waits for delivery.
    """
    try:
        with connection.cursor() as cursor:
            now = datetime.now(UTC)
            offset_ms = _clock_offset_ms(frame.ts, now)
            values = [now, frame.trading_state, frame.limits_version, offset_ms, engine_id]
            cursor.execute(_HEARTBEAT_SQL, [*values, engine_id])
            row = cursor.fetchone()
        if row is None:
            # Deactivated (or deleted) while connected: the closing message missed this socket.
            return [_deactivated()]
        if frame.stopping:
            # The engine's last word before it closes on purpose: stopped, not down.
            Engine.objects.filter(pk=engine_id).update(stopped_at=values[0])
            log.info("engine %s: stopping (shut down by its operator)", engine_id)
        name, desired, desired_until, waiting = row
        engine = Engine(pk=engine_id, name=name, desired_state=desired, desired_until=desired_until)
        if desired != frame.trading_state and enforce_desired_state(engine, frame.trading_state):
            waiting = True
        return list(pending_commands(engine_id, undelivered_only=True)) if waiting else []
    except DatabaseError as exc:
        # A heartbeat that cannot be recorded must not drop the engine's connection.
        log.warning("engine %s: heartbeat not recorded: %s", engine_id, exc)
        return []


def _deactivated() -> p.Error:
    return p.Error(code="unauthorized", message="this engine has been deactivated")


def record(
    engine_id: int, frame: p.Heartbeat | p.CommandAck | p.CommandResult
) -> list[p.ServerFrame]:
    """Store what a heartbeat, command_ack or command_result says; a heartbeat may get commands."""
    if isinstance(frame, p.Heartbeat):
        return heartbeat(engine_id, frame)
    command_answers([(engine_id, frame)])
    return []


def current_connection(engine_id: int) -> uuid.UUID | None:
    return Engine.objects.filter(pk=engine_id).values_list("connection_id", flat=True).first()


def disconnect(engine_id: int, connection_id: uuid.UUID) -> None:
    # Only the current connection may mark the engine offline: a replaced one must not.
    Engine.objects.filter(pk=engine_id, connection_id=connection_id).update(connected=False)
