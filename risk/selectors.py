"""Reads of the risk limits: what applies to an engine, the revision engines must enforce."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Max

from controlplane.models import Engine, Instrument, Position
from controlplane.sqlscript import Script
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


def on_limits_wanted(sender: Any, *, engine: Engine, **kwargs: Any) -> tuple[int, list[Any]]:
    """controlplane.events.limits_wanted: the limits of an engine's welcome."""
    return pretrade_limits_for(engine)


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


@dataclass
class PostTradeInputs:
    """What the post-trade limits of one engine are measured on, and where they stand."""

    # symbol, sector, quantity, last price, average price, multiplier, currency of each open
    # position
    positions: list[tuple[str, str, Decimal, Decimal | None, Decimal, Decimal, str]] = field(
        default_factory=list
    )
    states: dict[int, LimitState] = field(default_factory=dict)  # by limit id


_STATE_FIELDS = list(LimitState._meta.concrete_fields)
_STATE_SELECT = (
    f"SELECT {', '.join(f.column for f in _STATE_FIELDS)} FROM {LimitState._meta.db_table} "
    "WHERE engine_id = %s AND limit_id = ANY(%s::bigint[])"
)


_OPEN_POSITIONS_SQL = f"""
    SELECT i.symbol, i.sector, p.quantity, p.last_price, p.avg_price, i.multiplier, i.currency
      FROM {Position._meta.db_table} p JOIN {Instrument._meta.db_table} i ON i.id = p.instrument_id
     WHERE p.engine_id = %s AND NOT p.quantity = 0"""


def post_trade_inputs(
    *,
    engine_id: int,
    limit_ids: list[int],
    positions: bool,
) -> PostTradeInputs:
    """The engine's open positions (when ``positions``) and its states of the given limits: one
    round trip, as it follows every stored batch. Today's counts of orders and fills are on the
    engine row (Engine.day_counts). The positions are planned each time (the table grows); the
    limits' states are prepared."""
    with connection.cursor() as cursor:
        script = Script(cursor)
        if positions:
            script.add(
                _OPEN_POSITIONS_SQL,
                [engine_id],
                fetch="positions",
                prepare=False,
            )
        ids = "{" + ",".join(str(int(limit_id)) for limit_id in limit_ids) + "}"
        script.add(_STATE_SELECT, [engine_id, ids], fetch="states")
        rows = script.run()
    names = [f.attname for f in _STATE_FIELDS]
    states = [LimitState.from_db(connection.alias, names, row) for row in rows["states"]]
    return PostTradeInputs(
        positions=rows.get("positions", []),  # type: ignore[arg-type]
        states={state.limit_id: state for state in states},
    )
