"""Reads the dashboard's pages need beyond the engines domain's own selectors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection
from django.db.models import Count, F, Func, Q, QuerySet

from controlplane.commands import issuing
from controlplane.models import (
    AuditEvent,
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    TradingState,
)
from controlplane.selectors import position_figures


def audit_actions() -> list[str]:
    return list(AuditEvent.objects.order_by("action").values_list("action", flat=True).distinct())


def audit_event_list(
    *,
    actor: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events newest first; ``target`` matches the target's label, id or type."""
    events = AuditEvent.objects.all()
    if actor:
        events = events.filter(actor__iexact=actor)
    if action:
        events = events.filter(action=action)
    if outcome:
        events = events.filter(outcome=outcome)
    if target:
        events = events.filter(
            Q(target_label__icontains=target)
            | Q(target_id__iexact=target)
            | Q(target_type__iexact=target)
        )
    if since is not None:
        events = events.filter(ts__gte=since)
    if until is not None:
        events = events.filter(ts__lt=until)
    return events.order_by("-ts", "-pk")


def strategy_tags() -> list[str]:
    """Every strategy tag of the active engines, for the fleet's filter and selection menus."""
    tags = (
        Engine.objects.filter(is_active=True)
        .annotate(tag=Func(F("strategy_tags"), function="unnest"))
        .values_list("tag", flat=True)
        .distinct()
        .order_by("tag")
    )
    return list(tags)


@dataclass(frozen=True)
class FleetKill:
    """The latest kill of every engine, while it still holds some of them HALTED."""

    batch_id: str
    by: str
    at: datetime
    reason: str
    halted: int  # engines it still holds


# The latest fleet-wide kill (batch_fleet_kill_idx) and how many engines it still holds: those
# it was sent to that are HALTED and whose desired state has not changed since (issuing writes
# the batch and the engines' desired states with one timestamp, and a resume changes it; an
# engine already HALTED before the kill kept its earlier time).
_FLEET_KILL_SQL = f"""
SELECT b.id, b.issued_by_label, b.created_at, b.reason,
       (SELECT count(*) FROM {Command._meta.db_table} c
          JOIN {Engine._meta.db_table} e ON e.id = c.engine_id
         WHERE c.batch_id = b.id AND e.desired_state = '{TradingState.HALTED.value}'
           AND e.desired_changed_at <= b.created_at AND e.is_active)
  FROM (SELECT id, issued_by_label, created_at, reason FROM {CommandBatch._meta.db_table}
         WHERE kind = '{CommandKind.KILL.value}' AND selector = 'all'
         ORDER BY created_at DESC LIMIT 1) b
"""


def fleet_kill_latched() -> FleetKill | None:
    """The fleet-wide kill every page announces until it is lifted (one query)."""
    with connection.cursor() as cursor:
        cursor.execute(_FLEET_KILL_SQL)
        row = cursor.fetchone()
    if row is None or not row[4]:
        return None
    batch_id, by, at, reason, halted = row
    return FleetKill(batch_id=str(batch_id), by=by, at=at, reason=reason, halted=halted)


@dataclass(frozen=True)
class KillScope:
    """What a kill of a selector would hit, for its confirmation dialog."""

    selector: str
    engines: int
    gross_exposure: Decimal
    halted_already: int


def kill_scope(selector: str) -> KillScope:
    """The active engines ``selector`` names (as issuing a command would select them), and their
    gross exposure as the fleet page sums it. Raises CommandInvalid for a bad one."""
    engines = issuing.engines_select(selector)
    counts = engines.aggregate(
        n=Count("pk"), halted=Count("pk", filter=Q(desired_state=TradingState.HALTED))
    )
    figures = position_figures(list(engines.only("pk", "account_currency", "fx_rates")))
    gross = sum((row["gross"] for row in figures.values()), Decimal(0))
    return KillScope(
        selector=selector,
        engines=counts["n"],
        gross_exposure=gross,
        halted_already=counts["halted"],
    )
