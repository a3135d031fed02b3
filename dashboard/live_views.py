"""JSON snapshots of what the live socket updates: a browser fetches one on load, on reconnect,
and whenever it missed an update (see dashboard.consumers)."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.views.decorators.http import require_GET

from controlplane.models import Engine
from dashboard import overview
from golive import gates


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def fleet_snapshot(request: HttpRequest) -> JsonResponse:
    rows = overview.fleet_rows(mode=request.GET.get("mode"), tag=request.GET.get("tag"))
    totals = overview.fleet_totals(rows)
    return JsonResponse({"rows": [r.as_dict() for r in rows], "totals": totals.as_dict()})


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def engine_snapshot(request: HttpRequest, name: str) -> JsonResponse:
    engine = get_object_or_404(Engine, name=name)
    return JsonResponse(overview.engine_snapshot(engine))


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def fleet_readiness(request: HttpRequest) -> JsonResponse:
    """Which engines are ready for their next stage, by id: the stage they are ready for.

    Asked by the fleet page after it is drawn, not while: the gates read every engine's recorded
    data (bench/golive.py), and the fleet must show at once during an incident.
    """
    engines = Engine.objects.filter(is_active=True)
    ready = {r.engine.pk: r.to_stage for r in gates.reports(engines, timezone.now()) if r.ready}
    return JsonResponse({"ready": ready})
