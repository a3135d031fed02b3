"""The weekly report as a page and as CSV, and each user's report settings."""

from __future__ import annotations

import json
from datetime import timedelta
from zoneinfo import ZoneInfo

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from dashboard.models import profile_for
from dashboard.reports import analytics, charts, weekly
from dashboard.reports.forms import ProfileForm

VIEW_ENGINES = "controlplane.view_engine"


class _BadWeek(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _not_found(request: HttpRequest, message: str) -> HttpResponse:
    return render(request, "reports/bad_week.html", {"message": message}, status=404)


def _report(request: HttpRequest, week: str) -> weekly.WeeklyReport:
    tz = ZoneInfo(profile_for(request.user).timezone)
    try:
        return weekly.weekly_report(week, tz)
    except analytics.BadWeek as exc:
        raise _BadWeek(str(exc)) from None


@require_GET
@permission_required(VIEW_ENGINES, raise_exception=True)
def latest(request: HttpRequest) -> HttpResponse:
    tz = ZoneInfo(profile_for(request.user).timezone)
    return redirect("reports:week", week=analytics.previous_iso_week(timezone.now(), tz))


@require_GET
@permission_required(VIEW_ENGINES, raise_exception=True)
def week(request: HttpRequest, week: str) -> HttpResponse:
    try:
        report = _report(request, week)
    except _BadWeek as exc:
        return _not_found(request, exc.message)
    day = report.period.start.date()
    figures = {
        name: json.loads(charts.figure_json(figure))
        for name, figure in (
            ("equity", charts.equity_drawdown_figure(report.fleet)),
            ("pnl", charts.daily_pnl_figure(report.fleet)),
            (
                "engines",
                charts.engine_equity_figure([(r.engine.name, r.figures) for r in report.engines]),
            ),
        )
    }
    return render(
        request,
        "reports/week.html",
        {
            "report": report,
            "figures": figures,
            "plot_config": charts.CONFIG,
            "previous_week": analytics.week_label(day - timedelta(days=7)),
            "next_week": analytics.week_label(day + timedelta(days=7)),
            "tz_name": str(report.period.tz),
        },
    )


@require_GET
@permission_required(VIEW_ENGINES, raise_exception=True)
def week_csv(request: HttpRequest, week: str) -> HttpResponse:
    try:
        report = _report(request, week)
    except _BadWeek as exc:
        return _not_found(request, exc.message)
    response = HttpResponse(weekly.report_csv(report), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="report-{report.week}.csv"'
    return response


@require_http_methods(["GET", "POST"])
def report_settings(request: HttpRequest) -> HttpResponse:
    profile = profile_for(request.user)
    form = ProfileForm(request.POST or None, instance=profile)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Report settings saved.")
        return redirect("reports:settings")
    return render(
        request,
        "reports/settings.html",
        {"form": form, "can_view": request.user.has_perm(VIEW_ENGINES)},
    )


@require_GET
def bad_week(request: HttpRequest, week: str) -> HttpResponse:
    return _not_found(
        request, f"{week!r} is not an ISO week: write it as YYYY-Www, e.g. /reports/2026-W47/."
    )
