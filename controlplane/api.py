"""The operators' and scripts' HTTP API under /api/v1/ (OpenAPI at /api/v1/openapi.json, docs at
/api/v1/docs). Authenticated by the browser session (with its CSRF token) or by a personal API
token (``Authorization: Bearer cpu_...``). The engines' own endpoints are in engine_http.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Literal

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from ninja import Field, NinjaAPI, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from ninja.security import HttpBearer, django_auth

from controlplane import selectors, services
from controlplane.audit import client_ip
from controlplane.models import Command, CommandBatch, Engine, ResumeRequest


class ApiTokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = services.api_token_user(token)
        if user is not None:
            request.user = user
        return user


def _docs_only(view: Any) -> Any:
    """The schema and its docs page: read-only, for people who are logged in."""
    return require_GET(login_required(view))


api = NinjaAPI(
    title="Trading Control Plane API",
    version="1",
    urls_namespace="api",
    auth=[ApiTokenAuth(), django_auth],
    docs_decorator=_docs_only,
)


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):  # type: ignore[union-attr]
        raise HttpError(403, f"{request.user.get_username()} lacks the {permission} permission")


@api.exception_handler(services.CommandRefused)
def _refused(request: HttpRequest, exc: services.CommandRefused) -> Any:
    return api.create_response(request, {"detail": str(exc)}, status=403)


@api.exception_handler(services.CommandInvalid)
def _invalid(request: HttpRequest, exc: services.CommandInvalid) -> Any:
    errors = {field: " ".join(messages) for field, messages in exc.message_dict.items()}
    detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
    return api.create_response(request, {"detail": detail, "errors": errors}, status=422)


# --- schemas ----------------------------------------------------------------------------------


class EngineOut(Schema):
    id: int
    name: str
    mode: str
    strategy_tags: list[str]
    connected: bool
    last_seen_at: datetime | None
    desired_state: str
    reported_state: str
    equity: float | None
    day_pnl: float
    drawdown_pct: float

    @staticmethod
    def resolve_desired_state(engine: Engine) -> str:
        # A timed pause that is over is over here too, before the sweep writes ACTIVE back.
        return engine.desired_state_now


class CommandOut(Schema):
    id: uuid.UUID
    engine: str = Field(..., alias="engine.name")
    batch_id: uuid.UUID | None
    kind: str
    params: dict[str, Any]
    reason: str
    issued_by: str = Field(..., alias="issued_by_label")
    status: str
    created_at: datetime
    expires_at: datetime | None
    delivered_at: datetime | None
    acknowledged_at: datetime | None
    completed_at: datetime | None
    state_after: str
    result: dict[str, Any]
    detail: str
    shortfall: str


class BatchOut(Schema):
    id: uuid.UUID
    kind: str
    selector: str
    reason: str
    issued_by: str
    created_at: datetime
    summary: str
    achieved: int
    total: int
    finished: bool
    by_status: dict[str, int]
    incomplete: list[str]
    commands: list[CommandOut]


class CommandIn(Schema):
    kind: Literal["pause", "resume", "reduce", "flatten", "cancel_all", "kill"]
    selector: str = Field(
        ..., description="all, live, tag:<tag> or engine:<name>", examples=["engine:alpha"]
    )
    reason: str = Field(..., min_length=1, max_length=2000)
    params: dict[str, Any] = Field(default_factory=dict)
    expires_in_s: int | None = Field(
        None, description="pause, reduce, flatten and cancel_all may expire; kill never does"
    )
    confirm: str | None = Field(
        None, description="kill only: the engine's name, or KILL ALL for any other selector"
    )


class ReasonIn(Schema):
    reason: str = Field("", max_length=2000)


class ResumeRequestOut(Schema):
    id: int
    engine: str = Field(..., alias="engine.name")
    reason: str
    requested_by: str = Field(..., alias="requested_by_label")
    created_at: datetime
    status: str
    decided_by: str = Field(..., alias="decided_by_label")
    decided_at: datetime | None
    command_id: uuid.UUID | None


def _batch_out(batch: CommandBatch, commands: list[Command] | None = None) -> dict[str, Any]:
    if commands is None:
        commands = list(batch.commands.select_related("engine").order_by("engine__name"))
    progress = selectors.batch_progress(batch, commands)
    return {
        "id": batch.pk,
        "kind": batch.kind,
        "selector": batch.selector,
        "reason": batch.reason,
        "issued_by": batch.issued_by_label,
        "created_at": batch.created_at,
        "summary": progress.summary,
        "achieved": progress.achieved,
        "total": progress.total,
        "finished": progress.finished,
        "by_status": progress.by_status,
        "incomplete": progress.incomplete,
        "commands": commands,
    }


# --- engines ----------------------------------------------------------------------------------


@api.get("/engines", response=list[EngineOut], tags=["engines"])
def engines(request: HttpRequest, mode: str | None = None, tag: str | None = None) -> Any:
    _require(request, "controlplane.view_engine")
    return list(selectors.engine_list(mode=mode, tag=tag))


# --- commands ---------------------------------------------------------------------------------


@api.post("/commands", response={201: BatchOut}, tags=["commands"])
def command_create(request: HttpRequest, payload: CommandIn) -> Any:
    """Issue a command to one engine or a selection, as one batch.

    A kill must be confirmed: ``confirm`` is the engine's name for ``engine:<name>``, KILL ALL
    for any other selector. 403 names what the caller may not do; 422 names each bad field.
    """
    if payload.kind == "kill":
        expected = services.kill_confirmation(payload.selector)
        if (payload.confirm or "").strip() != expected:
            raise services.CommandInvalid(
                {"confirm": f"type {expected!r} to confirm a kill of {payload.selector}"}
            )
    batch, issued = services.command_batch_issue(
        kind=payload.kind,
        selector=payload.selector,
        reason=payload.reason,
        params=payload.params,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
        expires_in=timedelta(seconds=payload.expires_in_s) if payload.expires_in_s else None,
    )
    # The commands as issued, not read back: building the answer runs while the engines are
    # being told, in the same process.
    return Status(201, _batch_out(batch, sorted(issued, key=lambda c: c.engine.name)))


@api.get("/commands/batches/{batch_id}", response=BatchOut, tags=["commands"])
def batch_detail(request: HttpRequest, batch_id: uuid.UUID) -> Any:
    _require(request, "controlplane.view_command")
    return _batch_out(get_object_or_404(CommandBatch, pk=batch_id))


@api.get("/commands", response=list[CommandOut], tags=["commands"])
def commands(
    request: HttpRequest, engine: str | None = None, status: str | None = None, limit: int = 100
) -> Any:
    _require(request, "controlplane.view_command")
    target = get_object_or_404(Engine, name=engine) if engine else None
    return list(selectors.command_list(engine=target, status=status, limit=min(limit, 1000)))


@api.get("/commands/{command_id}", response=CommandOut, tags=["commands"])
def command_detail(request: HttpRequest, command_id: uuid.UUID) -> Any:
    _require(request, "controlplane.view_command")
    return get_object_or_404(Command.objects.select_related("engine"), pk=command_id)


_resume_requests = ResumeRequest.objects.select_related("engine")

# --- resume after a kill ----------------------------------------------------------------------


@api.post(
    "/engines/{name}/resume-requests", response={201: ResumeRequestOut}, tags=["resume requests"]
)
def resume_request_create(request: HttpRequest, name: str, payload: ReasonIn) -> Any:
    """Ask for a HALTED engine to be resumed; a second person (a risk manager) approves."""
    engine = get_object_or_404(Engine, name=name)
    resume_request = services.resume_request_create(
        engine=engine,
        reason=payload.reason,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    return Status(201, resume_request)


@api.get("/resume-requests", response=list[ResumeRequestOut], tags=["resume requests"])
def resume_requests(request: HttpRequest, status: str = "open") -> Any:
    _require(request, "controlplane.view_resumerequest")
    return list(ResumeRequest.objects.filter(status=status).select_related("engine")[:200])


@api.post("/resume-requests/{request_id}/approve", response=CommandOut, tags=["resume requests"])
def resume_request_approve(request: HttpRequest, request_id: int, payload: ReasonIn) -> Any:
    resume_request = get_object_or_404(
        ResumeRequest.objects.select_related("engine"), pk=request_id
    )
    command = services.resume_request_approve(
        resume_request=resume_request,
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )
    return Command.objects.select_related("engine").get(pk=command.pk)


@api.post(
    "/resume-requests/{request_id}/reject", response=ResumeRequestOut, tags=["resume requests"]
)
def resume_request_reject(request: HttpRequest, request_id: int, payload: ReasonIn) -> Any:
    resume_request = get_object_or_404(
        ResumeRequest.objects.select_related("engine"), pk=request_id
    )
    return services.resume_request_reject(
        resume_request=resume_request,
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )


def urls() -> tuple[list[Any], str, str]:
    """The API's URL patterns, exempt from the login redirect: the API answers 401 itself."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        callback = getattr(pattern, "callback", None)
        if getattr(callback, "__name__", "").endswith("view_wrapper"):
            callback.login_required = False
    return patterns, app_name, namespace
