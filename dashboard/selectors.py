"""Reads the dashboard's pages need beyond the engines domain's own selectors."""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, Func, Q, QuerySet

from controlplane.models import AuditEvent, Engine


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
