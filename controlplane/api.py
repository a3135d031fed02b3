"""The operators' and scripts' HTTP API under /api/v1/ (OpenAPI at /api/v1/openapi.json, docs at
/api/v1/docs). Authenticated by the browser session (with its CSRF token) or by a personal API
token (``Authorization: Bearer cpu_...``). The engines' own endpoints are in gateway/http.py.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime, timedelta
from functools import cache, wraps
from typing import Annotated, Any, Literal

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.utils.datastructures import MultiValueDict
from django.views import defaults
from django.views.decorators.http import require_GET
from ninja import Field, NinjaAPI, Query, Schema
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from ninja.responses import Status
from ninja.security import HttpBearer, django_auth
from pydantic import BeforeValidator, ConfigDict

from controlplane import selectors, services
from controlplane.audit import client_ip
from controlplane.commands import issuing, resume
from controlplane.commands.errors import CommandInvalid, CommandRefused
from controlplane.models import (
    BrokerStatement,
    Command,
    CommandBatch,
    Engine,
    Mode,
    ResumeRequest,
    StatementDifference,
)
from controlplane.statements import StatementRefused, statement_import


class ApiTokenAuth(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        user = services.api_token_user(token)
        if user is not None:
            request.user = user
        return user


def _docs_only(view: Any) -> Any:
    """The schema and its docs page: read-only, for people logged in or holding an API token
    (a script or a test tool reads the schema as it calls the API)."""

    @login_not_required  # the login is checked here, a token being as good as a session
    @require_GET
    @wraps(view)
    def docs(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated and ApiTokenAuth()(request) is None:
            if "Authorization" in request.headers:
                return JsonResponse({"detail": "Unauthorized"}, status=401)
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return docs


class _StrictParser(Parser):
    """Query parameters are refused by name when they are no parameter of the API (a misspelt
    filter would otherwise be ignored and everything listed), or when a single one is given twice
    (which of its values counts would be a guess)."""

    def parse_querydict(
        self, data: MultiValueDict, list_fields: list[str], request: HttpRequest
    ) -> dict[str, Any]:
        problems = {}
        for key in data:
            if key not in _query_parameters():
                problems[key or "(no name)"] = "is not a parameter of this API"
            elif key not in list_fields and len(data.getlist(key)) > 1:
                problems[key] = "given more than once"
        if problems:
            raise ValidationError(
                [{"loc": (key,), "msg": msg, "type": "query"} for key, msg in problems.items()]
            )
        return super().parse_querydict(data, list_fields, request)


@cache
def _query_parameters() -> frozenset[str]:
    """Every query parameter some operation of the API declares, read from its schema."""
    return frozenset(
        parameter["name"]
        for operations in api.get_openapi_schema()["paths"].values()
        for operation in operations.values()
        for parameter in operation.get("parameters", [])
        if parameter["in"] == "query"
    )


api = NinjaAPI(
    title="Trading Control Plane API",
    version="1",
    urls_namespace="api",
    auth=[ApiTokenAuth(), django_auth],
    docs_decorator=_docs_only,
    parser=_StrictParser(),
)


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):  # type: ignore[union-attr]
        raise HttpError(403, f"{request.user.get_username()} lacks the {permission} permission")


@api.exception_handler(ValidationError)
def _validation_error(request: HttpRequest, exc: ValidationError) -> Any:
    """422 in the same shape as the services' own refusals: each bad field named."""
    errors: dict[str, str] = {}
    for error in exc.errors:
        # ("body", "payload", "reason") -> "reason"; ("query", "limit") -> "limit"
        location = [str(part) for part in error.get("loc", ())]
        if location[:1] == ["body"]:
            location = location[2:]  # the view's body argument is no field of the request
        elif location[:1] in (["query"], ["path"], ["form"]):
            location = location[1:]
        field = ".".join(location) or "body"
        errors[field] = " ".join(filter(None, [errors.get(field), str(error.get("msg", ""))]))
    detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
    return api.create_response(request, {"detail": detail, "errors": errors}, status=422)


@api.exception_handler(CommandRefused)
def _refused(request: HttpRequest, exc: CommandRefused) -> Any:
    return api.create_response(request, {"detail": str(exc)}, status=403)


@api.exception_handler(CommandInvalid)
def _invalid(request: HttpRequest, exc: CommandInvalid) -> Any:
    errors = {field: " ".join(messages) for field, messages in exc.message_dict.items()}
    detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
    return api.create_response(request, {"detail": detail, "errors": errors}, status=422)


# --- schemas ----------------------------------------------------------------------------------


class ErrorOut(Schema):
    """Every error answer: what went wrong, and on 400 and 422 each bad field by name."""

    detail: str
    errors: dict[str, str] | None = None


def error_responses(*codes: int) -> dict[int, type[ErrorOut]]:
    """The error answers an operation gives, for its schema. Every operation may answer 400 (a
    NUL byte in a field or parameter, a body that is not JSON), 401 (no session or token) and
    422 (a parameter out of its range or given twice)."""
    return {code: ErrorOut for code in sorted({400, 401, 422, *codes})}


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})")


def _iso_day(value: Any) -> Any:
    # Pydantic alone takes a number (or "+0.0") for a date, as seconds since 1970: a typo would
    # silently read as 1970-01-01. Days are written as the schema says, or refused.
    if not (isinstance(value, str) and _ISO_DAY.fullmatch(value)) and not isinstance(value, date):
        raise ValueError("must be a day written YYYY-MM-DD")
    return value


def _rfc3339(value: Any) -> Any:
    written = isinstance(value, str) and _RFC3339.fullmatch(value)
    if not written and not isinstance(value, datetime):
        raise ValueError("must be RFC 3339 with seconds and an offset, e.g. 2026-12-01T00:00:00Z")
    return value


Day = Annotated[date, BeforeValidator(_iso_day)]
"""A day given to the API (a parameter or a field): YYYY-MM-DD only."""
Moment = Annotated[datetime, BeforeValidator(_rfc3339)]
"""A moment given to the API: RFC 3339 with seconds and an offset only."""


class CapabilitiesOut(Schema):
    commands: list[str]
    limit_kinds: list[str]


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
    run_id: str = Field(..., description="the run its last hello named (docs/protocol.md, Runs)")
    capabilities: CapabilitiesOut | None = Field(
        ...,
        description="what its last hello said it can enforce; null: it said nothing, so "
        "everything (docs/protocol.md, Capabilities)",
    )

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
    # A misspelt field is refused by name rather than ignored (an expiry that silently is not).
    model_config = ConfigDict(extra="forbid")

    kind: Literal["pause", "resume", "reduce", "flatten", "cancel_all", "kill"]
    selector: str = Field(
        ..., description="all, live, tag:<tag> or engine:<name>", examples=["engine:alpha"]
    )
    reason: str = Field(..., min_length=1, max_length=2000)
    params: dict[str, Any] = Field(default_factory=dict)
    expires_in_s: int | None = Field(
        None,
        ge=1,
        le=issuing.MAX_EXPIRY_S,
        description="pause, reduce, flatten and cancel_all may expire; kill never does",
    )
    confirm: str | None = Field(
        None, description="kill only: the engine's name, or KILL ALL for any other selector"
    )


class ReasonIn(Schema):
    model_config = ConfigDict(extra="forbid")

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


@api.get("/engines", response={200: list[EngineOut], **error_responses(403)}, tags=["engines"])
def engines(request: HttpRequest, mode: Mode | None = None, tag: str | None = None) -> Any:
    _require(request, "controlplane.view_engine")
    return list(selectors.engine_list(mode=mode, tag=tag))


# --- commands ---------------------------------------------------------------------------------


@api.post("/commands", response={201: BatchOut, **error_responses(403)}, tags=["commands"])
def command_create(request: HttpRequest, payload: CommandIn) -> Any:
    """Issue a command to one engine or a selection, as one batch.

    A kill must be confirmed: ``confirm`` is the engine's name for ``engine:<name>``, KILL ALL
    for any other selector. 403 names what the caller may not do; 422 names each bad field.
    """
    batch, issued = issuing.command_batch_issue(
        kind=payload.kind,
        selector=payload.selector,
        reason=payload.reason,
        params=payload.params,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
        expires_in=timedelta(seconds=payload.expires_in_s)
        if payload.expires_in_s is not None
        else None,
        confirmation=payload.confirm,
    )
    # The commands as issued, not read back: building the answer runs while the engines are
    # being told, in the same process.
    return Status(201, _batch_out(batch, sorted(issued, key=lambda c: c.engine.name)))


@api.get(
    "/commands/batches/{batch_id}",
    response={200: BatchOut, **error_responses(403, 404)},
    tags=["commands"],
)
def batch_detail(request: HttpRequest, batch_id: uuid.UUID) -> Any:
    _require(request, "controlplane.view_command")
    return _batch_out(get_object_or_404(CommandBatch, pk=batch_id))


@api.get(
    "/commands",
    response={200: list[CommandOut], **error_responses(403, 404)},
    tags=["commands"],
)
def commands(
    request: HttpRequest,
    engine: str | None = None,
    status: Command.Status | None = None,
    limit: int = Query(100, ge=1, le=1000, description="the newest this many"),
) -> Any:
    _require(request, "controlplane.view_command")
    target = get_object_or_404(Engine, name=engine) if engine else None
    return list(selectors.command_list(engine=target, status=status, limit=limit))


@api.get(
    "/commands/{command_id}",
    response={200: CommandOut, **error_responses(403, 404)},
    tags=["commands"],
)
def command_detail(request: HttpRequest, command_id: uuid.UUID) -> Any:
    _require(request, "controlplane.view_command")
    return get_object_or_404(Command.objects.select_related("engine"), pk=command_id)


_resume_requests = ResumeRequest.objects.select_related("engine")

# --- resume after a kill ----------------------------------------------------------------------


@api.post(
    "/engines/{name}/resume-requests",
    response={201: ResumeRequestOut, **error_responses(403, 404)},
    tags=["resume requests"],
)
def resume_request_create(request: HttpRequest, name: str, payload: ReasonIn) -> Any:
    """Ask for a HALTED engine to be resumed; a second person (a risk manager) approves."""
    engine = get_object_or_404(Engine, name=name)
    resume_request = resume.resume_request_create(
        engine=engine,
        reason=payload.reason,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
    )
    return Status(201, resume_request)


@api.get(
    "/resume-requests",
    response={200: list[ResumeRequestOut], **error_responses(403)},
    tags=["resume requests"],
)
def resume_requests(
    request: HttpRequest, status: ResumeRequest.Status = ResumeRequest.Status.OPEN
) -> Any:
    _require(request, "controlplane.view_resumerequest")
    return list(ResumeRequest.objects.filter(status=status).select_related("engine")[:200])


@api.post(
    "/resume-requests/{request_id}/approve",
    response={200: CommandOut, **error_responses(403, 404)},
    tags=["resume requests"],
)
def resume_request_approve(request: HttpRequest, request_id: int, payload: ReasonIn) -> Any:
    resume_request = get_object_or_404(
        ResumeRequest.objects.select_related("engine"), pk=request_id
    )
    command = resume.resume_request_approve(
        resume_request=resume_request,
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )
    return Command.objects.select_related("engine").get(pk=command.pk)


@api.post(
    "/resume-requests/{request_id}/reject",
    response={200: ResumeRequestOut, **error_responses(403, 404)},
    tags=["resume requests"],
)
def resume_request_reject(request: HttpRequest, request_id: int, payload: ReasonIn) -> Any:
    resume_request = get_object_or_404(
        ResumeRequest.objects.select_related("engine"), pk=request_id
    )
    return resume.resume_request_reject(
        resume_request=resume_request,
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )


# --- broker statements ----------------------------------------------------------------------


class StatementIn(Schema):
    model_config = ConfigDict(extra="forbid")

    csv: str = Field(
        ...,
        description="The statement file's text (docs/broker-statements.md)",
        max_length=2_000_000,
    )
    filename: str = Field("", max_length=255)


class DifferenceOut(Schema):
    kind: str
    line: int | None
    symbol: str
    trade_id: str
    ledger_value: str
    broker_value: str
    detail: str


class StatementOut(Schema):
    id: int
    engine: str
    statement_date: date
    trades: int
    positions: int
    matched: bool
    differences_count: int
    ledger_summary: dict[str, str]
    broker_summary: dict[str, str]
    imported_by: str
    imported_at: datetime
    differences: list[DifferenceOut]

    @staticmethod
    def resolve_engine(statement: BrokerStatement) -> str:
        return statement.engine.name

    @staticmethod
    def resolve_imported_by(statement: BrokerStatement) -> str:
        return statement.imported_by_label

    @staticmethod
    def resolve_differences(statement: BrokerStatement) -> list[StatementDifference]:
        return list(statement.differences.all())


@api.post(
    "/engines/{name}/statements",
    response={201: StatementOut, **error_responses(403, 404)},
    tags=["broker statements"],
)
def statement_create(request: HttpRequest, name: str, payload: StatementIn) -> Any:
    """Import a broker statement of the engine (one day's trades and end-of-day positions, CSV)
    and reconcile it against the fill ledger. A bad statement is refused whole (400), each bad
    line named under ``errors`` by its number; nothing of it is stored."""
    _require(request, "controlplane.import_statement")
    engine = get_object_or_404(Engine, name=name)
    if "\x00" in payload.csv:
        raise HttpError(400, "csv: the statement contains a NUL character")
    try:
        statement = statement_import(
            engine=engine,
            data=payload.csv.encode(),
            filename=payload.filename,
            actor=request.user,  # type: ignore[arg-type]
            ip_address=client_ip(request),
        )
    except StatementRefused as refused:
        errors = {f"line {line}": reason for line, reason in refused.errors}
        if refused.more:
            errors["more"] = f"{refused.more} more bad lines"
        return api.create_response(request, {"detail": str(refused), "errors": errors}, status=400)
    return Status(201, statement)


@api.get(
    "/engines/{name}/statements",
    response={200: list[StatementOut], **error_responses(403, 404)},
    tags=["broker statements"],
)
def statements(request: HttpRequest, name: str) -> Any:
    """The engine's imported statements, the latest day first, with their differences."""
    _require(request, "controlplane.view_brokerstatement")
    engine = get_object_or_404(Engine, name=name)
    return list(
        BrokerStatement.objects.filter(engine=engine)
        .select_related("engine")
        .prefetch_related("differences")[:100]
    )


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400, for a request refused before any view read it (a body over the server's
    limit, a malformed upload): on the API, JSON naming the problem; elsewhere Django's page."""
    if not request.path.startswith("/api/"):
        return defaults.bad_request(request, exception)  # type: ignore[arg-type]
    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        detail = f"the request body is larger than this server takes ({limit:,} bytes)"
        return JsonResponse({"detail": detail}, status=413)
    return JsonResponse({"detail": "the request was refused as malformed"}, status=400)


def urls() -> tuple[list[Any], str, str]:
    """The API's URL patterns, exempt from the login redirect: the API answers 401 itself."""
    patterns, app_name, namespace = api.urls
    for pattern in patterns:
        callback = getattr(pattern, "callback", None)
        if getattr(callback, "__name__", "").endswith("view_wrapper"):
            callback.login_required = False
    return patterns, app_name, namespace
