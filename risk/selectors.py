"""Reads of the risk limits: what applies to an engine, the revision engines must enforce."""

from __future__ import annotations

from typing import Any

from django.db.models import Max

from controlplane.models import Engine
from risk.models import PRE_TRADE, LimitState, RiskLimit, RiskLimitChange, Scope


def limits_revision() -> int:
    """Grows with every change of any limit; engines report the revision they enforce."""
    return RiskLimitChange.objects.aggregate(revision=Max("pk"))["revision"] or 0


def applies_to(limit: RiskLimit, engine: Engine) -> bool:
    if limit.scope == Scope.ENGINE:
        return limit.scope_value == engine.name
    if limit.scope == Scope.TAG:
        return limit.scope_value in (engine.strategy_tags or [])
    return True  # global, and sector / symbol scopes narrow what is measured, not who


def pretrade_limits_for(engine: Engine) -> tuple[int, list[dict[str, Any]]]:
    """The revision and the pre-trade limits the engine must enforce, in wire form."""
    revision = limits_revision()
    limits = RiskLimit.objects.filter(enabled=True, kind__in=PRE_TRADE).order_by("pk")
    return revision, [limit.wire() for limit in limits if applies_to(limit, engine)]


def limits_overview() -> list[dict[str, Any]]:
    """Every limit with each engine's utilisation, for the risk page (three queries)."""
    limits = list(RiskLimit.objects.order_by("-enabled", "kind", "pk"))
    states: dict[int, list[LimitState]] = {}
    for state in LimitState.objects.select_related("engine").order_by("engine__name"):
        states.setdefault(state.limit_id, []).append(state)
    return [{"limit": limit, "states": states.get(limit.pk, [])} for limit in limits]


def engines_on_old_limits() -> list[Engine]:
    """Connected engines that have not acknowledged the current revision."""
    revision = limits_revision()
    engines = Engine.objects.filter(is_active=True, connected=True).order_by("name")
    return [e for e in engines if (e.limits_version or 0) != revision]
