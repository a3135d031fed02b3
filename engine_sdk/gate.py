"""The pre-trade gate: which orders the engine's trading state allows.

| state    | new orders allowed                                          | cancels |
| -------- | ----------------------------------------------------------- | ------- |
| ACTIVE   | any                                                         | yes     |
| PAUSED   | only orders that shrink a position without crossing zero    | yes     |
| REDUCING | only orders that shrink a position without crossing zero    | yes     |
| HALTED   | none (latched: only an explicit state change lifts it)      | yes     |

Under HALTED, the orders a kill itself sends to flatten (``liquidating=True``) follow the REDUCING
rule: they may shrink a position without crossing zero.

PAUSED may carry an end time, after which the gate goes back to ACTIVE by itself. REDUCING is
what reduce and flatten leave behind: the engine is working positions down. HALTED is what kill
leaves behind; nothing inside the engine (pause timers, the dead-man) moves it out of HALTED.

A gate may be used from several threads: one re-entrant lock orders its changes, and ``on_change``
runs under it, on the thread that made the change, so changes are reported in the order they
happened (a callback may read the gate, and must not wait for another thread that uses it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import get_args

from engine_sdk.protocol import Side, TradingState, utc_now

__all__ = ["OrderRejected", "StateChange", "TradingGate"]

_STATES: frozenset[str] = frozenset(get_args(TradingState))


class OrderRejected(Exception):
    """The gate refused an order; ``reason`` says why in words fit for a log or a reject event."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StateChange:
    old: TradingState
    new: TradingState
    reason: str
    at: datetime
    paused_until: datetime | None = None


class TradingGate:
    def __init__(
        self,
        state: TradingState = "ACTIVE",
        *,
        paused_until: datetime | None = None,
        clock: Callable[[], datetime] = utc_now,
        on_change: Callable[[StateChange], None] | None = None,
    ) -> None:
        if state not in _STATES:
            raise ValueError(f"unknown trading state {state!r}")
        if paused_until is not None and paused_until.tzinfo is None:
            raise ValueError("paused_until must be timezone-aware")
        self._state: TradingState = state
        self._paused_until = paused_until if state == "PAUSED" else None
        self._clock = clock
        self.on_change = on_change
        self._lock = threading.RLock()

    @property
    def state(self) -> TradingState:
        # The end of a timed pause is noticed on read, so no timer is needed for correctness; the
        # client also polls this so that the resume is reported promptly.
        with self._lock:
            if (
                self._state == "PAUSED"
                and self._paused_until is not None
                and self._clock() >= self._paused_until
            ):
                self._change("ACTIVE", reason="pause ended", until=None)
            return self._state

    @property
    def paused_until(self) -> datetime | None:
        with self._lock:
            return self._paused_until if self.state == "PAUSED" else None

    def set_state(
        self, state: TradingState, *, reason: str = "", until: datetime | None = None
    ) -> bool:
        """Move to ``state`` unconditionally (the caller has the authority, e.g. a command).

        ``until`` only applies to PAUSED. Returns whether anything changed.
        """
        if state not in _STATES:
            raise ValueError(f"unknown trading state {state!r}")
        if until is not None and until.tzinfo is None:
            raise ValueError("until must be timezone-aware")
        until = until if state == "PAUSED" else None
        with self._lock:
            if state == self._state and until == self._paused_until:
                return False
            self._change(state, reason=reason, until=until)
            return True

    def pause(self, *, until: datetime | None = None, reason: str = "") -> bool:
        """Pause an ACTIVE (or re-time a PAUSED) engine; REDUCING and HALTED are left alone.

        Both are at least as strict as PAUSED, and a timed pause would later loosen them to ACTIVE.
        """
        with self._lock:
            if self.state not in ("ACTIVE", "PAUSED"):
                return False
            return self.set_state("PAUSED", reason=reason, until=until)

    def resume(self, *, reason: str = "") -> bool:
        return self.set_state("ACTIVE", reason=reason)

    def reduce(self, *, reason: str = "") -> bool:
        with self._lock:
            if self.state == "HALTED":
                return False
            return self.set_state("REDUCING", reason=reason)

    def halt(self, *, reason: str = "") -> bool:
        return self.set_state("HALTED", reason=reason)

    def _change(self, state: TradingState, *, reason: str, until: datetime | None) -> None:
        old = self._state
        self._state = state
        self._paused_until = until
        if self.on_change is not None:
            self.on_change(
                StateChange(old=old, new=state, reason=reason, at=self._clock(), paused_until=until)
            )

    def check_order(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal | int,
        current_position: Decimal | int,
        *,
        liquidating: bool = False,
    ) -> None:
        """Raise OrderRejected unless the current state allows this new order.

        ``current_position`` is signed (negative is short). To stay strict when several reducing
        orders are working at once, pass the position net of those working orders.
        ``liquidating`` marks an order sent by a kill or flatten command to close a position:
        HALTED lets it through when it shrinks the position without crossing zero.
        """
        if quantity <= 0:
            raise OrderRejected(f"{symbol}: quantity must be positive, got {quantity}")
        if side not in ("buy", "sell"):
            raise OrderRejected(f"{symbol}: unknown side {side!r}")
        state = self.state
        if state == "ACTIVE":
            return
        if state == "HALTED" and not liquidating:
            raise OrderRejected(f"{symbol}: trading is HALTED; only cancels are allowed")
        signed = quantity if side == "buy" else -quantity
        after = current_position + signed
        if current_position == 0 or abs(after) >= abs(current_position):
            raise OrderRejected(
                f"{symbol}: trading is {state}; only orders that reduce a position are allowed "
                f"({side} {quantity} against a position of {current_position})"
            )
        if (after > 0) != (current_position > 0) and after != 0:
            raise OrderRejected(
                f"{symbol}: trading is {state}; {side} {quantity} would cross zero from a "
                f"position of {current_position}"
            )

    def check_cancel(self) -> None:
        """Cancels are allowed in every state; present so call sites read the same."""
        return None
