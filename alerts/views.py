from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Case, Count, IntegerField, Q, Value, When
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from alerts import runbooks, selectors, services
from alerts.models import Alert, AlertRule, Severity, Silence
from controlplane.audit import client_ip
from controlplane.models import Engine

# The database would sort the names alphabetically (warning, info, critical): by rank instead.
SEVERITY_RANK = Case(
    When(severity=Severity.CRITICAL, then=Value(0)),
    When(severity=Severity.WARNING, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)
STATE_RANK = Case(
    When(state=Alert.State.FIRING, then=Value(0)), default=Value(1), output_field=IntegerField()
)


@require_GET
@permission_required("alerts.view_alert", raise_exception=True)
def alert_list(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    silent_rules = selectors.rules_without_channel()
    silent_ids = {rule.pk for rule in silent_rules}
    # ?engine=NAME: one engine's alerts (the go-live gate's evidence link).
    engine_name = request.GET.get("engine", "")
    alerts = Alert.objects.filter(engine__name=engine_name) if engine_name else Alert.objects
    open_alerts = list(
        alerts.filter(state__in=Alert.OPEN)
        .select_related("engine", "rule")
        # Critical first, then warning, then info; firing before pending; newest first.
        .order_by(SEVERITY_RANK, STATE_RANK, "-started_at")
    )
    plans = runbooks.runbooks_of(open_alerts)
    for alert in open_alerts:
        # An alert without a rule (a risk limit's, with no risk-limit rule) reaches nobody.
        alert.no_channel = alert.rule_id is None or alert.rule_id in silent_ids
        alert.runbook = plans.get(alert.pk)
    return render(
        request,
        "alerts/list.html",
        {
            "open_alerts": open_alerts,
            "silent_rules": silent_rules,
            "engine_name": engine_name,
            "resolved": alerts.filter(state=Alert.State.RESOLVED)
            .select_related("engine", "rule")
            .order_by("-resolved_at")[:50],
            "silences": Silence.objects.filter(ends_at__gt=now).select_related("rule", "engine"),
            "rules": AlertRule.objects.order_by("name"),
            "engines": Engine.objects.filter(is_active=True).order_by("name"),
            "can_ack": request.user.has_perm("alerts.acknowledge_alert"),
            "can_silence": request.user.has_perm("alerts.add_silence"),
        },
    )


@require_GET
@permission_required("alerts.view_alert", raise_exception=True)
def firing(request: HttpRequest) -> JsonResponse:
    """The header's badge: how many alerts fire now, and how many of them are critical."""
    counts = Alert.objects.filter(state=Alert.State.FIRING).aggregate(
        firing=Count("pk"), critical=Count("pk", filter=Q(severity="critical"))
    )
    return JsonResponse(counts)


@require_POST
@permission_required("alerts.acknowledge_alert", raise_exception=True)
def acknowledge(request: HttpRequest, alert_id: int) -> HttpResponse:
    alert = get_object_or_404(Alert, pk=alert_id)
    try:
        done = services.alert_acknowledge(
            alert=alert, actor=request.user, ip_address=client_ip(request)
        )
    except PermissionDenied as exc:
        messages.error(request, str(exc))
        return redirect("alerts:list")
    if done:
        messages.success(request, f"Acknowledged: {alert.summary}")
    else:
        messages.info(request, "That alert was already acknowledged or is over.")
    return redirect("alerts:list")


@require_POST
@permission_required("alerts.acknowledge_alert", raise_exception=True)
def explain(request: HttpRequest, alert_id: int) -> HttpResponse:
    """Record what caused the alert (alerts.services.alert_explain)."""
    alert = get_object_or_404(Alert, pk=alert_id)
    try:
        services.alert_explain(
            alert=alert,
            actor=request.user,
            text=request.POST.get("explanation", ""),
            ip_address=client_ip(request),
        )
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        for field, problems in exc.message_dict.items():
            messages.error(request, f"{field}: {' '.join(problems)}")
    else:
        messages.success(request, f"Explained: {alert.summary}")
    return redirect("alerts:list")


def _id(value: str | None) -> int | None:
    """A primary key typed into a form, or None when it is not a whole number."""
    return int(value) if value and value.isascii() and value.isdigit() else None


@require_POST
@permission_required("alerts.add_silence", raise_exception=True)
def silence(request: HttpRequest) -> HttpResponse:
    data = request.POST
    rule = AlertRule.objects.filter(pk=_id(data.get("rule"))).first()
    engine = Engine.objects.filter(pk=_id(data.get("engine"))).first()
    # A rule or engine named but not found must not widen the silence to everything.
    for field, value, found in (
        ("rule", data.get("rule"), rule),
        ("engine", data.get("engine"), engine),
    ):
        if value and found is None:
            messages.error(request, f"{field}: no such {field} ({value[:40]!r}).")
            return redirect("alerts:list")
    try:
        minutes = int(data.get("minutes") or 0)
    except ValueError:
        minutes = 0
    # Past the longest silence the service refuses it, naming the duration; bounded first so
    # that a huge number cannot overflow the date before it gets there.
    minutes = max(min(minutes, services.MAX_SILENCE // timedelta(minutes=1) + 1), 0)
    try:
        services.silence_create(
            actor=request.user,
            reason=data.get("reason", ""),
            ends_at=timezone.now() + timedelta(minutes=minutes),
            rule=rule,
            engine=engine,
            tag=data.get("tag", ""),
            ip_address=client_ip(request),
        )
    except PermissionDenied as exc:
        messages.error(request, str(exc))
    except ValidationError as exc:
        for field, problems in exc.message_dict.items():
            label = "duration" if field == "ends_at" else field
            messages.error(request, f"{label}: {' '.join(problems)}")
    else:
        messages.success(request, f"Silenced for {minutes} minutes.")
    return redirect("alerts:list")
