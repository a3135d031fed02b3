from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from controlplane.models import Mode
from controlplane.selectors import engine_list


@require_GET
def fleet(request: HttpRequest) -> HttpResponse:
    mode = request.GET.get("mode") or None
    tag = request.GET.get("tag") or None
    engines = list(engine_list(mode=mode, tag=tag))
    return render(
        request,
        "dashboard/fleet.html",
        {"engines": engines, "modes": Mode.choices, "mode": mode, "tag": tag},
    )
