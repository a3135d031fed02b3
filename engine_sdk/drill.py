"""The kill drill of an engine trading real money: its halt path verified, nothing traded.

The control plane sends ``kill_drill`` to an engine at a real-money stage (docs/going-live.md,
"The kill drill"). The SDK answers it itself: the command never reaches the engine's command
handler, so no engine code can trade on it, and the trading state does not change. What is
checked is what can be checked honestly without halting a live engine:

command_handler  an engine command handler is installed and is a coroutine function: the kill's
                 cancel and flatten have somewhere to go (without one, a kill only halts).
halt_gate        a gate in HALTED refuses a new order, and lets a liquidating order that shrinks
                 a position through (the flatten), as the engine's own gate would: the same code.
trading_gate     the engine's own gate answers (its state is read, not changed).
state_store      the journal directory takes an atomic write, as ``state.json`` does when a
                 kill halts the engine (a scratch file, written and removed).
probe            optional: the engine's own ``drill`` coroutine (an attribute of the handler, or
                 of the object whose method the handler is), called with no argument, answering
                 ``{check name: bool or (bool, detail)}``: e.g. its broker session can cancel.

The answer is ``succeeded`` with ``{"checks": {name: {"passed": bool, "detail": str}}}`` when
every check passes, else ``failed`` naming each check that did not.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from engine_sdk.gate import OrderRejected, TradingGate
from engine_sdk.journal import _write_atomically
from engine_sdk.protocol import CommandResultStatus

__all__ = ["PROBE_TIMEOUT_S", "halt_path_checks", "outcome_of"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
SCRATCH_FILE = "drill.tmp"

Check = dict[str, Any]


def _check(passed: bool, detail: str) -> Check:
    return {"passed": passed, "detail": detail[:500]}


def _is_coroutine_function(handler: Any) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - an object with async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _handler_check(handler: Callable[..., Awaitable[Any]] | None) -> Check:
    if handler is None:
        return _check(False, "no engine command handler: a kill would halt, not cancel or flatten")
    if not _is_coroutine_function(handler):
        return _check(False, f"the command handler {handler!r} is not a coroutine function")
    name = getattr(handler, "__qualname__", type(handler).__qualname__)
    return _check(True, f"{name} takes the kill's cancel and flatten")


def _halt_gate_check() -> Check:
    gate = TradingGate("HALTED")
    try:
        gate.check_order("DRILL", "buy", 1, 0)
    except OrderRejected:
        pass
    else:
        return _check(False, "a HALTED gate let a new order through")
    try:
        gate.check_order("DRILL", "sell", 1, 1, liquidating=True)
    except OrderRejected as exc:
        return _check(False, f"a HALTED gate refused the flatten of a position: {exc.reason}")
    return _check(True, "a HALTED gate refuses new orders and lets the flatten through")


def _trading_gate_check(gate: TradingGate) -> Check:
    try:
        state = gate.state
    except Exception as exc:
        return _check(False, f"the engine's gate did not answer: {exc!r}")
    return _check(True, f"the engine's gate answers: {state}")


def _write_scratch(directory: Path) -> None:
    path = directory / SCRATCH_FILE
    _write_atomically(path, [b"kill drill\n"], fsync=True)
    os.remove(path)


async def _state_store_check(directory: Path) -> Check:
    started = time.monotonic()
    try:
        await asyncio.to_thread(_write_scratch, directory)
    except OSError as exc:
        return _check(False, f"{directory} cannot be written: {exc}")
    ms = (time.monotonic() - started) * 1000
    return _check(True, f"{directory} takes an atomic write ({ms:.1f} ms with fsync)")


def _probe_of(handler: Any) -> Callable[[], Awaitable[Any]] | None:
    if handler is None:
        return None
    probe = getattr(handler, "drill", None)
    if probe is None:
        probe = getattr(getattr(handler, "__self__", None), "drill", None)
    return probe if callable(probe) else None


async def _probe_checks(probe: Callable[[], Awaitable[Any]]) -> dict[str, Check]:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            answer = await probe()
    except TimeoutError:
        return {"probe": _check(False, f"the engine's drill probe took over {PROBE_TIMEOUT_S} s")}
    except Exception as exc:
        log.exception("engine: the drill probe failed")
        return {"probe": _check(False, f"the engine's drill probe raised {exc!r}")}
    if not isinstance(answer, Mapping) or not answer:
        return {"probe": _check(False, f"the engine's drill probe answered {answer!r}")}
    checks = {}
    for name, value in list(answer.items())[:20]:
        passed, detail = (value if isinstance(value, tuple) else (value, ""))[:2]
        if not isinstance(passed, bool):
            passed, detail = False, f"answered {value!r}, not a bool"
        checks[f"probe:{str(name)[:60]}"] = _check(passed, str(detail))
    return checks


async def halt_path_checks(
    *,
    handler: Callable[..., Awaitable[Any]] | None,
    gate: TradingGate,
    directory: Path,
) -> dict[str, Check]:
    """Each check of the halt path, by name; none changes the trading state or trades."""
    checks = {
        "command_handler": _handler_check(handler),
        "halt_gate": _halt_gate_check(),
        "trading_gate": _trading_gate_check(gate),
        "state_store": await _state_store_check(directory),
    }
    probe = _probe_of(handler)
    if probe is not None:
        checks.update(await _probe_checks(probe))
    return checks


def outcome_of(checks: Mapping[str, Check]) -> tuple[CommandResultStatus, str]:
    """(result status, detail): succeeded when every check passed, else failed naming each."""
    failed = [f"{name}: {check['detail']}" for name, check in checks.items() if not check["passed"]]
    if failed:
        return "failed", "halt path not verified: " + "; ".join(failed)
    return "succeeded", f"halt path verified ({len(checks)} checks); nothing traded"
