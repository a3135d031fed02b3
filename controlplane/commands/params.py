"""What each kind of command takes, checked before anything is written."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from controlplane.commands.errors import CommandInvalid
from controlplane.models import CommandKind, Stage
from engine_sdk import protocol as p

MAX_PAUSE_S = 7 * 24 * 3600

# The parameters each kind takes.
_ALLOWED = {
    CommandKind.PAUSE: {"duration", "cancel_open"},
    CommandKind.RESUME: set(),
    # strategy_id: the one strategy of the engine's they act on (docs/protocol.md, section 8).
    CommandKind.REDUCE: {"target_pct", "symbols", "strategy_id"},
    CommandKind.FLATTEN: {"symbols", "strategy_id"},
    CommandKind.CANCEL_ALL: {"symbols", "strategy_id"},
    CommandKind.KILL: {"flatten"},
    CommandKind.SET_LIMITS: {"limits_version", "limits", "stage", "capital_ceiling"},
    CommandKind.KILL_DRILL: set(),
}


def _symbols(params: dict[str, Any], errors: dict[str, str]) -> list[str] | None:
    symbols = params.get("symbols")
    if symbols is None:
        return None
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(
            isinstance(s, str) and s.strip() and len(s) <= p.MAX_SYMBOL_LENGTH for s in symbols
        )
    ):
        errors["symbols"] = "symbols must be a non-empty list of instrument symbols"
        return None
    return sorted({s.strip() for s in symbols})


def _positive_decimal(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    try:
        value = Decimal(text)
    except InvalidOperation:
        return False
    return value.is_finite() and value > 0


def command_params_clean(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a command's parameters; the error names each bad field."""
    params = dict(params or {})
    errors: dict[str, str] = {}
    if kind not in _ALLOWED:
        choices = ", ".join(CommandKind.values)
        raise CommandInvalid({"kind": f"unknown command {kind!r}; one of {choices}"})
    unknown = sorted(set(params) - _ALLOWED[kind])  # type: ignore[index]
    for name in unknown:
        errors[name] = f"{kind} takes no parameter {name!r}"
    clean: dict[str, Any] = {}
    if kind == CommandKind.PAUSE:
        duration = params.get("duration")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                errors["duration"] = "duration is a number of seconds"
            elif not 0 < duration <= MAX_PAUSE_S:
                errors["duration"] = f"duration must be from 1 to {MAX_PAUSE_S} seconds"
            else:
                clean["duration"] = int(duration) if float(duration).is_integer() else duration
        cancel_open = params.get("cancel_open", False)
        if not isinstance(cancel_open, bool):
            errors["cancel_open"] = "cancel_open must be true or false"
        clean["cancel_open"] = bool(cancel_open)
    elif kind == CommandKind.REDUCE:
        target = params.get("target_pct")
        if target is None:
            errors["target_pct"] = "reduce needs target_pct: the % of each position to keep"
        elif isinstance(target, bool) or not isinstance(target, int | float):
            errors["target_pct"] = "target_pct must be a number from 0 to 100"
        elif not 0 <= target < 100:
            errors["target_pct"] = "target_pct must be at least 0 and below 100"
        else:
            clean["target_pct"] = target
    elif kind == CommandKind.KILL:
        flatten = params.get("flatten", True)
        if not isinstance(flatten, bool):
            errors["flatten"] = "flatten must be true or false"
        clean["flatten"] = flatten is not False
    elif kind == CommandKind.SET_LIMITS:
        version = params.get("limits_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            errors["limits_version"] = "limits_version must be a whole number"
        if not isinstance(params.get("limits"), list):
            errors["limits"] = "limits must be a list"
        clean = {"limits_version": version, "limits": params.get("limits")}
        # The engine's stage and capital ceiling travel with its limits (controlplane.capital).
        if "stage" in params:
            if params["stage"] not in Stage.values:
                errors["stage"] = f"stage must be one of {', '.join(Stage.values)}"
            clean["stage"] = params["stage"]
        if "capital_ceiling" in params:
            ceiling = params["capital_ceiling"]
            if ceiling is not None and not _positive_decimal(ceiling):
                errors["capital_ceiling"] = "capital_ceiling is a positive decimal string or null"
            clean["capital_ceiling"] = ceiling
    if kind in (CommandKind.REDUCE, CommandKind.FLATTEN, CommandKind.CANCEL_ALL):
        symbols = _symbols(params, errors)
        if symbols is not None:
            clean["symbols"] = symbols
        if "strategy_id" in params:
            strategy = params["strategy_id"]
            if (
                not isinstance(strategy, str)
                or not 1 <= len(strategy) <= 64
                or "\x00" in strategy
                or strategy != strategy.strip()
            ):
                errors["strategy_id"] = "strategy_id is the id of one strategy (1-64 characters)"
            else:
                clean["strategy_id"] = strategy
    if errors:
        raise CommandInvalid(errors)
    return clean
