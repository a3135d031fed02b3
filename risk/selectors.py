"""Reads of the risk limits: what applies to an engine, the revision engines must enforce."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Max

from controlplane.models import Engine, Instrument, Position
from controlplane.sqlscript import Script
from risk.models import (
    PRE_TRADE,
    Allocation,
    AllocationScope,
    DeskCapital,
    LimitState,
    PortfolioLimitState,
    RiskLimit,
    RiskLimitChange,
    Scope,
)


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
    """Every limit with each engine's utilisation, and each portfolio limit's with each of its
    subjects' (fleet, tag, engine, pair), for the risk page (three queries)."""
    limits = list(RiskLimit.objects.order_by("-enabled", "kind", "pk"))
    states: dict[int, list[Any]] = {}
    for state in LimitState.objects.select_related("engine").order_by("engine__name"):
        state.label = state.engine.name
        states.setdefault(state.limit_id, []).append(state)
    for portfolio_state in PortfolioLimitState.objects.order_by("subject"):
        portfolio_state.label = portfolio_state.subject
        states.setdefault(portfolio_state.limit_id, []).append(portfolio_state)
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


@dataclass
class AllocationRow:
    """One engine's or tag's target share of the desk's capital against its actual share."""

    scope: str  # "engine" or "tag"
    name: str
    equity: Decimal | None
    target_pct: Decimal | None
    actual_pct: Decimal | None
    # actual - target, in percentage points; None when either is unknown.
    difference_pts: Decimal | None


@dataclass
class AllocationOverview:
    # What the shares are shares of: the desk's capital when set, else the fleet's equity.
    basis: str  # "desk capital" / "fleet equity"
    capital: Decimal | None
    engines: list[AllocationRow] = field(default_factory=list)
    tags: list[AllocationRow] = field(default_factory=list)
    engine_targets_pct: Decimal = Decimal(0)


def _row(
    scope: str, name: str, equity: Decimal | None, target: Decimal | None, capital: Decimal | None
) -> AllocationRow:
    actual = equity / capital * 100 if equity is not None and capital else None
    difference = actual - target if actual is not None and target is not None else None
    return AllocationRow(scope, name, equity, target, actual, difference)


# One round trip, as the fleet page asks it on every load: the desk's capital, the active
# engines' equity and tags, the enabled targets. Numbers travel as JSON text, exactly.
_ALLOCATION_SQL = f"""
    SELECT
      (SELECT amount FROM {DeskCapital._meta.db_table} WHERE id = 1),
      (SELECT json_agg(json_build_array(name, equity::text, strategy_tags) ORDER BY name)
         FROM {Engine._meta.db_table} WHERE is_active),
      (SELECT json_agg(json_build_array(scope, scope_value, target_pct::text))
         FROM {Allocation._meta.db_table} WHERE enabled)"""


def allocation_overview() -> AllocationOverview:
    """Target against actual share for every active engine and every tag with a target.
    Actual: the engine's equity (a tag's: its active engines' equity summed) over
    the desk's capital, or over the fleet's equity when no desk capital is set. Equities are
    summed as reported, in each engine's account currency: the desk is taken to account in one
    currency (docs/risk.md, "Allocation"). One query."""
    with connection.cursor() as cursor:
        cursor.execute(_ALLOCATION_SQL)
        desk_amount, engine_rows, target_rows = cursor.fetchone()
    engines = [
        (name, Decimal(str(equity)) if equity is not None else None, tags)
        for name, equity, tags in engine_rows or []
    ]
    targets = {(scope, value): Decimal(str(pct)) for scope, value, pct in target_rows or []}
    fleet_equity = sum((equity for _, equity, _ in engines if equity is not None), Decimal(0))
    if desk_amount is not None:
        basis, capital = "desk capital", desk_amount
    else:
        basis, capital = "fleet equity", fleet_equity if fleet_equity > 0 else None
    overview = AllocationOverview(basis=basis, capital=capital)
    for name, equity, _ in engines:
        target = targets.get((AllocationScope.ENGINE, name))
        overview.engines.append(_row(AllocationScope.ENGINE, name, equity, target, capital))
    overview.engine_targets_pct = sum(
        (t for (scope, _), t in targets.items() if scope == AllocationScope.ENGINE), Decimal(0)
    )
    for (scope, tag), target in sorted(targets.items()):
        if scope != AllocationScope.TAG:
            continue
        equities = [e for _, e, tags in engines if tag in (tags or []) and e is not None]
        equity = sum(equities, Decimal(0)) if equities else None
        overview.tags.append(_row(AllocationScope.TAG, tag, equity, target, capital))
    return overview
