"""Reads of the engines domain, shared by views, the API and consumers."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from controlplane.models import Engine, Order, Position


def engine_list(*, mode: str | None = None, tag: str | None = None) -> QuerySet[Engine]:
    engines = Engine.objects.filter(is_active=True)
    if mode:
        engines = engines.filter(mode=mode)
    if tag:
        engines = engines.filter(strategy_tags__contains=[tag])
    return engines.annotate(
        open_positions=Count("positions", filter=~Q(positions__quantity=0), distinct=True),
        working_orders=Count("orders", filter=Q(orders__status__in=Order.WORKING), distinct=True),
    ).order_by("name")


def engine_positions(*, engine: Engine) -> QuerySet[Position]:
    return engine.positions.select_related("instrument").order_by("instrument__symbol")
