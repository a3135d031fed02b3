from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from controlplane import capabilities, selectors
from controlplane.audit import client_ip
from controlplane.commands import issuing, resume, rights
from controlplane.commands.errors import CommandInvalid, CommandRefused, command_refuse
from controlplane.models import (
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    Mode,
    ResumeRequest,
    Stage,
    StageChange,
)
from dashboard import charts, overview
from dashboard.forms import AuditFilterForm, CommandForm, PromotionDecisionForm, ReasonForm
from dashboard.selectors import audit_actions, audit_event_list, strategy_tags
from dashboard.selectors import kill_scope as selector_kill_scope
from dashboard.templatetags.desk import money
from golive import capital as golive_capital
from golive import comparison, divergence, drills, gates, preflight, redlines
from golive import services as golive_services
from golive.models import DivergenceDay, PromotionRequest
from journal import reviews as journal_reviews
from risk import selectors as risk_selectors

AUDIT_PAGE_SIZE = 50


def _back(request: HttpRequest) -> HttpResponseRedirect:
    """Back to the page the form was on (its ``next`` field), or the fleet."""
    target = request.POST.get("next") or ""
    # A path of this site only: redirect() would take a bare word for a URL name to look up.
    if not target.startswith("/") or not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = reverse("dashboard:fleet")
    return HttpResponseRedirect(target)


def _error_messages(request: HttpRequest, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            for error in errors:
                messages.error(request, f"{field}: {error}")
    else:
        for error in exc.messages:
            messages.error(request, error)


def _form_errors(request: HttpRequest, form: CommandForm | ReasonForm) -> None:
    for field, errors in form.errors.items():
        for error in errors:
            messages.error(request, f"{field}: {error}")


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def fleet(request: HttpRequest) -> HttpResponse:
    mode = request.GET.get("mode") or None
    tag = request.GET.get("tag") or None
    rows = overview.fleet_rows(mode=mode, tag=tag)
    user = request.user
    now = timezone.now()
    return render(
        request,
        "dashboard/fleet.html",
        {
            "rows": rows,
            "totals": overview.fleet_totals(rows),
            "firing_alerts_total": sum(r.firing_alerts for r in rows),
            "modes": Mode.choices,
            "mode": mode,
            "tag": tag,
            "tags": strategy_tags(),
            "stale_after_s": settings.ENGINE_STALE_AFTER_S,
            "now": now,
            # Asked once, not once per row.
            "can_pause": user.has_perm("controlplane.issue_pause"),
            "can_reduce": user.has_perm("controlplane.issue_reduce"),
            "can_kill": user.has_perm("controlplane.issue_kill"),
            "allocation": risk_selectors.allocation_overview(),
            # The journal's reviews past due (templates/journal/_overdue_reviews.html).
            "overdue_reviews": journal_reviews.overdue(now)
            if user.has_perm("journal.view_review")
            else [],
        },
    )


def _figure(text: str) -> Any:
    # json_script escapes what it embeds; it takes objects, so the figure's text is parsed once.
    return json.loads(text)


# The stages whose engines keep a record on live data: what a comparison may be made against.
RECORDED_STAGES = (Stage.PAPER, Stage.SHADOW, Stage.SMALL_CAPITAL, Stage.FULL)


def _comparing(
    request: HttpRequest, engine: Engine, start: datetime, end: datetime
) -> dict[str, Any]:
    """The page's comparison (golive.comparison) of ``engine`` over [start, end): against its
    backtest, or the engine named by ``?against=`` (an earlier stage of the same strategy, over
    the same days); an unknown name says so and falls back to the backtest."""
    wanted = (request.GET.get("against") or "backtest").replace("\x00", "")[:200]
    choices = list(
        Engine.objects.filter(stage__in=RECORDED_STAGES)
        .exclude(pk=engine.pk)
        .only("pk", "name", "stage")
        .order_by("name")
    )
    ladder = list(Stage)
    choices.sort(key=lambda other: ladder.index(other.stage))
    against = None
    if wanted != "backtest":
        against = next((other for other in choices if other.name == wanted), None)
        if against is None:
            messages.error(
                request, f"against: no other engine with a record is named {wanted[:80]!r}"
            )
    return {
        "comparison": comparison.compare(engine, start, end, against),
        "against_choices": choices,
    }


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def engine(request: HttpRequest, name: str) -> HttpResponse:
    """The engine page, drawn from the same snapshot the live updates then extend."""
    engine = get_object_or_404(Engine, name=name)
    snapshot = overview.engine_snapshot(engine)
    logs = snapshot["logs"]
    # Live against its baseline (its backtest, or ?against=ENGINE) over the last 30 days.
    now = timezone.now()
    compared = _comparing(request, engine, now - timedelta(days=30), now)
    return render(
        request,
        "dashboard/engine.html",
        {
            "engine": engine,
            "row": snapshot["row"],
            "snapshot": snapshot,
            "errors": [log for log in logs if log["level"] in ("error", "critical")][:10],
            "figures": {
                "equity": _figure(charts.equity_figure(snapshot["equity"])),
                "latency": _figure(charts.latency_figure(snapshot["latency"])),
                "rejections": _figure(charts.rejection_figure(snapshot["rejections"])),
                "config": charts.CONFIG,
                "traces": {
                    "equity": charts.EQUITY_TRACES,
                    "latency": charts.LATENCY_TRACES,
                    "rejections": charts.REJECTION_TRACES,
                },
            },
            "stale_after_s": settings.ENGINE_STALE_AFTER_S,
            "return_here": True,
            "now": now,
            "capabilities": _capabilities(engine),
            **compared,
        },
    )


# Commands failed unsent because the engine said it does not handle their kind (issuing).
_UNSENT = "not sent:"


def _capabilities(engine: Engine) -> dict[str, Any]:
    """What the engine said it can enforce, and what is asked of it that it cannot: flags of the
    limits that apply to it, and its latest commands failed unsent."""
    unsent = list(
        Command.objects.filter(
            engine=engine, status=Command.Status.FAILED, detail__startswith=_UNSENT
        )
        .order_by("-created_at")
        .values("kind", "created_at")[:5]
    )
    flags = capabilities.flags(engine)
    flags += [
        f"a {c['kind']} command issued at {c['created_at']:%Y-%m-%d %H:%M} UTC failed unsent: "
        "it does not handle it"
        for c in unsent
    ]
    return {"said": engine.capabilities, "flags": flags}


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def engine_golive(request: HttpRequest, name: str) -> HttpResponse:
    """The engine's way to real money: its stage, the gates of its next step computed now from its
    own recorded data, and the history of its stage (docs/going-live.md)."""
    engine = get_object_or_404(Engine, name=name)
    now = timezone.now()
    report = gates.report(engine, now)
    ladder = list(Stage)
    days = divergence.days_of(engine)
    # Live against its baseline over the stage's period, from paper on.
    compared = (
        _comparing(request, engine, report.period_start, now)
        if report.period_start is not None and engine.stage != Stage.BACKTEST
        else {"comparison": None}
    )
    return render(
        request,
        "dashboard/golive.html",
        {
            "engine": engine,
            "report": report,
            "failing": len(report.failed),
            "unknown": len(report.unknown),
            "ladder": ladder,
            "stage_index": ladder.index(engine.stage),
            # A step into real orders also needs what must hold right now.
            "preflight": preflight.checks(engine, now)
            if preflight.needed(report.to_stage)
            else None,
            "history": StageChange.objects.filter(engine=engine).order_by("-at", "-pk")[:50],
            "now": now,
            "ramp": golive_capital.ramp_status(engine, now),
            "ramp_steps": settings.CAPITAL_RAMP_STEPS,
            "ramp_days": settings.CAPITAL_RAMP_STEP_DAYS,
            "pending": PromotionRequest.objects.filter(engine=engine, status="pending").first(),
            "decided": PromotionRequest.objects.filter(engine=engine)
            .exclude(status="pending")
            .order_by("-decided_at", "-pk")[:10],
            "drills": drills.drills_of(engine),
            "divergence_days": days,
            "divergence_figure": _figure(
                charts.divergence_figure(days, settings.DIVERGENCE_LOG_ALERT_PCT)
            )
            if days
            else None,
            "red_line_events": redlines.events_of(engine),
            "root_causes": DivergenceDay.RootCause.choices,
            "divergence_alert_pct": settings.DIVERGENCE_LOG_ALERT_PCT,
            "drill_kind": drills.kind_for(engine),
            **compared,
        },
    )


@require_POST
def kill_drill_start(request: HttpRequest, name: str) -> HttpResponse:
    """Start a drill of the engine's kill path (golive.drills.drill_start). Who lacks the kill
    right gets a 403, recorded; a drill refused for the engine's state returns with its words."""
    engine = get_object_or_404(Engine, name=name)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        _form_errors(request, form)
        return _to_golive(engine)
    try:
        drills.drill_start(
            engine=engine,
            actor=request.user,  # type: ignore[arg-type]
            reason=form.cleaned_data["reason"],
            ip_address=client_ip(request),
        )
    except CommandInvalid as exc:
        _error_messages(request, exc)
        return _to_golive(engine)
    messages.success(request, f"Kill drill of {engine.name} started: its outcome shows below.")
    return redirect(reverse("dashboard:engine_golive", args=[engine.name]) + "#drills")


def _to_golive(engine: Engine) -> HttpResponseRedirect:
    return redirect("dashboard:engine_golive", name=engine.name)


@require_POST
def promotion_request(request: HttpRequest, name: str) -> HttpResponse:
    """Ask for the engine's next stage (golive.services.promotion_request). Who lacks the right
    gets a 403, recorded; a refusal of the request itself returns to the page with its words."""
    engine = get_object_or_404(Engine, name=name)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        _form_errors(request, form)
        return _to_golive(engine)
    try:
        created = golive_services.promotion_request(
            engine=engine,
            actor=request.user,  # type: ignore[arg-type]
            reason=form.cleaned_data["reason"],
            ip_address=client_ip(request),
        )
    except golive_services.PromotionForbidden:
        raise
    except golive_services.PromotionRefused as exc:
        messages.error(request, str(exc))
        return _to_golive(engine)
    except ValidationError as exc:
        _error_messages(request, exc)
        return _to_golive(engine)
    to_stage = Stage(created.to_stage).label
    messages.success(
        request, f"Promotion of {engine.name} to {to_stage} requested: a risk manager decides."
    )
    return _to_golive(engine)


@require_POST
def target_capital(request: HttpRequest, name: str) -> HttpResponse:
    """Set the engine's target capital (golive.capital.target_capital_set): who lacks the risk
    right gets a 403, recorded; a bad amount or no reason returns to the page with its words."""
    engine = get_object_or_404(Engine, name=name)
    try:
        amount = golive_capital.target_capital_set(
            engine=engine,
            value=request.POST.get("target_capital", ""),
            reason=request.POST.get("reason", "")[:2000],
            actor=request.user,  # type: ignore[arg-type]
            ip_address=client_ip(request),
        )
    except ValidationError as exc:
        _error_messages(request, exc)
        return _to_golive(engine)
    messages.success(request, f"Target capital of {engine.name} set to {money(amount)}.")
    return _to_golive(engine)


@require_POST
def divergence_note(request: HttpRequest, name: str, day_id: int) -> HttpResponse:
    """Say what was found on a day of the divergence log (golive.divergence.note_set): who may
    not gets a 403; an empty note or an unknown root cause returns to the page with its words."""
    engine = get_object_or_404(Engine, name=name)
    row = get_object_or_404(DivergenceDay, pk=day_id, engine=engine)
    try:
        divergence.note_set(
            row=row,
            actor=request.user,  # type: ignore[arg-type]
            note=request.POST.get("note", "")[: divergence.NOTE_MAX + 1],
            root_cause=request.POST.get("root_cause", ""),
            ip_address=client_ip(request),
        )
    except ValidationError as exc:
        _error_messages(request, exc)
        return _to_golive(engine)
    messages.success(request, f"Note kept on {engine.name}'s {row.day}.")
    return _to_golive(engine)


@require_POST
def promotion_decide(request: HttpRequest, request_id: int, decision: str) -> HttpResponse:
    """Approve, reject or cancel a pending promotion (the services check who may)."""
    promotion = get_object_or_404(PromotionRequest.objects.select_related("engine"), pk=request_id)
    engine = promotion.engine
    form = PromotionDecisionForm(request.POST)
    if decision not in ("approve", "reject", "cancel"):
        raise Http404("no such decision")
    if not form.is_valid():
        _form_errors(request, form)
        return _to_golive(engine)
    common = {
        "request": promotion,
        "actor": request.user,
        "reason": form.cleaned_data["reason"],
        "ip_address": client_ip(request),
    }
    try:
        if decision == "approve":
            golive_services.promotion_approve(**common, override=form.cleaned_data["override"])
        elif decision == "reject":
            golive_services.promotion_reject(**common)
        else:
            golive_services.promotion_cancel(**common)
    except golive_services.PromotionForbidden:
        raise
    except golive_services.PromotionRefused as exc:
        messages.error(request, str(exc))
        return _to_golive(engine)
    except ValidationError as exc:
        _error_messages(request, exc)
        return _to_golive(engine)
    promotion.refresh_from_db()
    step = promotion.step_label
    if decision != "approve":
        messages.success(request, f"Promotion of {engine.name} ({step}) {promotion.status}.")
    elif promotion.override:
        messages.warning(
            request, f"{engine.name} promoted ({step}) over its failing gate: an override."
        )
    else:
        messages.success(request, f"{engine.name} promoted ({step}).")
    return _to_golive(engine)


@require_GET
@permission_required("controlplane.view_engine", raise_exception=True)
def kill_scope(request: HttpRequest) -> JsonResponse:
    """What a kill of ``selector`` would hit, for the kill dialogs: engines and gross exposure."""
    selector = request.GET.get("selector", "")
    try:
        scope = selector_kill_scope(selector)
    except CommandInvalid as exc:
        return JsonResponse({"errors": exc.message_dict}, status=400)
    return JsonResponse(
        {
            "selector": scope.selector,
            "engines": scope.engines,
            "halted_already": scope.halted_already,
            "gross_exposure": float(scope.gross_exposure),
            "gross_exposure_text": money(float(scope.gross_exposure), 0),
        }
    )


@require_POST
def command_issue(request: HttpRequest) -> HttpResponse:
    """Every command dialog posts here; success lands on the batch page."""
    if not any(request.user.has_perm(perm) for perm in rights.COMMAND_PERMISSIONS):
        # Someone who may issue no command at all is refused outright (a 403), and it is recorded,
        # under the kind asked for when it is one (the audit's action is a short known name).
        asked = request.POST.get("kind", "")
        command_refuse(
            f"{request.user.get_username()} may not issue commands",
            action=f"command_{asked}" if asked in CommandKind.values else "command",
            actor=request.user,
            actor_label=None,
            reason=request.POST.get("reason", ""),
            ip_address=client_ip(request),
            data={"selector": request.POST.get("selector")},
        )
    form = CommandForm(request.POST)
    if not form.is_valid():
        _form_errors(request, form)
        return _back(request)
    kind, selector = form.cleaned_data["kind"], form.cleaned_data["selector"]
    try:
        batch = issuing.command_issue(
            kind=kind,
            selector=selector,
            reason=form.cleaned_data["reason"],
            params=form.params(),
            actor=request.user,  # type: ignore[arg-type]
            ip_address=client_ip(request),
            confirmation=form.cleaned_data["confirm"],
        )
    except CommandRefused as exc:
        messages.error(request, str(exc))
        return _back(request)
    except CommandInvalid as exc:
        confirm = exc.message_dict.get("confirm") if hasattr(exc, "error_dict") else None
        if confirm:
            # The service's words, as the API gives them, said as the dialog's outcome.
            messages.error(request, f"Kill not issued: {confirm[0]}.")
        else:
            _error_messages(request, exc)
        return _back(request)
    messages.success(request, f"{kind} issued to {selector}.")
    if request.POST.get("return_here"):
        # Issued from an engine's page: stay there and watch it obey; the batch is linked there.
        return _back(request)
    return redirect("dashboard:batch", batch_id=batch.pk)


def _ms_after(moment: datetime | None, start: datetime) -> int | None:
    if moment is None:
        return None
    # Both cut to the millisecond, as the page's script does, so a live update never jitters.
    a = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    b = start.replace(microsecond=start.microsecond // 1000 * 1000)
    return (a - b) // timedelta(milliseconds=1)


def _command_rows(commands: Iterable[Command]) -> list[dict[str, Any]]:
    return [
        {
            "command": c,
            "params": ", ".join(f"{key}={value}" for key, value in sorted(c.params.items())),
            "delivered_ms": _ms_after(c.delivered_at, c.created_at),
            "acknowledged_ms": _ms_after(c.acknowledged_at, c.created_at),
            "completed_ms": _ms_after(c.completed_at, c.created_at),
        }
        for c in commands
    ]


@require_GET
@permission_required("controlplane.view_command", raise_exception=True)
def batch(request: HttpRequest, batch_id: uuid.UUID) -> HttpResponse:
    command_batch = get_object_or_404(CommandBatch, pk=batch_id)
    commands = list(command_batch.commands.select_related("engine").order_by("engine__name"))
    return render(
        request,
        "dashboard/batch.html",
        {
            "batch": command_batch,
            "progress": selectors.batch_progress(command_batch, commands),
            "rows": _command_rows(commands),
        },
    )


@require_GET
@permission_required("controlplane.view_command", raise_exception=True)
def engine_commands(request: HttpRequest, name: str) -> HttpResponse:
    engine = get_object_or_404(Engine, name=name)
    commands = list(selectors.command_list(engine=engine, limit=200))
    return render(
        request,
        "dashboard/engine_commands.html",
        {"engine": engine, "rows": _command_rows(commands)},
    )


@require_GET
@permission_required("controlplane.view_resumerequest", raise_exception=True)
def resume_requests(request: HttpRequest) -> HttpResponse:
    open_requests = list(selectors.resume_requests_open().order_by("created_at"))
    # Requests to release a kill this person issued: they may reject, not approve (commands.resume).
    engine_ids = [r.engine_id for r in open_requests]
    latched = resume.kills_latched_by(request.user, engine_ids) if engine_ids else set()  # type: ignore[arg-type]
    own_kills = {r.pk for r in open_requests if r.engine_id in latched}
    return render(
        request,
        "dashboard/resume_requests.html",
        {"requests": open_requests, "own_kills": own_kills},
    )


@require_POST
def resume_request_create(request: HttpRequest, name: str) -> HttpResponse:
    engine = get_object_or_404(Engine, name=name)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        _form_errors(request, form)
        return _back(request)
    try:
        resume.resume_request_create(
            engine=engine,
            reason=form.cleaned_data["reason"],
            actor=request.user,  # type: ignore[arg-type]
            ip_address=client_ip(request),
        )
    except CommandRefused as exc:
        messages.error(request, str(exc))
        return _back(request)
    except CommandInvalid as exc:
        _error_messages(request, exc)
        return _back(request)
    messages.success(request, f"Resume of {engine.name} asked for: a second person must approve.")
    return redirect("dashboard:resume_requests")


def _decide(request: HttpRequest, request_id: int, *, approve: bool) -> HttpResponse:
    resume_request = get_object_or_404(
        ResumeRequest.objects.select_related("engine"), pk=request_id
    )
    form = ReasonForm(request.POST)
    if not form.is_valid():
        _form_errors(request, form)
        return redirect("dashboard:resume_requests")
    decide = resume.resume_request_approve if approve else resume.resume_request_reject
    try:
        result = decide(
            resume_request=resume_request,
            actor=request.user,  # type: ignore[arg-type]
            reason=form.cleaned_data["reason"],
            ip_address=client_ip(request),
        )
    except CommandRefused as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:resume_requests")
    except CommandInvalid as exc:
        _error_messages(request, exc)
        return redirect("dashboard:resume_requests")
    engine = resume_request.engine.name
    if approve:
        messages.success(request, f"Resume of {engine} approved and issued.")
        return redirect("dashboard:batch", batch_id=result.batch_id)  # type: ignore[union-attr]
    messages.success(request, f"Resume request for {engine} {result.status}.")  # type: ignore[union-attr]
    return redirect("dashboard:resume_requests")


@require_POST
def resume_request_approve(request: HttpRequest, request_id: int) -> HttpResponse:
    return _decide(request, request_id, approve=True)


@require_POST
def resume_request_reject(request: HttpRequest, request_id: int) -> HttpResponse:
    return _decide(request, request_id, approve=False)


@require_GET
@permission_required("controlplane.view_auditevent", raise_exception=True)
def audit(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None, actions=audit_actions())
    filters: dict[str, Any] | None = {}
    if form.is_bound:
        # A bad filter shows its error and no rows, rather than every row.
        filters = form.filters() if form.is_valid() else None
    page = None
    if filters is not None:
        paginator = Paginator(audit_event_list(**filters), AUDIT_PAGE_SIZE)
        page = paginator.get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "dashboard/audit.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )
