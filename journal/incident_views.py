"""The incidents and emergency contacts pages: thin views over journal.incidents and
journal.contacts; a refusal is shown in the page's messages in the services' words."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from alerts.models import Alert
from controlplane.audit import client_ip
from controlplane.models import Engine
from journal import contacts, incidents
from journal.models import EmergencyContact, Incident, PostMortem, Step

MAX_FORM_FOLLOW_UPS = 10
_SNAPSHOT_NUMBERS = ("equity", "cash", "day_pnl", "drawdown_pct", "realized_pnl", "unrealized_pnl")
_ROW_NUMBERS = (
    "quantity",
    "avg_price",
    "last_price",
    "realized_pnl",
    "unrealized_pnl",
    "filled",
    "limit_price",
)


def _number(value: Any) -> Decimal | None:
    # The snapshot keeps decimals as text (JSON); the page's number filters take numbers.
    try:
        return None if value is None else Decimal(str(value))
    except InvalidOperation:
        return None


def _snapshot_shown(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    shown = []
    for engine in snapshot.get("engines", []):
        row = dict(engine) | {k: _number(engine.get(k)) for k in _SNAPSHOT_NUMBERS}
        for part in ("positions", "orders"):
            row[part] = [
                dict(item) | {k: _number(item[k]) for k in _ROW_NUMBERS if k in item}
                for item in engine.get(part, [])
            ]
        shown.append(row)
    return shown


def _refusals(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A service's refusal: 403 for a missing right; else the page again, saying why."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        back = request.META.get("HTTP_REFERER") or reverse("journal:incidents")
        try:
            return view(request, *args, **kwargs)
        except incidents.IncidentForbidden as exc:
            raise PermissionDenied(str(exc)) from exc
        except incidents.IncidentConflict as exc:
            messages.error(request, str(exc))
        except ValidationError as exc:
            for field, problems in exc.message_dict.items():
                messages.error(request, f"{field.replace('_', ' ')}: {' '.join(problems)}")
        return HttpResponseRedirect(back)

    return wrapper


def _incident_or_404(incident_id: int) -> Incident:
    incident = incidents.incident_get(incident_id)
    if incident is None:
        raise Http404(f"no incident has the id {incident_id}")
    return incident


@require_GET
@permission_required("journal.view_incident", raise_exception=True)
def incident_list(request: HttpRequest) -> HttpResponse:
    # ?engine=NAME or ?alert=ID: the engine page's and the alerts page's "Open incident".
    engine_name = request.GET.get("engine", "")[:64]
    alert_id = request.GET.get("alert", "")
    alert = Alert.objects.filter(pk=int(alert_id)).first() if alert_id.isdigit() else None
    if alert is not None and alert.engine_id is not None and not engine_name:
        engine_name = alert.engine.name if alert.engine else ""
    rows = incidents.incidents_list()
    return render(
        request,
        "journal/incidents.html",
        {
            "open_incidents": [i for i in rows if i.state == Incident.State.OPEN],
            "closed_incidents": [i for i in rows if i.state == Incident.State.CLOSED],
            "engines": Engine.objects.filter(is_active=True).order_by("name").only("name"),
            "prefill_engine": engine_name,
            "prefill_alert": alert,
            "can_open": request.user.has_perm("journal.open_incident"),
        },
    )


@require_POST
@_refusals
def incident_open(request: HttpRequest) -> HttpResponse:
    alert = request.POST.get("alert") or None
    incident = incidents.incident_open_by_hand(
        actor=request.user,  # type: ignore[arg-type]
        title=request.POST.get("title", ""),
        reason=request.POST.get("reason", ""),
        engine_names=[n for n in request.POST.getlist("engines") if n],
        alert_id=alert,
        ip_address=client_ip(request),
    )
    messages.success(request, f"Incident #{incident.pk} opened.")
    return redirect("journal:incident", incident_id=incident.pk)


@require_GET
@permission_required("journal.view_incident", raise_exception=True)
def incident_detail(request: HttpRequest, incident_id: int) -> HttpResponse:
    incident = _incident_or_404(incident_id)
    try:
        postmortem: PostMortem | None = incident.postmortem
    except PostMortem.DoesNotExist:
        postmortem = None
    follow_ups = list(postmortem.follow_ups.all()) if postmortem else []
    # The form shows the items written, and empty rows to add more.
    blank = max(MAX_FORM_FOLLOW_UPS - len(follow_ups), 0) if incident.state == "open" else 0
    form_rows = [(f.item, f.owner) for f in follow_ups] + [("", "")] * min(blank, 3)
    return render(
        request,
        "journal/incident.html",
        {
            "incident": incident,
            "engines": list(incident.engines.all()),
            "snapshot": _snapshot_shown(incident.snapshot),
            "snapshot_at": incident.snapshot.get("taken_at"),
            "steps": list(incident.steps.all()),
            "person_steps": incidents.PERSON_STEPS,
            "decide": Step.DECIDE,
            "commands": list(incident.commands.all()),
            "alerts": list(incident.alerts.all()),
            "postmortem": postmortem,
            "follow_ups": follow_ups,
            "form_rows": form_rows,
            "causes": PostMortem.Cause.choices,
            "contacts": list(contacts.contacts_list()),
            "can_tick": request.user.has_perm("journal.tick_incident"),
            "can_write": request.user.has_perm("journal.change_postmortem"),
            "can_close": request.user.has_perm("journal.close_incident"),
        },
    )


@require_POST
@_refusals
def incident_step_tick(request: HttpRequest, incident_id: int, step: str) -> HttpResponse:
    incident = _incident_or_404(incident_id)
    done = incidents.incident_step_tick(
        incident=incident,
        key=step,
        actor=request.user,  # type: ignore[arg-type]
        note=request.POST.get("note", ""),
        decision=request.POST.get("decision") or None,
        ip_address=client_ip(request),
    )
    messages.success(request, f"“{done.get_key_display()}” ticked by {done.done_by_label}.")
    return redirect("journal:incident", incident_id=incident.pk)


@require_POST
@_refusals
def incident_postmortem(request: HttpRequest, incident_id: int) -> HttpResponse:
    incident = _incident_or_404(incident_id)
    items = request.POST.getlist("follow_up_item")[:50]
    owners = request.POST.getlist("follow_up_owner")[:50]
    follow_ups = [
        {"item": item, "owner": owner}
        for item, owner in zip(items, owners, strict=False)
        if item.strip() or owner.strip()
    ]
    incidents.postmortem_write(
        incident=incident,
        actor=request.user,  # type: ignore[arg-type]
        cause=request.POST.get("cause", ""),
        what_went_wrong=request.POST.get("what_went_wrong", ""),
        failed_assumptions=request.POST.get("failed_assumptions", ""),
        improvements=request.POST.get("improvements", ""),
        follow_ups=follow_ups,
        ip_address=client_ip(request),
    )
    messages.success(request, "Post-mortem saved.")
    return redirect("journal:incident", incident_id=incident.pk)


@require_POST
@_refusals
def incident_close(request: HttpRequest, incident_id: int) -> HttpResponse:
    incident = _incident_or_404(incident_id)
    incidents.incident_close(
        incident=incident,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    messages.success(request, f"Incident #{incident.pk} closed.")
    return redirect("journal:incident", incident_id=incident.pk)


# --- emergency contacts ---------------------------------------------------------------------------


@require_GET
@permission_required("journal.view_emergencycontact", raise_exception=True)
def contact_list(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "journal/incident_contacts.html",
        {
            "contacts": list(EmergencyContact.objects.order_by("-active", "escalation_order")),
            "channel_name": contacts.CHANNEL_NAME,
            "can_add": request.user.has_perm("journal.add_emergencycontact"),
            "can_change": request.user.has_perm("journal.change_emergencycontact"),
            "can_delete": request.user.has_perm("journal.delete_emergencycontact"),
        },
    )


def _contact_form(request: HttpRequest) -> dict[str, Any]:
    data: dict[str, Any] = {
        field: request.POST.get(field, "")
        for field in ("name", "role", "phone", "email", "escalation_order")
    }
    data["active"] = request.POST.get("active") == "on"
    return data


@require_POST
@_refusals
def contact_create(request: HttpRequest) -> HttpResponse:
    contact = contacts.contact_create(
        actor=request.user,  # type: ignore[arg-type]
        data=_contact_form(request),
        ip_address=client_ip(request),
    )
    messages.success(request, f"{contact.name} added as contact {contact.escalation_order}.")
    return redirect("journal:contacts")


@require_POST
@_refusals
def contact_update(request: HttpRequest, contact_id: int) -> HttpResponse:
    contact = get_object_or_404(EmergencyContact, pk=contact_id)
    contacts.contact_update(
        contact=contact,
        actor=request.user,  # type: ignore[arg-type]
        data=_contact_form(request),
        ip_address=client_ip(request),
    )
    messages.success(request, f"{contact.name} saved.")
    return redirect("journal:contacts")


@require_POST
@_refusals
def contact_delete(request: HttpRequest, contact_id: int) -> HttpResponse:
    contact = get_object_or_404(EmergencyContact, pk=contact_id)
    name = contact.name
    contacts.contact_delete(
        contact=contact,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    messages.success(request, f"{name} removed.")
    return redirect("journal:contacts")
