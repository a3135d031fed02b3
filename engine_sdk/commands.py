"""The command runner: each command the server sends is acknowledged, handled once, and answered.

Commands are handled one at a time, in arrival order (a pause followed by a resume must end up
resumed), by the engine's handler or, without one, by a default that only changes the trading
state. Each result is recorded in ``commands.jsonl`` before it is sent, so a command delivered
again, even after a restart, is answered from there instead of being applied twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from engine_sdk import drill, protocol
from engine_sdk.ceiling import ceiling_text
from engine_sdk.journal import CommandStore
from engine_sdk.protocol import Command, CommandResult, CommandResultStatus, TradingState, utc_now
from engine_sdk.state import StateStore

__all__ = ["CommandHandler", "CommandOutcome", "CommandRunner"]

log = logging.getLogger(__name__)


@dataclass
class CommandOutcome:
    """What the engine's command handler did.

    ``trading_state``, when set, becomes the client's trading state (the engine decides what a
    command does to it). For PAUSED, ``paused_until`` sets the automatic resume; when it is left
    out and the command is a pause with a ``duration`` (seconds) parameter, that is used.
    """

    status: CommandResultStatus
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    trading_state: TradingState | None = None
    paused_until: datetime | None = None


CommandHandler = Callable[[Command], Awaitable[CommandOutcome]]
Send = Callable[[bytes], Awaitable[None]]


class CommandRunner:
    """Receives commands (``receive``), runs them in order (``run``) and hands results on."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool,
        state: StateStore,
        handler: CommandHandler | None,
        deliver: Callable[[CommandResult], Awaitable[None]],
        enforces_limits: bool = True,
    ) -> None:
        self.store = CommandStore(directory, fsync=fsync)
        self.state = state
        self.handler = handler
        # False for an engine whose orders do not go through check_order: its set_limits fail.
        self.enforces_limits = enforces_limits
        self._deliver = deliver
        self._queue: asyncio.Queue[Command] = asyncio.Queue()
        self._in_flight: set[uuid.UUID] = set()

    async def receive(self, command: Command, send: Send) -> None:
        """Acknowledge a command through ``send`` and queue it, unless it was handled already."""
        ack = protocol.encode(protocol.CommandAck(command_id=command.command_id))
        if command.command_id in self._in_flight:
            await send(ack)
            return
        done = self.store.result(command.command_id)
        if done is not None:
            # Handled before (perhaps before a restart); the server may have missed the result.
            await send(ack)
            await send(protocol.encode(done))
            return
        if command.kind == "kill" and not expired(command):
            # A kill stops new orders before it is even acknowledged: no order passes the gate
            # once the server has the ack, and a restart after it comes back HALTED.
            # Cancelling and flattening follow in the handler.
            self.state.halt_for(command)
            await self.state.written()
        await send(ack)
        self._in_flight.add(command.command_id)
        self._queue.put_nowait(command)

    async def run(self) -> None:
        # One at a time, in arrival order: a pause followed by a resume must end up resumed.
        while True:
            command = await self._queue.get()
            try:
                result = await self.run_command(command)
            except Exception:
                log.exception("engine: command %s could not be completed", command.command_id)
                self._in_flight.discard(command.command_id)
                continue
            try:
                # Shielded: close cancels this worker, and a record still waiting for a thread
                # would be dropped with it; a restart would then handle the command again.
                await asyncio.shield(asyncio.to_thread(self.store.record, result))
            except OSError:
                # Still answer: a command handled twice after a restart beats one never answered.
                log.exception("engine: could not record command %s", command.command_id)
            self._in_flight.discard(command.command_id)
            await self._deliver(result)

    async def run_command(self, command: Command) -> CommandResult:
        state = self.state
        refusal = (
            state.refuse_resume(command)
            or state.refuse_limits(command)
            or self.refuse_unenforceable(command)
        )
        if expired(command):
            outcome = CommandOutcome(status="failed", detail="expired before it was handled")
        elif refusal is not None:
            log.warning("engine: refused %s %s: %s", command.kind, command.command_id, refusal)
            outcome = CommandOutcome(status="failed", detail=refusal)
        elif command.kind == "kill_drill":
            # Answered by the SDK, never by the engine's handler: nothing can trade on a drill,
            # and the trading state is left as it is (engine_sdk/drill.py).
            checks = await drill.halt_path_checks(
                handler=self.handler, gate=state.gate, directory=state.directory
            )
            status, detail = drill.outcome_of(checks)
            outcome = CommandOutcome(status=status, detail=detail, data={"checks": checks})
        else:
            handler = self.handler or default_command_handler
            try:
                outcome = await handler(command)
            except Exception as exc:
                log.exception("engine: command handler failed on %s", command.kind)
                outcome = CommandOutcome(status="failed", detail=f"handler error: {exc!r}")
        if command.kind == "set_limits" and outcome.status != "failed":
            version, note, complete = state.apply_limits(command.params)
            detail = "; ".join(text for text in (outcome.detail, note) if text)
            if not complete:
                # Limits the engine does not enforce must not read as enforced on the server,
                # which takes a succeeded set_limits as the version now in force.
                outcome = dataclasses.replace(outcome, status="partial")
            # The ceiling it now enforces, so that the server can tell (docs/going-live.md).
            data = {
                **outcome.data,
                "limits_version": version,
                "capital_ceiling": ceiling_text(state.capital_ceiling),
            }
            outcome = dataclasses.replace(outcome, detail=detail, data=data)
        if outcome.trading_state is not None:
            until = outcome.paused_until
            duration = command.params.get("duration")
            if (
                until is None
                and outcome.trading_state == "PAUSED"
                and isinstance(duration, int | float)
                and duration > 0
            ):
                until = utc_now() + timedelta(seconds=duration)
            reason = f"{command.kind} by {command.issued_by}: {command.reason}".rstrip(": ")
            state.set_by_command(outcome.trading_state, reason=reason[:1024], until=until)
        return self.result_frame(command, outcome)

    def refuse_unenforceable(self, command: Command) -> str | None:
        """Why a set_limits fails on an engine that cannot enforce limits, or None."""
        if command.kind != "set_limits" or self.enforces_limits:
            return None
        return (
            "this engine cannot enforce pre-trade limits (its orders do not go through "
            "check_order: EngineClient(enforces_limits=False)); "
            f"limits version {str(command.params.get('limits_version'))[:32]} not applied"
        )

    def result_frame(self, command: Command, outcome: CommandOutcome) -> CommandResult:
        """The result as the protocol bounds it (docs/protocol.md, section 2).

        A result the server would refuse would leave the command open, and sent again on every
        reconnection, for ever: U+0000 in the detail is replaced, and data out of bounds is
        dropped with the reason in the detail.
        """
        detail = outcome.detail.replace("\x00", "\ufffd")
        try:
            result = CommandResult(
                command_id=command.command_id,
                status=outcome.status,
                detail=detail[:8192],
                data=outcome.data,
                trading_state=self.state.state,
            )
            protocol.decode_engine_frame(protocol.encode(result))
        except (ValueError, TypeError, msgspec.MsgspecError) as exc:
            text, field_name = protocol.error_field(str(exc))
            log.warning("engine: %s result data dropped: %s (%s)", command.kind, text, field_name)
            note = f"result data dropped: {text} ({field_name or 'data'})"
            kept_detail = "; ".join(t for t in (detail, note) if t)
            result = CommandResult(
                command_id=command.command_id,
                status=outcome.status,
                detail=kept_detail[:8192],
                data={},
                trading_state=self.state.state,
            )
        return result

    async def cancel_working(self, timeout: float, reason: str | None) -> str:  # noqa: ASYNC109
        """Cancel the working orders through the engine's handler; say what happened."""
        handler = self.handler
        if handler is None:
            return "no engine command handler: working orders left as they are"
        command = Command(
            command_id=uuid.uuid4(),
            kind="cancel_all",
            issued_by="engine shutdown",
            reason=f"engine shutdown ({reason})",
            issued_at=utc_now(),
        )
        try:
            async with asyncio.timeout(timeout):
                outcome = await handler(command)
        except TimeoutError:
            return f"cancelling working orders did not finish within {timeout:g} s"
        except Exception as exc:
            log.exception("engine: cancelling working orders at shutdown failed")
            return f"cancelling working orders failed: {exc!r}"
        cancelled, working = outcome.data.get("cancelled"), outcome.data.get("working")
        if isinstance(cancelled, list) and isinstance(working, list):
            said = f"{len(cancelled)} working orders cancelled, {len(working)} still working"
            return f"{said} ({', '.join(map(str, working[:20]))})" if working else said
        return f"cancel_all {outcome.status}" + (f": {outcome.detail}" if outcome.detail else "")


def expired(command: Command) -> bool:
    return command.expires_at is not None and utc_now() >= command.expires_at


async def default_command_handler(command: Command) -> CommandOutcome:
    # Without an engine handler the SDK can change the trading state but cannot touch orders
    # or positions, and says so rather than pretend.
    untouched = "no engine command handler: trading state changed, orders untouched"
    match command.kind:
        case "pause":
            return CommandOutcome(status="succeeded", trading_state="PAUSED")
        case "resume":
            return CommandOutcome(status="succeeded", trading_state="ACTIVE")
        case "set_limits":
            return CommandOutcome(status="succeeded")
        case "kill":
            return CommandOutcome(status="partial", detail=untouched, trading_state="HALTED")
        case "reduce" | "flatten":
            return CommandOutcome(status="partial", detail=untouched, trading_state="REDUCING")
        case _:
            return CommandOutcome(status="failed", detail="no engine command handler")
