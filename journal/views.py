"""The journal's pages: the trading log (a day, its edit and history, search, CSV export), the
runbooks (list, page, edit, links) and the reviews (list, checklist and sign-off). Each view
reads or makes one service call; refusals come back as messages naming the field."""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts.models import AlertRule
from controlplane.audit import client_ip
from controlplane.models import Engine
from journal import figures, reviews, runbooks, tradinglog
from journal.markdown import render as markdown
from journal.models import Period, Runbook, Trend, Volatility
from risk.models import LimitKind

VIEW_LOG = "journal.view_logentry"
VIEW_RUNBOOK = "journal.view_runbook"
VIEW_REVIEW = "journal.view_review"


def _messages(request: HttpRequest, exc: ValidationError) -> None:
    for field, problems in exc.message_dict.items():
        messages.error(request, f"{field}: {' '.join(problems)}")


def _day(text: str) -> date:
    try:
        return tradinglog.check_day(date.fromisoformat(text))
    except (ValueError, ValidationError) as exc:
        raise Http404("no such day") from exc


def _date_param(request: HttpRequest, name: str) -> date | None:
    text = request.GET.get(name, "")
    if not text:
        return None
    try:
        return tradinglog.check_day(date.fromisoformat(text), name)
    except (ValueError, ValidationError):
        messages.error(request, f"{name}: {text[:40]!r} is no date (YYYY-MM-DD, 1900 to 2999)")
        return None


def _engine_param(request: HttpRequest, source: dict | None = None) -> Engine | None:
    name = (source if source is not None else request.GET).get("engine", "")
    if not name:
        return None
    engine = Engine.objects.filter(name=name).first()
    if engine is None:
        raise Http404(f"no engine is named {name!r}")
    return engine


def _today() -> date:
    return timezone.now().astimezone(figures.desk_tz()).date()


# --- Trading log ---------------------------------------------------------------------------------


def figure_rows(values: dict) -> list[dict[str, str]]:
    rows = []
    for key, label in figures.FIGURE_LABELS.items():
        value = values.get(key)
        if value is None:
            text = "—"
        elif key == "pnl_pct":
            text = f"{value:+.2f} %"
        else:
            text = str(value)
        rows.append({"key": key, "label": label, "text": text})
    return rows


@require_GET
@permission_required(VIEW_LOG, raise_exception=True)
def log_today(request: HttpRequest) -> HttpResponse:
    return redirect("journal:log_day", _today().isoformat())


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_LOG, raise_exception=True)
def log_day(request: HttpRequest, day: str) -> HttpResponse:
    when = _day(day)
    if request.method == "POST":
        engine = _engine_param(request, request.POST)
        version = request.POST.get("version", "")
        try:
            tradinglog.log_entry_save(
                day=when,
                engine=engine,
                actor=request.user,  # type: ignore[arg-type]
                trend=request.POST.get("trend", ""),
                volatility=request.POST.get("volatility", ""),
                key_events=request.POST.get("key_events", ""),
                notes=request.POST.get("notes", ""),
                version=int(version) if version.isdigit() else None,
                ip_address=client_ip(request),
            )
        except PermissionDenied:
            raise
        except ValidationError as exc:
            _messages(request, exc)
        else:
            messages.success(request, "Saved.")
        url = reverse("journal:log_day", args=[when.isoformat()])
        return redirect(f"{url}?engine={engine.name}" if engine else url)
    engine = _engine_param(request)
    entry = tradinglog.entry_of(when, engine)
    previous, following = tradinglog.neighbours(when)
    return render(
        request,
        "journal/log_day.html",
        {
            "day": when,
            "engine": engine,
            "entry": entry,
            "notes_html": markdown(entry.notes) if entry else "",
            "figure_rows": figure_rows(figures.day_figures(when, engine.pk if engine else None)),
            "history": list(tradinglog.history(entry)[:50]) if entry else [],
            "entries": tradinglog.entries_of_day(when),
            "engines": Engine.objects.filter(is_active=True).order_by("name"),
            "previous": previous,
            "following": following,
            "today": _today(),
            "trends": Trend.choices,
            "volatilities": Volatility.choices,
            "can_edit": request.user.has_perm(tradinglog.WRITE_PERMISSION),
            "tz": figures.desk_tz(),
        },
    )


@require_GET
@permission_required(VIEW_LOG, raise_exception=True)
def log_search(request: HttpRequest) -> HttpResponse:
    text = request.GET.get("q", "")[:200]
    engine = _engine_param(request)
    start, end = _date_param(request, "start"), _date_param(request, "end")
    found = tradinglog.search(text=text, engine=engine, start=start, end=end)
    return render(
        request,
        "journal/log_search.html",
        {
            "q": text,
            "engine": engine,
            "start": start,
            "end": end,
            "entries": found,
            "limit": tradinglog.SEARCH_LIMIT,
            "engines": Engine.objects.order_by("name"),
        },
    )


@require_GET
@permission_required(VIEW_LOG, raise_exception=True)
def log_export(request: HttpRequest) -> HttpResponse:
    end = _date_param(request, "end") or _today()
    start = _date_param(request, "start") or end - timedelta(days=30)
    if start > end or (end - start).days > tradinglog.EXPORT_MAX_DAYS:
        return HttpResponse(
            "start must be before end, at most ten years apart",
            status=400,
            content_type="text/plain",
        )
    engine = _engine_param(request)
    entries = tradinglog.search(
        text=request.GET.get("q", "")[:200], engine=engine, start=start, end=end, limit=100_000
    )
    response = HttpResponse(tradinglog.export_csv(entries), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="trading-log-{start}-{end}.csv"'
    return response


# --- Runbooks ------------------------------------------------------------------------------------


@require_GET
@permission_required(VIEW_RUNBOOK, raise_exception=True)
def runbook_list(request: HttpRequest) -> HttpResponse:
    plans = list(Runbook.objects.prefetch_related("links__alert_rule"))
    return render(request, "journal/runbook_list.html", {"runbooks": plans})


@require_GET
@permission_required(VIEW_RUNBOOK, raise_exception=True)
def runbook_detail(request: HttpRequest, slug: str) -> HttpResponse:
    plan = get_object_or_404(Runbook, slug=slug)
    links = runbooks.links_of(plan)
    return render(
        request,
        "journal/runbook_detail.html",
        {
            "runbook": plan,
            "body_html": markdown(plan.body),
            "links": links,
            "kind_labels": dict(LimitKind.choices),
            "history": plan.revisions.all()[:50],
            "rules": AlertRule.objects.order_by("name"),
            "kinds": LimitKind.choices,
            "can_edit": request.user.has_perm(runbooks.CHANGE_PERMISSION),
            "can_link": request.user.has_perm(runbooks.LINK_PERMISSION),
        },
    )


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_RUNBOOK, raise_exception=True)
def runbook_edit(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    plan = get_object_or_404(Runbook, slug=slug) if slug else None
    needed = runbooks.CHANGE_PERMISSION if plan else runbooks.ADD_PERMISSION
    if not request.user.has_perm(needed):
        raise PermissionDenied
    form = {
        "slug": plan.slug if plan else "",
        "title": plan.title if plan else "",
        "scenario": plan.scenario if plan else "",
        "body": plan.body if plan else "",
        "reason": "",
    }
    if request.method == "POST":
        form.update({k: request.POST.get(k, "") for k in form if not (plan and k == "slug")})
        try:
            saved = runbooks.runbook_save(
                runbook=plan,
                actor=request.user,  # type: ignore[arg-type]
                slug=form["slug"],
                title=form["title"],
                scenario=form["scenario"],
                body=form["body"],
                reason=form["reason"],
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            _messages(request, exc)
        else:
            messages.success(request, f"Saved: {saved.title}, version {saved.version}.")
            return redirect("journal:runbook", saved.slug)
    return render(request, "journal/runbook_edit.html", {"runbook": plan, "form": form})


@require_POST
@permission_required(runbooks.LINK_PERMISSION, raise_exception=True)
def runbook_links(request: HttpRequest, slug: str) -> HttpResponse:
    plan = get_object_or_404(Runbook, slug=slug)
    try:
        runbooks.runbook_links_set(
            runbook=plan,
            actor=request.user,  # type: ignore[arg-type]
            alert_rules=request.POST.getlist("alert_rules"),
            limit_kinds=request.POST.getlist("limit_kinds"),
            ip_address=client_ip(request),
        )
    except ValidationError as exc:
        _messages(request, exc)
    else:
        messages.success(request, "What points at this runbook is saved.")
    return redirect("journal:runbook", plan.slug)


# --- Reviews -------------------------------------------------------------------------------------


@require_GET
@permission_required(VIEW_REVIEW, raise_exception=True)
def review_list(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    period = request.GET.get("period", "")
    if period not in Period.values:
        period = ""
    owed = reviews.owed(now, period=period or None)
    return render(
        request,
        "journal/review_list.html",
        {
            "overdue": [o for o in owed if o.overdue(now)],
            "recent": owed[:60],
            "period": period,
            "periods": Period.choices,
            "now": now,
            "tz": figures.desk_tz(),
        },
    )


@require_http_methods(["GET", "POST"])
@permission_required(VIEW_REVIEW, raise_exception=True)
def review_detail(request: HttpRequest, period: str, start: str) -> HttpResponse:
    first = _day(start)
    if period not in Period.values or not reviews.is_period_start(period, first):
        raise Http404("no such review period")
    if request.method == "POST":
        keys = request.POST.getlist("done")
        try:
            reviews.review_sign_off(
                period=period,
                start=first,
                actor=request.user,  # type: ignore[arg-type]
                manual={key: True for key in keys},
                note=request.POST.get("note", ""),
                ip_address=client_ip(request),
            )
        except ValidationError as exc:
            _messages(request, exc)
        except reviews.ReviewRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Signed off.")
        return redirect("journal:review", period, first.isoformat())
    review = reviews.Review.objects.filter(period=period, period_start=first).first()
    owed = next((o for o in reviews.owed(period=period) if o.start == first), None)
    now = timezone.now()
    results = None if review else reviews.checklist(period, first)
    return render(
        request,
        "journal/review_detail.html",
        {
            "period": period,
            "period_label": Period(period).label,
            "start": first,
            "end": reviews.period_end(period, first),
            "label": reviews.period_label(period, first),
            "review": review,
            "results": review.results if review else results,
            "owed": owed,
            "overdue": owed.overdue(now) if owed else False,
            "over": now.astimezone(figures.desk_tz()).date() > reviews.period_end(period, first),
            "can_sign": request.user.has_perm(reviews.SIGN_PERMISSION[Period(period)]),
            "sign_permission": reviews.SIGN_PERMISSION[Period(period)],
            "tz": figures.desk_tz(),
        },
    )
