"""Promotions through the HTTP API (docs/going-live.md, "The API"): an engine's gate and its
promotion requests, and the request, approval, rejection and cancellation of a step. Every write
is a golive.services call, so four eyes, rights, the audit log and the refusals are those of the
go-live page. The composition root mounts this router on the API (controlplane.api).

Errors: 400 names each bad field (a missing reason, a request already decided), 403 a missing
right, 404 an unknown engine or request, 409 a refusal (a failing gate, naming its criteria; the
requester approving their own request; a failing pre-flight check).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from functools import wraps
from typing import Any, Literal

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Query, Router, Schema
from ninja.errors import HttpError
from ninja.responses import Status
from pydantic import ConfigDict

from controlplane.api import Day, Moment, error_responses
from controlplane.audit import client_ip
from controlplane.models import Engine
from golive import comparison, divergence, gates, preflight, redlines, services
from golive.models import DivergenceDay, PromotionRequest, RedLineEvent

router = Router(tags=["promotions"])

_requests = PromotionRequest.objects.select_related("engine")


# --- schemas ----------------------------------------------------------------------------------


class CriterionOut(Schema):
    key: str
    label: str
    threshold: str = Field(..., description="the policy's threshold, as the page shows it")
    value: float | None = Field(..., description="what was measured; null when not known")
    value_text: str
    status: Literal["pass", "fail", "unknown"]
    since: datetime | None = Field(..., description="when it started passing, if knowable")
    evidence: str | None = Field(..., description="a URL path to what it was measured from")
    source: str


class CheckOut(Schema):
    key: str
    label: str
    status: Literal["pass", "fail", "unknown"]
    detail: str
    evidence: str | None


class GateOut(Schema):
    engine: str
    stage: str
    next_stage: str | None = Field(..., description="null in full production")
    ready: bool = Field(..., description="every enabled criterion passes")
    criteria: list[CriterionOut]
    preflight: list[CheckOut] | None = Field(
        ..., description="before a step into real orders: what must hold now; null otherwise"
    )


class PromotionRequestOut(Schema):
    id: int
    engine: str = Field(..., alias="engine.name")
    from_stage: str
    to_stage: str
    requested_by: str = Field(..., alias="requested_by_label")
    reason: str
    created_at: datetime
    status: str
    decided_by: str = Field(..., alias="decided_by_label")
    decided_at: datetime | None
    decision_reason: str
    override: bool = Field(..., description="approved over a failing or unknown gate")


class PromotionReasonIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=2000)


class PromotionApproveIn(Schema):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=2000, description="required with override")
    override: bool = Field(False, description="approve over a failing gate (risk managers)")


# --- errors -----------------------------------------------------------------------------------


def _status(passed: bool | None) -> str:
    return "unknown" if passed is None else "pass" if passed else "fail"


def _answers(view: Callable[..., Any]) -> Callable[..., Any]:
    """The services' refusals as the API's errors: the same words as on the page."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            return view(request, *args, **kwargs)
        except services.PromotionForbidden as exc:
            return Status(403, {"detail": str(exc)})
        except services.PromotionRefused as exc:
            return Status(409, {"detail": str(exc)})
        except ValidationError as exc:
            errors = {field: " ".join(messages) for field, messages in exc.message_dict.items()}
            detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
            return Status(400, {"detail": detail, "errors": errors})

    return wrapper


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):  # type: ignore[union-attr]
        raise HttpError(403, f"{request.user.get_username()} lacks the {permission} permission")


def _engine(name: str) -> Engine:
    engine = Engine.objects.filter(name=name).first()
    if engine is None:
        raise HttpError(404, f"no engine is named {name!r}")
    return engine


def _request(request_id: int) -> PromotionRequest:
    found = _requests.filter(pk=request_id).first()
    if found is None:
        raise HttpError(404, f"no promotion request has the id {request_id}")
    return found


# --- reads ------------------------------------------------------------------------------------


class FigureOut(Schema):
    key: str
    label: str
    unit: str
    live: float | None
    baseline: float | None
    difference: float | None
    text: str
    points_at: str | None


class CauseOut(Schema):
    key: str
    label: str
    explanation: str
    figures: list[str]


class ComparisonOut(Schema):
    engine: str
    start: datetime
    end: datetime
    against: str = Field(
        ..., description="'backtest', or the reference engine compared against over the same days"
    )
    against_stage: str | None = Field(..., description="the reference engine's stage now")
    baseline: str | None = Field(..., description="the backtest baseline's or reference's name")
    significant: bool | None
    threshold_pct: float
    figures: list[FigureOut]
    causes: list[CauseOut]


@router.get(
    "/engines/{name}/comparison",
    response={200: ComparisonOut, **error_responses(403, 404)},
    tags=["going live"],
)
def engine_comparison(
    request: HttpRequest,
    name: str,
    start: Moment | None = None,
    end: Moment | None = None,
    against: str = "backtest",
) -> Any:
    """The engine's record over [start, end) against its backtest baseline (``against=backtest``,
    the default) or against the record of another engine over the same days (``against=NAME``:
    the same strategy at an earlier stage, e.g. a shadow engine against its paper companion). By
    default from the start of its current stage to now (docs/going-live.md, "Live against the
    baseline")."""
    _require(request, "controlplane.view_engine")
    engine = _engine(name)
    reference = reference_engine(engine, against)
    now = timezone.now()
    end = end or now
    if start is None:
        start = gates.report(engine, now).period_start or engine.created_at or now
    if start.tzinfo is None or end.tzinfo is None:
        raise HttpError(400, "start and end need a timezone (e.g. 2026-12-01T00:00:00Z)")
    if not (1900 <= start.year <= 2999 and 1900 <= end.year <= 2999):
        raise HttpError(400, "start and end must fall between 1900 and 2999")
    if not start < end:
        raise HttpError(400, f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    if end - start > timedelta(days=3660):
        raise HttpError(400, "a comparison covers at most ten years")
    result = comparison.compare(engine, start, end, reference)
    return {
        "engine": engine.name,
        "start": start,
        "end": end,
        "against": reference.name if reference else "backtest",
        "against_stage": reference.stage if reference else None,
        "baseline": result.baseline_name,
        "significant": result.significant,
        "threshold_pct": result.threshold_pct,
        "figures": result.figures,
        "causes": result.causes,
    }


def reference_engine(engine: Engine, against: str) -> Engine | None:
    """``against`` of a comparison: None for the backtest, else the engine it names (another
    one). 400 naming the field otherwise."""
    against = (against or "backtest").strip()
    if against == "backtest":
        return None
    if against == engine.name:
        raise HttpError(400, "against: an engine is not compared with itself")
    found = Engine.objects.filter(name=against[:200]).first()
    if found is None:
        raise HttpError(400, f"against: no engine is named {against[:80]!r} (or 'backtest')")
    return found


class DivergenceDayOut(Schema):
    day: date
    stage: str
    live_return_pct: float | None
    baseline_return_pct: float | None
    divergence_pct: float | None = Field(
        ..., description="|live - baseline| / |baseline| x 100 of the day's return"
    )
    beyond_threshold: bool = Field(..., description="divergence above DIVERGENCE_LOG_ALERT_PCT")
    figures: dict[str, dict[str, Any]] = Field(
        ..., description="every figure of the day's comparison: live, baseline, difference, text"
    )
    note: str
    root_cause: str
    noted_by: str = Field(..., alias="noted_by_label")
    noted_at: datetime | None


class DivergenceLogOut(Schema):
    engine: str
    threshold_pct: float
    rows: list[DivergenceDayOut] = Field(..., description="newest first")
    more: bool = Field(..., description="older rows in the range beyond the limit")


class DivergenceNoteIn(Schema):
    model_config = ConfigDict(extra="forbid")

    note: str = Field(..., max_length=divergence.NOTE_MAX)
    root_cause: str = Field("", description="infrastructure, market, strategy, or empty")


def _day_row(row: DivergenceDay) -> DivergenceDay:
    row.beyond_threshold = divergence.beyond(row)  # type: ignore[attr-defined]
    return row


@router.get(
    "/engines/{name}/divergence",
    response={200: DivergenceLogOut, **error_responses(403, 404)},
    tags=["going live"],
)
def divergence_log(
    request: HttpRequest,
    name: str,
    start: Day | None = None,
    end: Day | None = None,
    limit: int = Query(200, ge=1, le=1000, description="at most this many days"),
) -> Any:
    """The engine's divergence log, newest first: the days from ``start`` to ``end`` (both
    included; by default all), at most ``limit`` of them (``more`` says whether older ones in
    the range were left out: ask again with ``end`` before the oldest given)."""
    _require(request, "controlplane.view_engine")
    engine = _engine(name)
    if start is not None and end is not None and start > end:
        raise HttpError(400, f"start ({start}) must not be after end ({end})")
    rows = divergence.days_between(engine, start, end, limit + 1)
    return {
        "engine": engine.name,
        "threshold_pct": divergence.threshold_pct(),
        "rows": [_day_row(row) for row in rows[:limit]],
        "more": len(rows) > limit,
    }


@router.api_operation(
    ["POST", "PUT"],
    "/engines/{name}/divergence/{day}/note",
    response={200: DivergenceDayOut, **error_responses(403, 404)},
    tags=["going live"],
)
def divergence_note(request: HttpRequest, name: str, day: Day, payload: DivergenceNoteIn) -> Any:
    """Attach what was found to a day of the log, replacing its note: the note and its root
    cause (infrastructure, market or strategy). Operators and risk managers may (the right
    golive.request_promotion); audited."""
    engine = _engine(name)
    row = DivergenceDay.objects.filter(engine=engine, day=day).first()
    if row is None:
        raise HttpError(404, f"{engine.name} has no divergence log row for {day}")
    try:
        saved = divergence.note_set(
            row=row,
            actor=request.user,  # type: ignore[arg-type]
            note=payload.note,
            root_cause=payload.root_cause,
            ip_address=client_ip(request),
        )
    except PermissionDenied as exc:
        return Status(403, {"detail": str(exc)})
    except ValidationError as exc:
        errors = {field: " ".join(messages) for field, messages in exc.message_dict.items()}
        detail = "; ".join(f"{field}: {message}" for field, message in errors.items())
        return Status(400, {"detail": detail, "errors": errors})
    return _day_row(saved)


@router.get("/engines/{name}/gate", response={200: GateOut, **error_responses(403, 404)})
def gate(request: HttpRequest, name: str) -> Any:
    """The gate of the engine's next step, computed now: each enabled criterion with its
    threshold, what was measured, pass, fail or unknown, and its evidence."""
    _require(request, "controlplane.view_engine")
    engine = _engine(name)
    now = timezone.now()
    report = gates.report(engine, now)
    checks = preflight.checks(engine, now) if preflight.needed(report.to_stage) else None
    return {
        "engine": engine.name,
        "stage": engine.stage,
        "next_stage": report.to_stage,
        "ready": report.ready,
        "criteria": [
            {
                "key": c.key,
                "label": c.label,
                "threshold": c.threshold_text,
                "value": c.value,
                "value_text": c.value_text,
                "status": _status(c.passed),
                "since": c.since,
                "evidence": c.evidence,
                "source": c.source,
            }
            for c in report.criteria
        ],
        "preflight": [
            {
                "key": c.key,
                "label": c.label,
                "status": _status(c.passed),
                "detail": c.detail,
                "evidence": c.evidence,
            }
            for c in checks
        ]
        if checks is not None
        else None,
    }


@router.get(
    "/engines/{name}/promotion-requests",
    response={200: list[PromotionRequestOut], **error_responses(403, 404)},
)
def promotion_requests(request: HttpRequest, name: str) -> Any:
    """The engine's promotion requests, newest first (at most 200)."""
    _require(request, "controlplane.view_engine")
    return list(_requests.filter(engine=_engine(name))[:200])


# --- writes -----------------------------------------------------------------------------------


@router.post(
    "/engines/{name}/promotion-requests",
    response={201: PromotionRequestOut, **error_responses(403, 404)},
)
@_answers
def promotion_request_create(request: HttpRequest, name: str, payload: PromotionReasonIn) -> Any:
    """Ask for the engine's next stage, saying why; a second person with the risk right decides.
    400 without a reason, in full production, or while a request is pending."""
    created = services.promotion_request(
        engine=_engine(name),
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )
    return Status(201, _requests.get(pk=created.pk))


@router.post(
    "/promotion-requests/{request_id}/approve",
    response={200: PromotionRequestOut, **error_responses(403, 404, 409)},
)
@_answers
def promotion_request_approve(
    request: HttpRequest, request_id: int, payload: PromotionApproveIn
) -> Any:
    """Approve: the engine moves to the requested stage if its gate passes now. 409 names each
    failing or unknown criterion; with ``override`` and a reason a risk manager approves anyway
    (never over a failing pre-flight check)."""
    approved = services.promotion_approve(
        request=_request(request_id),
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        override=payload.override,
        ip_address=client_ip(request),
    )
    return _requests.get(pk=approved.pk)


@router.post(
    "/promotion-requests/{request_id}/reject",
    response={200: PromotionRequestOut, **error_responses(403, 404, 409)},
)
@_answers
def promotion_request_reject(
    request: HttpRequest, request_id: int, payload: PromotionReasonIn
) -> Any:
    """Turn the request down, saying why (a risk manager other than the requester)."""
    rejected = services.promotion_reject(
        request=_request(request_id),
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )
    return _requests.get(pk=rejected.pk)


@router.post(
    "/promotion-requests/{request_id}/cancel",
    response={200: PromotionRequestOut, **error_responses(403, 404)},
)
@_answers
def promotion_request_cancel(
    request: HttpRequest, request_id: int, payload: PromotionReasonIn
) -> Any:
    """Withdraw the request (its requester only)."""
    cancelled = services.promotion_cancel(
        request=_request(request_id),
        actor=request.user,  # type: ignore[arg-type]
        reason=payload.reason,
        ip_address=client_ip(request),
    )
    return _requests.get(pk=cancelled.pk)


# --- red lines (docs/going-live.md, "Red lines") -----------------------------------------------


class RedLineEventOut(Schema):
    id: int
    engine: str
    kind: str = Field(..., description="max_drawdown, sharpe, divergence or critical_errors")
    label: str
    at: datetime
    stage: str = Field(..., description="the stage the engine was at when it crossed")
    action: Literal["demote", "pause", "kill"]
    to_stage: str = Field(..., description="where it was demoted; empty when it was not")
    value: float = Field(..., description="the figure that crossed")
    threshold: float
    threshold_text: str
    window: int | None = Field(..., description="trading days or hours, for the rules with one")
    period_start: datetime | None = Field(..., description="when its judged stage began")
    figures: dict[str, Any] = Field(..., description="its window and data")
    message: str
    command_id: str | None = Field(..., description="the pause or the kill issued")
    alert_id: int | None


@router.get(
    "/engines/{name}/red-lines",
    response={200: list[RedLineEventOut], **error_responses(403, 404)},
    tags=["going live"],
)
def red_line_events(request: HttpRequest, name: str) -> Any:
    """The red lines the engine crossed, newest first (at most 200), each with the figures that
    crossed and what was done."""
    _require(request, "controlplane.view_engine")
    events: list[RedLineEvent] = redlines.events_of(_engine(name), limit=200)
    return [
        {
            **{f: getattr(e, f) for f in ("id", "kind", "label", "at", "stage", "action")},
            "engine": e.engine.name,
            "to_stage": e.to_stage,
            "value": e.value,
            "threshold": float(e.threshold),
            "threshold_text": e.threshold_text,
            "window": e.window,
            "period_start": e.period_start,
            "figures": e.figures,
            "message": e.message,
            "command_id": str(e.command_id) if e.command_id else None,
            "alert_id": e.alert_id,
        }
        for e in events
    ]
