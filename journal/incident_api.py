"""The journal through the HTTP API. The composition root mounts this router on the API
(controlplane.config.urls).

Incidents (docs/operations.md, "Incidents"): list, read (with the snapshot taken at opening, the
checklist, the linked commands and alerts, the post-mortem), open by hand, tick a step, write the
post-mortem, close. Emergency contacts: list, create, change, delete.

Errors: 400 names each bad field (a missing reason, a NUL byte, an unknown step), 403 a missing
right, 404 an unknown incident or contact, 409 what the incident's state refuses (a closed one,
a step already ticked or ticked from the data, closing without a post-mortem), 422 a field of
the wrong type or length.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from pydantic import ConfigDict

from controlplane.api import error_responses, require_permission, service_refusals
from controlplane.audit import client_ip
from journal import contacts, incidents
from journal.models import EmergencyContact, Incident, PostMortem, Step

router = Router(tags=["incidents"])


# --- schemas --------------------------------------------------------------------------------------


class StepOut(Schema):
    key: str
    label: str
    done: bool
    done_at: datetime | None
    by: Literal["data", "person"] | None = Field(..., description="who ticked it")
    done_by: str = Field(..., description="the person's name, or the control plane")
    note: str
    verifiable: bool = Field(..., description="ticked from the data, not by hand")


class FollowUpOut(Schema):
    item: str
    owner: str


class PostMortemOut(Schema):
    cause: str
    what_went_wrong: str
    failed_assumptions: str
    improvements: str
    follow_ups: list[FollowUpOut]
    written_by: str
    updated_at: datetime


class IncidentSummaryOut(Schema):
    id: int
    title: str
    state: str
    trigger: str
    opened_at: datetime
    opened_by: str
    engines: list[str]
    steps_done: int
    steps_total: int
    lifted_at: datetime | None
    closed_at: datetime | None


class IncidentOut(IncidentSummaryOut):
    reason: str
    kill_batch: str | None
    source_alert: int | None
    snapshot: dict[str, Any] = Field(..., description="the engines as they were at opening")
    steps: list[StepOut]
    commands: list[str] = Field(..., description="the ids of the commands linked to it")
    alerts: list[int] = Field(..., description="the ids of the alerts linked to it")
    postmortem: PostMortemOut | None
    closed_by: str


class IncidentOpenIn(Schema):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., max_length=200)
    reason: str = Field(..., max_length=10_000)
    engines: list[str] = Field(default_factory=list, max_length=500)
    alert: int | None = Field(None, ge=1, le=2**63 - 1, description="open it from this alert")


class StepTickIn(Schema):
    model_config = ConfigDict(extra="forbid")

    note: str = Field("", max_length=500)
    decision: Literal["flatten", "hold"] | None = Field(None, description="for the decide step")


class FollowUpIn(Schema):
    model_config = ConfigDict(extra="forbid")

    item: str = Field(..., max_length=500)
    owner: str = Field(..., max_length=150)


class PostMortemIn(Schema):
    model_config = ConfigDict(extra="forbid")

    cause: Literal["strategy", "execution", "market"]
    what_went_wrong: str = Field(..., max_length=10_000)
    failed_assumptions: str = Field(..., max_length=10_000)
    improvements: str = Field(..., max_length=10_000)
    follow_ups: list[FollowUpIn] = Field(..., max_length=50)


class ContactOut(Schema):
    id: int
    name: str
    role: str
    phone: str
    email: str
    escalation_order: int
    active: bool


class ContactIn(Schema):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=150)
    role: str = Field(..., max_length=100)
    phone: str = Field(..., max_length=32)
    email: str = Field(..., max_length=254)
    escalation_order: int = Field(..., ge=1, le=99)
    active: bool = True


# --- errors ---------------------------------------------------------------------------------------


_answers = service_refusals(
    forbidden=(incidents.IncidentForbidden,), conflict=(incidents.IncidentConflict,)
)


_require = require_permission


def _incident(incident_id: int) -> Incident:
    found = incidents.incident_get(incident_id)
    if found is None:
        raise HttpError(404, f"no incident has the id {incident_id}")
    return found


def _contact(contact_id: int) -> EmergencyContact:
    found = EmergencyContact.objects.filter(pk=contact_id).first()
    if found is None:
        raise HttpError(404, f"no emergency contact has the id {contact_id}")
    return found


def _summary(incident: Incident) -> dict[str, Any]:
    steps = list(incident.steps.all())
    return {
        "id": incident.pk,
        "title": incident.title,
        "state": incident.state,
        "trigger": incident.trigger,
        "opened_at": incident.opened_at,
        "opened_by": incident.opened_by_label,
        "engines": [e.name for e in incident.engines.all()],
        "steps_done": sum(1 for s in steps if s.done_at),
        "steps_total": len(steps),
        "lifted_at": incident.lifted_at,
        "closed_at": incident.closed_at,
    }


def _postmortem(incident: Incident) -> dict[str, Any] | None:
    try:
        postmortem: PostMortem = incident.postmortem
    except PostMortem.DoesNotExist:
        return None
    return {
        "cause": postmortem.cause,
        "what_went_wrong": postmortem.what_went_wrong,
        "failed_assumptions": postmortem.failed_assumptions,
        "improvements": postmortem.improvements,
        "follow_ups": [{"item": f.item, "owner": f.owner} for f in postmortem.follow_ups.all()],
        "written_by": postmortem.written_by_label,
        "updated_at": postmortem.updated_at,
    }


def _detail(incident_id: int) -> dict[str, Any]:
    incident = _incident(incident_id)
    return _summary(incident) | {
        "reason": incident.reason,
        "kill_batch": str(incident.kill_batch_id) if incident.kill_batch_id else None,
        "source_alert": incident.source_alert_id,
        "snapshot": incident.snapshot,
        "steps": [
            {
                "key": s.key,
                "label": s.get_key_display(),
                "done": s.done_at is not None,
                "done_at": s.done_at,
                "by": None if s.done_at is None else "data" if s.by_data else "person",
                "done_by": s.done_by_label,
                "note": s.note,
                "verifiable": s.key in incidents.DATA_STEPS or s.key == Step.DECIDE,
            }
            for s in incident.steps.all()
        ],
        "commands": [str(c.pk) for c in incident.commands.all()],
        "alerts": [a.pk for a in incident.alerts.all()],
        "postmortem": _postmortem(incident),
        "closed_by": incident.closed_by_label,
    }


# --- incidents ------------------------------------------------------------------------------------


@router.get("/incidents", response={200: list[IncidentSummaryOut], **error_responses(403)})
def incident_list(request: HttpRequest, state: Literal["open", "closed"] | None = None) -> Any:
    """Open and closed incidents, newest first (at most 200)."""
    _require(request, "journal.view_incident")
    return [_summary(i) for i in incidents.incidents_list(state=state)]


@router.get("/incidents/{incident_id}", response={200: IncidentOut, **error_responses(403, 404)})
def incident_read(request: HttpRequest, incident_id: int) -> Any:
    """One incident: its snapshot at opening, its checklist, its links and its post-mortem."""
    _require(request, "journal.view_incident")
    return _detail(incident_id)


@router.post("/incidents", response={201: IncidentOut, **error_responses(403, 404)})
@_answers
def incident_open(request: HttpRequest, payload: IncidentOpenIn) -> Any:
    """Open an incident by hand from engines, or from an alert (operators and above)."""
    incident = incidents.incident_open_by_hand(
        actor=request.user,  # type: ignore[arg-type]
        title=payload.title,
        reason=payload.reason,
        engine_names=payload.engines,
        alert_id=payload.alert,
        ip_address=client_ip(request),
    )
    return Status(201, _detail(incident.pk))


@router.post(
    "/incidents/{incident_id}/steps/{step}",
    response={200: IncidentOut, **error_responses(403, 404, 409)},
)
@_answers
def incident_step_tick(
    request: HttpRequest, incident_id: int, step: str, payload: StepTickIn
) -> Any:
    """Tick a step the product cannot verify, as the person calling (operators and above).
    409 for a step ticked from the data, one already ticked, or a closed incident."""
    incidents.incident_step_tick(
        incident=_incident(incident_id),
        key=step,
        actor=request.user,  # type: ignore[arg-type]
        note=payload.note,
        decision=payload.decision,
        ip_address=client_ip(request),
    )
    return _detail(incident_id)


@router.put(
    "/incidents/{incident_id}/postmortem",
    response={200: IncidentOut, **error_responses(403, 404, 409)},
)
@_answers
def incident_postmortem(request: HttpRequest, incident_id: int, payload: PostMortemIn) -> Any:
    """Write or rewrite the post-mortem (risk managers): the cause (strategy, execution or
    market), what went wrong, the failed assumptions, the improvements, follow-ups with owners."""
    incidents.postmortem_write(
        incident=_incident(incident_id),
        actor=request.user,  # type: ignore[arg-type]
        cause=payload.cause,
        what_went_wrong=payload.what_went_wrong,
        failed_assumptions=payload.failed_assumptions,
        improvements=payload.improvements,
        follow_ups=[f.dict() for f in payload.follow_ups],
        ip_address=client_ip(request),
    )
    return _detail(incident_id)


@router.post(
    "/incidents/{incident_id}/close",
    response={200: IncidentOut, **error_responses(403, 404, 409)},
)
@_answers
def incident_close(request: HttpRequest, incident_id: int) -> Any:
    """Close the incident (risk managers); 409 until its post-mortem is written."""
    incidents.incident_close(
        incident=_incident(incident_id),
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    return _detail(incident_id)


# --- emergency contacts ---------------------------------------------------------------------------


@router.get(
    "/contacts",
    response={200: list[ContactOut], **error_responses(403)},
    tags=["emergency contacts"],
)
def contact_list(request: HttpRequest) -> Any:
    """The emergency contacts, in escalation order (inactive ones last)."""
    _require(request, "journal.view_emergencycontact")
    return list(EmergencyContact.objects.order_by("-active", "escalation_order", "name"))


@router.post(
    "/contacts",
    response={201: ContactOut, **error_responses(403)},
    tags=["emergency contacts"],
)
@_answers
def contact_create(request: HttpRequest, payload: ContactIn) -> Any:
    """Add a contact (risk managers and admins); 400 for an escalation order already taken."""
    created = contacts.contact_create(
        actor=request.user,  # type: ignore[arg-type]
        data=payload.dict(),
        ip_address=client_ip(request),
    )
    return Status(201, created)


@router.put(
    "/contacts/{contact_id}",
    response={200: ContactOut, **error_responses(403, 404)},
    tags=["emergency contacts"],
)
@_answers
def contact_update(request: HttpRequest, contact_id: int, payload: ContactIn) -> Any:
    """Change a contact (risk managers and admins)."""
    return contacts.contact_update(
        contact=_contact(contact_id),
        actor=request.user,  # type: ignore[arg-type]
        data=payload.dict(),
        ip_address=client_ip(request),
    )


@router.delete(
    "/contacts/{contact_id}",
    response={204: None, **error_responses(403, 404)},
    tags=["emergency contacts"],
)
@_answers
def contact_delete(request: HttpRequest, contact_id: int) -> Any:
    """Remove a contact (risk managers and admins)."""
    contacts.contact_delete(
        contact=_contact(contact_id),
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    return Status(204, None)
