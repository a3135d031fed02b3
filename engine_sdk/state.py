"""The engine's trading state as the client keeps it: the gate, its file, the pre-trade limits,
the stage and the capital ceiling.

The trading state and the last limits received survive a restart (``state.json`` and
``limits.json`` in the journal directory, the stage and the ceiling with the limits): a killed
engine must not come back ACTIVE, nor trade without its limits or above its ceiling, before it
has even reached the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, get_args

import msgspec

from engine_sdk import protocol
from engine_sdk.ceiling import CapitalCeiling, ceiling_from, ceiling_text, parse_ceiling
from engine_sdk.errors import EngineClientError
from engine_sdk.gate import OrderRejected, StateChange, TradingGate
from engine_sdk.journal import _write_atomically
from engine_sdk.limits import LimitRejected, PreTradeLimits, to_decimal
from engine_sdk.protocol import Command, Side, Stage, TradingState, Welcome

__all__ = ["LIMITS_FILE", "STATE_FILE", "StateListener", "StateStore"]

log = logging.getLogger(__name__)

STATE_FILE: Final = "state.json"
LIMITS_FILE: Final = "limits.json"
_STAGES: Final = frozenset(get_args(Stage))

StateListener = Callable[[StateChange], Any]

# One thread writes the trading state of every client in the process, in the order the writes
# are handed to it, so each client's writes keep their order. A thread of each client's own
# cost far more when a process runs many clients: after every system call of every write, the
# threads and the event loop woke each other for the GIL. bench/sdk_kill.py (100 clients, a bare
# local server): the last client of a round halted 18 to 21 ms after the kill at the median
# with a thread each, 10 to 13 ms with this one.
_state_writer_lock = threading.Lock()
_state_writer: tuple[int, ThreadPoolExecutor] | None = None


def _shared_state_writer() -> ThreadPoolExecutor:
    global _state_writer
    with _state_writer_lock:
        if _state_writer is None or _state_writer[0] != os.getpid():
            # A forked child has no copy of its parent's thread: it starts one of its own.
            _state_writer = (
                os.getpid(),
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-state"),
            )
        return _state_writer[1]


class _PersistedState(msgspec.Struct, kw_only=True):
    trading_state: TradingState = "ACTIVE"
    paused_until: datetime | None = None
    dead_man: bool = False
    # When the newest kill this engine obeyed was issued: a resume issued before it is stale.
    halted_at: datetime | None = None


class StateStore:
    """The trading gate, what moves it, the limits ``check_order`` enforces, and their files.

    ``check_order`` may be called from any thread. Every change of the trading state is saved,
    reported to the server as a ``state`` event (through ``emit``) and passed to the listeners.
    """

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool,
        emit: Callable[[protocol.Event], int],
    ) -> None:
        self.directory = directory
        self._fsync = fsync
        self._emit = emit
        self._listeners: list[StateListener] = []
        # Once the client is closed, changes are saved but no longer reported to the server.
        self.reporting = True
        # The trading state is written to disk in order by the process's state writer thread
        # (save); once close has begun, on the caller's thread.
        self._state_saved: Future[None] | None = None
        self.sync_writes = False
        persisted = self._load_state()
        self.dead_man_paused = persisted.dead_man
        self.halted_at = persisted.halted_at
        self.gate = TradingGate(
            persisted.trading_state,
            paused_until=persisted.paused_until,
            on_change=self._on_change,
        )
        # What the server wants the engine to be, from the latest welcome.
        self.desired_state: TradingState | None = None
        # Why the engine is shutting down on purpose (shutdown), once it is: no new orders.
        self.stopping: str | None = None

        self.limits_version: int | None = None
        self.limits: list[dict[str, Any]] = []
        # The pre-trade limits enforced by check_order: the last ones received, kept on disk so
        # that a restarted engine enforces them before it reaches the server.
        self.pretrade: PreTradeLimits | None = None
        # Why the limits are unknown (limits.json unreadable): new orders are refused until the
        # server sends limits.
        self.limits_unknown: str | None = None
        self._saved_limits: bytes | None = None
        # The limits' rate and duplicate windows are not thread-safe; check_order and a change
        # of limits take turns.
        self._limits_lock = threading.Lock()
        # The engine's stage and its capital ceiling, as the control plane last said them.
        self.stage: Stage | None = None
        self.capital = CapitalCeiling()
        self._load_limits()

    # --- the trading state -----------------------------------------------------------------

    @property
    def state(self) -> TradingState:
        return self.gate.state

    @property
    def limits_version_enforced(self) -> int | None:
        pretrade = self.pretrade
        return pretrade.version if pretrade is not None else None

    def add_listener(self, listener: StateListener) -> Callable[[], None]:
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _on_change(self, change: StateChange) -> None:
        self.save(change.new, change.paused_until)
        if self.reporting:
            event = protocol.StateEvent(
                ts=change.at, trading_state=change.new, reason=change.reason[:1024]
            )
            # A full backlog or a client closing meanwhile: the state is saved all the same.
            with contextlib.suppress(EngineClientError):
                self._emit(event)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                log.exception("engine: state change listener failed")

    def set_by_command(
        self, state: TradingState, *, reason: str, until: datetime | None = None
    ) -> None:
        """The state a command's outcome asks for; any command ends a dead-man pause."""
        self.dead_man_paused = False
        self.gate.set_state(state, reason=reason, until=until)

    def halt_for(self, command: Command) -> None:
        """A kill arrived: HALTED at once, and remember when it was issued."""
        if self.halted_at is None or command.issued_at > self.halted_at:
            self.halted_at = command.issued_at
        self.dead_man_paused = False
        reason = f"kill by {command.issued_by}: {command.reason}".rstrip(": ")
        if not self.gate.halt(reason=reason[:1024]):
            self.save(self.gate.state, self.gate.paused_until)

    def refuse_resume(self, command: Command) -> str | None:
        """Why a resume may not lift a kill, or None. Checked here, whatever the handler says."""
        if command.kind != "resume" or self.gate.state != "HALTED":
            return None
        if self.halted_at is not None and command.issued_at < self.halted_at:
            return "stale resume: issued before the kill that halted this engine"
        if not command.params.get("approved_by"):
            return "a resume out of HALTED needs a second person's approval (approved_by)"
        return None

    def dead_man_pause(self, after_s: float) -> None:
        """The server went silent: an ACTIVE engine is paused (and only such a pause is lifted)."""
        if self.gate.state == "ACTIVE":
            self.dead_man_paused = True
            self.gate.pause(reason=f"dead-man: no server for {after_s:g} s")

    def server_back(self) -> None:
        """The server is heard again: lift the dead-man's pause if it wants the engine ACTIVE."""
        if self.dead_man_paused and self.desired_state == "ACTIVE":
            self._lift_dead_man_pause()

    def _lift_dead_man_pause(self) -> None:
        # Only a pause the dead-man itself put in place is lifted, and only when the server wants
        # the engine ACTIVE; any command since then has cleared the flag.
        self.dead_man_paused = False
        if self.gate.state == "PAUSED":
            self.gate.resume(reason="dead-man: server is back")
        else:
            self.save(self.gate.state, self.gate.paused_until)

    def take_welcome(self, welcome: Welcome) -> None:
        """The desired state, the limits, the stage and the capital ceiling of a welcome; the
        server's replace ours."""
        self.desired_state = welcome.desired_state
        self.limits_version = welcome.limits_version
        self.limits = list(welcome.limits)
        self.stage = welcome.stage
        try:
            ceiling = parse_ceiling(welcome.capital_ceiling)
        except ValueError as exc:
            ceiling, unreadable = None, str(exc)
        else:
            unreadable = None
        self.capital.ceiling = ceiling
        # The server's limits replace whatever this engine had, older version or not.
        self.enforce_limits(PreTradeLimits(welcome.limits_version, self.limits), self.limits)
        if unreadable is not None:
            # Fail closed: an engine whose ceiling cannot be read must not trade as if it had none.
            with self._limits_lock:
                self.limits_unknown = (
                    f"capital ceiling unknown ({unreadable}); new orders are refused until the "
                    "control plane sends one this SDK can read"
                )
            log.error("engine: %s", self.limits_unknown)

    def follow_welcome(self, welcome: Welcome) -> None:
        """Once the session is set up, follow the state the server wants."""
        self.server_back()
        if welcome.desired_state == "HALTED" and self.gate.state != "HALTED":
            # Latched on the server: stop at once; the kill that comes with the welcome then
            # cancels and flattens.
            self.dead_man_paused = False
            self.gate.halt(reason="the control plane holds this engine HALTED")

    # --- the state file --------------------------------------------------------------------

    def _load_state(self) -> _PersistedState:
        # The trading state survives a restart: a killed engine must not come back ACTIVE before
        # it has even reached the server.
        try:
            return msgspec.json.decode(
                (self.directory / STATE_FILE).read_bytes(), type=_PersistedState
            )
        except FileNotFoundError:
            return _PersistedState()
        except msgspec.MsgspecError:
            log.warning("engine: unreadable %s; starting PAUSED", STATE_FILE)
            return _PersistedState(trading_state="PAUSED")

    def save(self, trading_state: TradingState, paused_until: datetime | None) -> None:
        """Write the trading state to disk, on the process's state writer thread, in the order of
        the changes. Not on the event loop: its fsync would stall everything else the loop runs (the
        engine's market data, its orders, other engines sharing the process). A kill's ack waits
        for the write (written); ``close`` waits for every write."""
        state = _PersistedState(
            trading_state=trading_state,
            paused_until=paused_until,
            dead_man=self.dead_man_paused,
            halted_at=self.halted_at,
        )
        data = [msgspec.json.encode(state)]
        path = self.directory / STATE_FILE
        if self.sync_writes:
            _write_atomically(path, data, fsync=self._fsync)
            return
        try:
            self._state_saved = _shared_state_writer().submit(
                _write_atomically, path, data, fsync=self._fsync
            )
        except RuntimeError:  # the interpreter is shutting down: no thread to hand it to
            _write_atomically(path, data, fsync=self._fsync)

    def save_current(self) -> None:
        self.save(self.gate.state, self.gate.paused_until)

    async def written(self) -> None:
        """Wait until the last trading state handed to the state writer is on disk."""
        saved = self._state_saved
        if saved is None:
            return
        try:
            # Shielded: a waiter that is cancelled (the reader, when the connection drops) must
            # not cancel the write itself, which it would while the write waits its turn.
            await asyncio.shield(asyncio.wrap_future(saved))
        except OSError:
            # The engine stays in the state it is in; only a restart would not know it.
            log.exception("engine: could not write %s", STATE_FILE)

    # --- orders and limits -----------------------------------------------------------------

    def check_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        *,
        price: Decimal | int | None = None,
        reference_price: Decimal | int | None = None,
        sector: str | None = None,
        liquidating: bool = False,
    ) -> None:
        """See EngineClient.check_order; safe from any thread."""
        if self.stopping is not None and not liquidating:
            raise OrderRejected(f"engine shutting down ({self.stopping}): no new orders")
        self.gate.check_order(symbol, side, quantity, current_position, liquidating=liquidating)
        if liquidating:
            return
        with self._limits_lock:
            if self.limits_unknown is not None:
                raise LimitRejected(self.limits_unknown, limit_id=None, limit_kind="limits_unknown")
            pretrade = self.pretrade
            now = time.monotonic()
            if pretrade is not None:
                pretrade.check(symbol, side, quantity, price, reference_price, sector, now)
            if self.capital.ceiling is not None:
                self._check_ceiling(
                    symbol, side, quantity, current_position, price, reference_price
                )
            if pretrade is not None:
                # Counted in the windows only once every check has passed.
                pretrade.record(symbol, side, quantity, price, sector, now)

    def _check_ceiling(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        price: Decimal | int | None,
        reference_price: Decimal | int | None,
    ) -> None:
        qty, position = to_decimal(quantity), to_decimal(current_position)
        if qty is None or position is None:
            raise LimitRejected(
                f"capital ceiling {self.capital.ceiling}: quantity {quantity!r} or position "
                f"{current_position!r} is not a number",
                limit_id=None,
                limit_kind="capital_ceiling",
            )
        at = to_decimal(price) if price is not None else to_decimal(reference_price)
        self.capital.check(symbol, side, qty, position, at)

    @staticmethod
    def refuse_limits(command: Command) -> str | None:
        """Why a set_limits cannot be applied at all, or None (single bad limits are skipped)."""
        if command.kind != "set_limits":
            return None
        try:
            PreTradeLimits.from_wire(command.params)
            ceiling_from(command.params)
        except ValueError as exc:
            return f"set_limits not applied: {exc}"
        return None

    def apply_limits(self, params: Mapping[str, Any]) -> tuple[int, str, bool]:
        """Enforce the limits of a set_limits; return the version enforced, a note, and
        whether every limit of it is enforced (the note then names those that are not)."""
        limits = PreTradeLimits.from_wire(params)
        current = self.pretrade
        if current is not None and limits.version < current.version:
            # A set_limits delivered late (say, pending across a reconnect whose welcome already
            # carried a newer version) must not roll the limits back.
            note = f"limits version {limits.version} is older than {current.version}; not applied"
            log.warning("engine: %s", note)
            return current.version, note, True
        self.limits_version = limits.version
        self.limits = list(params["limits"])
        # A set_limits from a server that predates stages says neither: both stay as they are.
        said, ceiling = ceiling_from(params)
        if said:
            self.capital.ceiling = ceiling
        stage = params.get("stage")
        if stage in _STAGES:
            self.stage = stage
        elif stage is not None:
            log.warning("engine: ignoring unknown stage %r in set_limits", str(stage)[:32])
        self.enforce_limits(limits, self.limits)
        missing = limits.not_enforced
        if missing:
            shown = "; ".join(missing[:20]) + (
                f"; and {len(missing) - 20} more" if len(missing) > 20 else ""
            )
            note = f"{len(missing)} of {len(missing) + len(limits)} limits not enforced: {shown}"
            return limits.version, note, False
        return limits.version, "", True

    @property
    def capital_ceiling(self) -> Decimal | None:
        return self.capital.ceiling

    def enforce_limits(self, limits: PreTradeLimits, raw: list[Any]) -> None:
        with self._limits_lock:
            if self.pretrade is not None:
                limits.take_history_from(self.pretrade)
            self.pretrade = limits
            if self.limits_unknown is not None:
                log.info("engine: pre-trade limits version %d received", limits.version)
                self.limits_unknown = None
        self._save_limits(limits.version, raw)
        log.info(
            "engine: enforcing pre-trade limits version %d (%d limits)", limits.version, len(limits)
        )

    def _load_limits(self) -> None:
        path = self.directory / LIMITS_FILE
        try:
            data = path.read_bytes()
            saved = msgspec.json.decode(data)
            self.pretrade = PreTradeLimits.from_wire(saved)
            _, self.capital.ceiling = ceiling_from(saved)
        except FileNotFoundError:
            return
        except (OSError, msgspec.MsgspecError, ValueError) as exc:
            # Fail closed: trading on no limits when there were some would defeat them.
            self.limits_unknown = (
                f"pre-trade limits unknown ({LIMITS_FILE} unreadable: {exc}); new orders are "
                "refused until the control plane sends limits"
            )
            log.error("engine: %s", self.limits_unknown)
            return
        self.limits_version = self.pretrade.version
        self.limits = list(saved["limits"])
        stage = saved.get("stage")
        self.stage = stage if stage in _STAGES else None
        self._saved_limits = data

    def _save_limits(self, version: int, raw: list[Any]) -> None:
        try:
            data = msgspec.json.encode(
                {
                    "limits_version": version,
                    "limits": raw,
                    "stage": self.stage,
                    "capital_ceiling": ceiling_text(self.capital.ceiling),
                }
            )
        except (msgspec.EncodeError, TypeError) as exc:
            log.error("engine: cannot keep pre-trade limits in %s: %s", LIMITS_FILE, exc)
            return
        if data == self._saved_limits:
            return
        try:
            _write_atomically(self.directory / LIMITS_FILE, [data], fsync=self._fsync)
        except OSError:
            log.exception("engine: could not write %s", LIMITS_FILE)
            return
        self._saved_limits = data
