"""The journal through the HTTP API (docs/operations.md): the trading log, the runbooks with what
points at them, and the reviews with their computed checks and sign-off. Every write is the
service the pages call, so rights, history, audit entries and refusals are the same.

Errors: 400 names each bad field, 403 a missing right, 404 an unknown day, engine, runbook or
period, 409 a refusal (signing off a period not over, or signed already).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from functools import wraps
from typing import Any, Literal

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from pydantic import ConfigDict, StrictBool

from controlplane.api import Day, error_responses
from controlplane.audit import client_ip
from controlplane.models import Engine
from journal import figures, reviews, runbooks, tradinglog
from journal.models import LogEntry, Runbook

router = Router(tags=["journal"])


def _answers(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return view(request, *args, **kwargs)
        except PermissionDenied as exc:
            return Status(403, {"detail": str(exc) or "permission denied"})
        except reviews.ReviewRefused as exc:
            return Status(409, {"detail": str(exc)})
        except ValidationError as exc:
            errors = {field: " ".join(messages) for field, messages in exc.message_dict.items()}
            detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
            return Status(400, {"detail": detail, "errors": errors})

    return wrapper


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):  # type: ignore[union-attr]
        raise HttpError(403, f"{request.user.get_username()} lacks the {permission} permission")


def _engine(name: str | None) -> Engine | None:
    if not name:
        return None
    engine = Engine.objects.filter(name=name).first()
    if engine is None:
        raise HttpError(404, f"no engine is named {name!r}")
    return engine


def _in_range(day: date, field: str) -> date:
    if not tradinglog.FIRST_DAY <= day <= tradinglog.LAST_DAY:
        raise HttpError(400, f"{field} must fall between 1900 and 2999")
    return day


# --- Trading log ---------------------------------------------------------------------------------


class FiguresOut(Schema):
    trades: int
    pnl: float | None
    pnl_pct: float | None = Field(..., description="null when no equity was reported that day")
    rejects: int
    alerts: int
    errors: int
    commands: int


class LogEntryOut(Schema):
    day: date
    engine: str | None = Field(..., description="null: the desk's entry")
    trend: str
    volatility: str
    key_events: str
    notes: str = Field(..., description="Markdown, as written")
    figures: FiguresOut | None = Field(..., description="the day's figures as of the last save")
    version: int
    updated_by: str = Field(..., alias="updated_by_label")
    updated_at: datetime

    @staticmethod
    def resolve_engine(entry: LogEntry) -> str | None:
        return entry.engine.name if entry.engine else None

    @staticmethod
    def resolve_figures(entry: LogEntry) -> dict[str, Any] | None:
        return entry.figures or None


class LogDayOut(Schema):
    day: date
    engine: str | None
    entry: LogEntryOut | None = Field(..., description="null until someone writes the day")
    figures: FiguresOut = Field(..., description="what the data says of the day now")


class LogEntryIn(Schema):
    model_config = ConfigDict(extra="forbid")

    engine: str | None = Field(None, max_length=64, description="omit for the desk's entry")
    trend: Literal["", "up", "down", "sideways", "mixed"] = ""
    volatility: Literal["", "low", "normal", "high", "extreme"] = ""
    key_events: str = Field("", max_length=2000)
    notes: str = Field("", max_length=20000, description="Markdown")
    version: int | None = Field(
        None, ge=0, le=2**31 - 1, description="the version you edited; 400 if it has moved on"
    )


class RevisionOut(Schema):
    version: int
    trend: str
    volatility: str
    key_events: str
    notes: str
    edited_by: str = Field(..., alias="edited_by_label")
    edited_at: datetime


@router.get("/log", response={200: list[LogEntryOut], **error_responses(403, 404)})
def log_entries(
    request: HttpRequest,
    q: str = Query("", max_length=200),
    engine: str | None = None,
    start: Day | None = None,
    end: Day | None = None,
) -> Any:
    """Search the trading log: entries whose notes or key events hold ``q`` (any case), of one
    engine, between ``start`` and ``end``; newest first, at most 200."""
    _require(request, "journal.view_logentry")
    return list(
        tradinglog.search(
            text=q,
            engine=_engine(engine),
            start=_in_range(start, "start") if start else None,
            end=_in_range(end, "end") if end else None,
        )
    )


@router.get("/log/{day}", response={200: LogDayOut, **error_responses(403, 404)})
def log_day(request: HttpRequest, day: Day, engine: str | None = None) -> Any:
    """The day's entry (the desk's, or ``engine``'s) and what the data says of the day now."""
    _require(request, "journal.view_logentry")
    _in_range(day, "day")
    found = _engine(engine)
    return {
        "day": day,
        "engine": found.name if found else None,
        "entry": tradinglog.entry_of(day, found),
        "figures": figures.day_figures(day, found.pk if found else None),
    }


@router.put("/log/{day}", response={200: LogEntryOut, **error_responses(403, 404)})
@_answers
def log_day_save(request: HttpRequest, day: Day, payload: LogEntryIn) -> Any:
    """Write the day's entry (operators); the day's figures are filled in from the data. Each
    save that changes something is a new version in its history, and an audit entry."""
    _in_range(day, "day")
    saved = tradinglog.log_entry_save(
        day=day,
        engine=_engine(payload.engine),
        actor=request.user,  # type: ignore[arg-type]
        trend=payload.trend,
        volatility=payload.volatility,
        key_events=payload.key_events,
        notes=payload.notes,
        version=payload.version,
        ip_address=client_ip(request),
    )
    return LogEntry.objects.select_related("engine").get(pk=saved.pk)


@router.get("/log/{day}/history", response={200: list[RevisionOut], **error_responses(403, 404)})
def log_day_history(request: HttpRequest, day: Day, engine: str | None = None) -> Any:
    """Every version of the day's entry, newest first."""
    _require(request, "journal.view_logentry")
    _in_range(day, "day")
    entry = tradinglog.entry_of(day, _engine(engine))
    if entry is None:
        raise HttpError(404, f"nobody has written the log of {day}")
    return list(tradinglog.history(entry))


# --- Runbooks ------------------------------------------------------------------------------------


class RunbookOut(Schema):
    slug: str
    title: str
    scenario: str
    body: str = Field(..., description="Markdown")
    version: int
    updated_by: str = Field(..., alias="updated_by_label")
    updated_at: datetime
    alert_rules: list[str] = Field(..., description="alert rules pointing at it")
    limit_kinds: list[str] = Field(..., description="kinds of risk limit pointing at it")
    url: str

    @staticmethod
    def resolve_alert_rules(runbook: Runbook) -> list[str]:
        return runbooks.links_of(runbook).alert_rules

    @staticmethod
    def resolve_limit_kinds(runbook: Runbook) -> list[str]:
        return runbooks.links_of(runbook).limit_kinds

    @staticmethod
    def resolve_url(runbook: Runbook) -> str:
        return runbooks.url_of(runbook)


class RunbookIn(Schema):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(..., max_length=120)
    scenario: str = Field(..., max_length=300)
    body: str = Field(..., max_length=50000, description="Markdown")
    reason: str = Field("", max_length=2000)


class RunbookCreateIn(RunbookIn):
    slug: str = Field(..., max_length=64)


class RunbookLinksIn(Schema):
    model_config = ConfigDict(extra="forbid")

    alert_rules: list[str] = Field(..., max_length=200)
    limit_kinds: list[str] = Field(..., max_length=50)


class RunbookRevisionOut(Schema):
    version: int
    title: str
    scenario: str
    body: str
    reason: str
    edited_by: str = Field(..., alias="edited_by_label")
    edited_at: datetime


def _runbook(slug: str) -> Runbook:
    found = Runbook.objects.filter(slug=slug).first()
    if found is None:
        raise HttpError(404, f"no runbook is named {slug!r}")
    return found


@router.get("/runbooks", response={200: list[RunbookOut], **error_responses(403)})
def runbook_list(request: HttpRequest) -> Any:
    _require(request, "journal.view_runbook")
    return list(Runbook.objects.all())


@router.get("/runbooks/{slug}", response={200: RunbookOut, **error_responses(403, 404)})
def runbook_detail(request: HttpRequest, slug: str) -> Any:
    _require(request, "journal.view_runbook")
    return _runbook(slug)


@router.post("/runbooks", response={201: RunbookOut, **error_responses(403)})
@_answers
def runbook_create(request: HttpRequest, payload: RunbookCreateIn) -> Any:
    """A new runbook (risk managers)."""
    created = runbooks.runbook_save(
        runbook=None,
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
        **payload.dict(),
    )
    return Status(201, created)


@router.put("/runbooks/{slug}", response={200: RunbookOut, **error_responses(403, 404)})
@_answers
def runbook_update(request: HttpRequest, slug: str, payload: RunbookIn) -> Any:
    """Edit a runbook (risk managers): a new version in its history."""
    return runbooks.runbook_save(
        runbook=_runbook(slug),
        actor=request.user,  # type: ignore[arg-type]
        ip_address=client_ip(request),
        **payload.dict(),
    )


@router.put("/runbooks/{slug}/links", response={200: RunbookOut, **error_responses(403, 404)})
@_answers
def runbook_links(request: HttpRequest, slug: str, payload: RunbookLinksIn) -> Any:
    """Exactly these alert rules (by name) and kinds of risk limit point at the runbook; one that
    pointed at another runbook now points here (risk managers)."""
    found = _runbook(slug)
    runbooks.runbook_links_set(
        runbook=found,
        actor=request.user,  # type: ignore[arg-type]
        alert_rules=payload.alert_rules,
        limit_kinds=payload.limit_kinds,
        ip_address=client_ip(request),
    )
    return found


@router.get(
    "/runbooks/{slug}/history",
    response={200: list[RunbookRevisionOut], **error_responses(403, 404)},
)
def runbook_history(request: HttpRequest, slug: str) -> Any:
    _require(request, "journal.view_runbook")
    return list(_runbook(slug).revisions.all())


# --- Reviews -------------------------------------------------------------------------------------

PeriodName = Literal["daily", "weekly", "monthly", "quarterly"]


class CheckOut(Schema):
    key: str
    label: str
    computed: bool = Field(..., description="answered by the data; false: ticked by a person")
    status: Literal["pass", "fail", "unknown", "done", "open"]
    detail: str


class ReviewOut(Schema):
    period: str
    start: date
    end: date
    label: str
    due_at: datetime
    overdue: bool
    signed_off_by: str | None
    signed_off_at: datetime | None
    note: str
    checks: list[CheckOut] = Field(
        ..., description="as kept at the sign-off, or computed now when not signed off"
    )


class SignOffIn(Schema):
    model_config = ConfigDict(extra="forbid")

    manual: dict[str, StrictBool] = Field(
        default_factory=dict, description="each manual item's key: ticked (all must be)"
    )
    note: str = Field("", max_length=20000, description="required when a computed check fails")


def _review_out(owed: reviews.Owed, *, with_checks: bool, now: datetime) -> dict[str, Any]:
    review = owed.review
    if review is not None:
        checks = review.results
    elif with_checks:
        checks = reviews.checklist(owed.period, owed.start)
    else:
        checks = []
    return {
        "period": owed.period,
        "start": owed.start,
        "end": owed.end,
        "label": owed.label,
        "due_at": owed.due_at,
        "overdue": owed.overdue(now),
        "signed_off_by": review.signed_off_by_label if review else None,
        "signed_off_at": review.signed_off_at if review else None,
        "note": review.note if review else "",
        "checks": checks,
    }


def _owed(period: str, start: date) -> reviews.Owed:
    if not reviews.is_period_start(period, start):
        raise HttpError(404, f"{start} does not start a {period} period")
    found = next((o for o in reviews.owed(period=period) if o.start == start), None)
    if found is None:
        raise HttpError(404, f"no {period} review of {start} is owed (not over, or not scheduled)")
    return found


@router.get("/reviews", response={200: list[ReviewOut], **error_responses(403)})
def review_list(
    request: HttpRequest,
    period: PeriodName | None = None,
    status: Literal["overdue", "signed", "all"] = "all",
) -> Any:
    """The reviews owed (their period is over), newest first, at most 200; without their checks
    (ask for one review to have them computed)."""
    _require(request, "journal.view_review")
    now = timezone.now()
    found = reviews.owed(now, period=period)
    if status == "overdue":
        found = [o for o in found if o.overdue(now)]
    elif status == "signed":
        found = [o for o in found if o.review is not None]
    return [_review_out(o, with_checks=False, now=now) for o in found[:200]]


@router.get("/reviews/{period}/{start}", response={200: ReviewOut, **error_responses(403, 404)})
def review_detail(request: HttpRequest, period: PeriodName, start: Day) -> Any:
    """One review with its checklist: computed now until signed off, as kept after."""
    _require(request, "journal.view_review")
    return _review_out(
        _owed(period, _in_range(start, "start")), with_checks=True, now=timezone.now()
    )


@router.post(
    "/reviews/{period}/{start}/sign-off",
    response={200: ReviewOut, **error_responses(403, 404, 409)},
)
@_answers
def review_sign_off(
    request: HttpRequest, period: PeriodName, start: Day, payload: SignOffIn
) -> Any:
    """Sign the review off (daily and weekly: operators; monthly and quarterly: risk managers).
    400 names each manual item not ticked, and asks for a note when a computed check fails;
    409 when the period is not over or is signed off already."""
    _in_range(start, "start")
    if not reviews.is_period_start(period, start):
        raise HttpError(404, f"{start} does not start a {period} period")
    reviews.review_sign_off(
        period=period,
        start=start,
        actor=request.user,  # type: ignore[arg-type]
        manual=payload.manual,
        note=payload.note,
        ip_address=client_ip(request),
    )
    return _review_out(_owed(period, start), with_checks=True, now=timezone.now())
