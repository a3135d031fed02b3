"""What an engine is told of its stage and its capital ceiling, with its pre-trade limits.

Every ``set_limits`` the control plane sends carries, beside the limits, the engine's stage and
its capital ceiling (its ramp's share of its target capital, a decimal string, or null: no
ceiling), so that the SDK caps its gross exposure before each order from the moment the ceiling
changes (docs/going-live.md, the capital ramp; docs/protocol.md, set_limits).
"""

from __future__ import annotations

import logging
from typing import Any

from controlplane.commands import issuing
from controlplane.events import limits_for
from controlplane.models import Command, CommandKind, Engine

log = logging.getLogger(__name__)


def ceiling_text(engine: Engine) -> str | None:
    """The engine's capital ceiling as the wire carries it: a decimal string, None for none."""
    ceiling = engine.capital_ceiling
    return None if ceiling is None else str(ceiling)


def set_limits_params(engine: Engine, revision: int, limits: list[Any]) -> dict[str, Any]:
    """The params of a set_limits to ``engine``: its limits, its stage and its ceiling."""
    return {
        "limits_version": revision,
        "limits": limits,
        "stage": engine.stage,
        "capital_ceiling": ceiling_text(engine),
    }


def engine_limits_push(engine: Engine, *, reason: str) -> Command | None:
    """Send ``engine``, if it is connected, a set_limits with its current limits, stage and
    capital ceiling, read afresh; returns the command, None when it is not connected (its next
    welcome carries the same). Called after the commit of what changed them."""
    fresh = (
        Engine.objects.filter(pk=engine.pk, is_active=True, connected=True)
        .only("pk", "name", "stage", "target_capital", "capital_pct", "strategy_tags")
        .first()
    )
    if fresh is None:
        return None
    revision, limits = limits_for(fresh)
    batch = issuing.command_issue(
        kind=CommandKind.SET_LIMITS,
        selector=f"engine:{fresh.name}",
        reason=reason,
        actor=None,
        actor_label=f"risk limits r{revision}",
        params=set_limits_params(fresh, revision, limits),
    )
    return batch.commands.get()


def engine_limits_push_robust(engine: Engine, *, reason: str) -> None:
    """``engine_limits_push`` after a commit: what changed is stored, and the engine's next
    welcome carries it, so a failure to push is logged, never raised."""
    try:
        engine_limits_push(engine, reason=reason)
    except Exception:
        log.exception("set_limits to engine %s failed", engine.pk)
