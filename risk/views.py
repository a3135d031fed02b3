from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from risk import selectors
from risk.models import PORTFOLIO, RiskEvent


@require_GET
@permission_required("risk.view_risklimit", raise_exception=True)
def limits(request: HttpRequest) -> HttpResponse:
    """Every limit with each engine's utilisation; engines still on older limits."""
    rows = selectors.limits_overview()
    for row in rows:
        row["pre_trade"] = row["limit"].pre_trade
        row["portfolio"] = row["limit"].kind in PORTFOLIO
        for state in row["states"]:
            state.bar = min(max(state.utilisation, 0.0), 100.0)
            state.colour = {"ok": "green", "warning": "amber", "breached": "red"}[state.level]
    return render(
        request,
        "risk/limits.html",
        {
            "rows": rows,
            "revision": selectors.limits_revision(),
            "stale_engines": selectors.engines_on_old_limits(),
            "events": RiskEvent.objects.select_related("engine")[:50],
            "can_edit": request.user.has_perm("risk.change_risklimit"),
        },
    )
