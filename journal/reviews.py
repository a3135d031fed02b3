"""Review checklists (docs/operations.md, "Reviews"): daily, weekly, monthly and quarterly. Each
period's checklist comes from ``ReviewItem`` rows; an item naming a computed check is answered by
the data (CHECKS below), the rest are ticked by the person who signs the review off. A review is
owed for every period that has ended since its schedule started, due ``grace_days`` after the
period's end (midnight in the desk's time zone); one not signed off by then is overdue and shows
on the fleet overview."""

from __future__ import annotations

import calendar
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from controlplane.audit import audit_record
from controlplane.models import EngineLog, Order, Position
from journal import figures
from journal.models import NOTES_MAX, Period, Review, ReviewItem, ReviewSchedule
from journal.text import clean_text
from risk.models import RiskEvent

# |z| above this: the day's P&L is outside normal variance.
Z_LIMIT = 2.0
PNL_HISTORY_DAYS = 30
SIGN_PERMISSION = {
    Period.DAILY: "journal.sign_review",
    Period.WEEKLY: "journal.sign_review",
    Period.MONTHLY: "journal.sign_period_review",
    Period.QUARTERLY: "journal.sign_period_review",
}
OVERDUE_SHOWN = 20


class ReviewRefused(Exception):
    """The review cannot be signed off now (the period is not over, or it is signed already)."""


# --- Periods -------------------------------------------------------------------------------------


def period_end(period: str, start: date) -> date:
    if period == Period.DAILY:
        return start
    if period == Period.WEEKLY:
        return start + timedelta(days=6)
    months = 1 if period == Period.MONTHLY else 3
    month = start.month + months - 1
    year = start.year + (month - 1) // 12
    month = (month - 1) % 12 + 1
    return date(year, month, calendar.monthrange(year, month)[1])


def is_period_start(period: str, start: date) -> bool:
    if period == Period.DAILY:
        return start.weekday() < 5  # trading days: Monday to Friday
    if period == Period.WEEKLY:
        return start.weekday() == 0
    if period == Period.MONTHLY:
        return start.day == 1
    return start.day == 1 and start.month in (1, 4, 7, 10)


def period_containing(period: str, day: date) -> date:
    """The start of the period of ``period`` kind that holds ``day`` (daily: the day itself)."""
    if period == Period.DAILY:
        return day
    if period == Period.WEEKLY:
        return day - timedelta(days=day.weekday())
    if period == Period.MONTHLY:
        return day.replace(day=1)
    return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)


def next_start(period: str, start: date) -> date:
    if period == Period.DAILY:
        following = start + timedelta(days=1)
        while following.weekday() >= 5:
            following += timedelta(days=1)
        return following
    return period_end(period, start) + timedelta(days=1)


def due_at(period: str, start: date, grace_days: int, tz: ZoneInfo) -> datetime:
    """Midnight in ``tz`` ending the ``grace_days``-th day after the period's last day."""
    last = period_end(period, start)
    return datetime.combine(last + timedelta(days=grace_days + 1), time.min, tzinfo=tz)


def period_label(period: str, start: date) -> str:
    if period == Period.DAILY:
        return f"{start:%a %d %b %Y}"
    if period == Period.WEEKLY:
        year, week, _ = start.isocalendar()
        return f"week {year}-W{week:02d}"
    if period == Period.MONTHLY:
        return f"{start:%B %Y}"
    return f"Q{(start.month - 1) // 3 + 1} {start.year}"


@dataclass(frozen=True)
class Owed:
    """A review owed: its period, due date and, once signed off, its row."""

    period: str
    start: date
    end: date
    due_at: datetime
    review: Review | None

    @property
    def label(self) -> str:
        return period_label(self.period, self.start)

    @property
    def url(self) -> str:
        return reverse("journal:review", args=[self.period, self.start.isoformat()])

    def overdue(self, now: datetime) -> bool:
        return self.review is None and now >= self.due_at


def _owed_starts(schedule: ReviewSchedule, until: date) -> Iterator[date]:
    """Starts of the periods that ended on or after the schedule's start and by ``until``."""
    start = period_containing(schedule.period, schedule.starts_on)
    if not is_period_start(schedule.period, start):
        start = next_start(schedule.period, start)
    while period_end(schedule.period, start) < schedule.starts_on:
        start = next_start(schedule.period, start)
    while period_end(schedule.period, start) <= until:
        yield start
        start = next_start(schedule.period, start)


def owed(now: datetime | None = None, *, period: str | None = None) -> list[Owed]:
    """Every review owed by ``now`` (its period ended), newest first, with its sign-off if any.
    Two queries."""
    now = now or timezone.now()
    tz = figures.desk_tz()
    today = now.astimezone(tz).date()
    schedules = ReviewSchedule.objects.filter(enabled=True)
    if period:
        schedules = schedules.filter(period=period)
    signed = {(r.period, r.period_start): r for r in Review.objects.all()}
    found = []
    for schedule in schedules:
        for start in _owed_starts(schedule, today - timedelta(days=1)):
            found.append(
                Owed(
                    period=schedule.period,
                    start=start,
                    end=period_end(schedule.period, start),
                    due_at=due_at(schedule.period, start, schedule.grace_days, tz),
                    review=signed.get((schedule.period, start)),
                )
            )
    found.sort(key=lambda o: (o.end, o.period), reverse=True)
    return found


def overdue(now: datetime | None = None) -> list[Owed]:
    """Reviews past their due time and not signed off, most overdue first."""
    now = now or timezone.now()
    late = [o for o in owed(now) if o.overdue(now)]
    return sorted(late, key=lambda o: o.due_at)


# --- Computed checks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    key: str
    label: str
    computed: bool
    status: str  # pass, fail, unknown; a manual item: done or open
    detail: str


def _window(start: date, end: date) -> tuple[datetime, datetime]:
    return figures.bounds(start, end, figures.desk_tz())


def check_positions(start: date, end: date) -> tuple[str, str]:
    """Positions of the expected size and direction: each open position the control plane holds
    equals what its engine reports, quantity and sign (as the positions are now)."""
    held = Position.objects.exclude(quantity=0, reported_quantity__isnull=True).select_related(
        "engine", "instrument"
    )
    wrong = []
    compared = 0
    for position in held:
        if position.reported_quantity is None:
            continue
        compared += 1
        if position.reported_quantity != position.quantity:
            ledger, reported = position.quantity.normalize(), position.reported_quantity.normalize()
            wrong.append(
                f"{position.engine.name} {position.instrument.symbol}: ledger {ledger:f}, "
                f"engine {reported:f}"
            )
    if wrong:
        return "fail", f"{len(wrong)} of {compared} differ: " + "; ".join(wrong[:10])
    if compared == 0:
        return "unknown", "no engine has reported its positions"
    return "pass", f"all {compared} positions match what the engines report"


def pnl_zscore(day: date) -> tuple[float | None, float | None, int]:
    """The desk's P&L of ``day``, its z-score against the daily P&L of the 30 days before, and
    how many of those days had one."""
    tz = figures.desk_tz()
    opening, closes = figures.equity_closes(day - timedelta(days=PNL_HISTORY_DAYS), day, tz)
    series = figures.daily_pnl(opening, closes)
    today = series.pop(day, None)
    history = [float(pnl) for pnl, _ in series.values()]
    if today is None:
        return None, None, len(history)
    return float(today[0]), figures.zscore(float(today[0]), history), len(history)


def check_pnl(start: date, end: date) -> tuple[str, str]:
    pnl, z, days = pnl_zscore(end)
    if pnl is None:
        return "unknown", f"no equity was reported on {end}"
    if z is None:
        return "unknown", (
            f"P&L {pnl:+,.2f}; {days} earlier days with P&L in the last {PNL_HISTORY_DAYS}, "
            f"at least {figures.MIN_HISTORY} that differ are needed"
        )
    status = "pass" if abs(z) <= Z_LIMIT else "fail"
    return status, f"P&L {pnl:+,.2f}, z = {z:+.2f} against {days} days (normal: |z| ≤ {Z_LIMIT:g})"


def check_orders(start: date, end: date) -> tuple[str, str]:
    since, until = _window(start, end)
    counts = Order.objects.filter(created_at__gte=since, created_at__lt=until).aggregate(
        total=Count("pk"),
        filled=Count("pk", filter=Q(status=Order.Status.FILLED)),
        rejected=Count("pk", filter=Q(status=Order.Status.REJECTED)),
        working=Count("pk", filter=Q(status__in=Order.WORKING)),
    )
    text = (
        f"{counts['total']} orders: {counts['filled']} filled, {counts['rejected']} rejected, "
        f"{counts['working']} still working"
    )
    return ("fail" if counts["rejected"] else "pass"), text


def check_errors(start: date, end: date) -> tuple[str, str]:
    since, until = _window(start, end)
    errors = EngineLog.objects.filter(
        level__in=figures.ERROR_LEVELS, ts__gte=since, ts__lt=until
    ).count()
    return ("fail" if errors else "pass"), f"{errors} error log lines from the engines"


def check_risk(start: date, end: date) -> tuple[str, str]:
    since, until = _window(start, end)
    breaches = RiskEvent.objects.filter(kind=RiskEvent.Kind.BREACH, at__gte=since, at__lt=until)
    count = breaches.count()
    return ("fail" if count else "pass"), f"{count} risk limit breaches"


CHECKS: dict[str, Callable[[date, date], tuple[str, str]]] = {
    "positions": check_positions,
    "pnl_zscore": check_pnl,
    "orders": check_orders,
    "errors": check_errors,
    "risk_breaches": check_risk,
}


def checklist(period: str, start: date, manual: dict[str, bool] | None = None) -> list[CheckResult]:
    """The period's checklist, each computed item answered now, each manual one as ``manual``
    says (ticked or not)."""
    end = period_end(period, start)
    manual = manual or {}
    results = []
    for item in ReviewItem.objects.filter(period=period, enabled=True):
        compute = CHECKS.get(item.computed)
        if compute is not None:
            status, detail = compute(start, end)
            results.append(CheckResult(item.key, item.label, True, status, detail))
        else:
            done = bool(manual.get(item.key))
            results.append(CheckResult(item.key, item.label, False, "done" if done else "open", ""))
    return results


# --- Sign-off ------------------------------------------------------------------------------------


def review_sign_off(
    *,
    period: str,
    start: date,
    actor: AbstractBaseUser | None,
    manual: Any,
    note: Any = "",
    now: datetime | None = None,
    ip_address: str | None = None,
) -> Review:
    """Sign off the review of the period starting ``start``: its checks are computed now and kept
    with it. Every manual item must be ticked, and a failing computed check needs a note saying
    what was done about it. ValidationError names the problem; ReviewRefused when the period is
    not over or is signed off already; PermissionDenied without the period's right."""
    if period not in Period.values:
        raise ValidationError({"period": f"must be one of {', '.join(Period.values)}"})
    permission = SIGN_PERMISSION[Period(period)]
    if actor is not None and not actor.has_perm(permission):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} lacks the {permission} permission")
    if not is_period_start(period, start):
        raise ValidationError({"start": f"{start} does not start a {period} period"})
    if not isinstance(manual, dict) or not all(
        isinstance(k, str) and isinstance(v, bool) for k, v in manual.items()
    ):
        raise ValidationError({"manual": "must map each manual item's key to true or false"})
    note = clean_text("note", note, NOTES_MAX).strip()
    now = now or timezone.now()
    tz = figures.desk_tz()
    if now.astimezone(tz).date() <= period_end(period, start):
        raise ReviewRefused(f"the {period} period {period_label(period, start)} is not over yet")
    schedule = ReviewSchedule.objects.filter(period=period).first()
    grace = schedule.grace_days if schedule else 1
    known = set(
        ReviewItem.objects.filter(period=period, enabled=True).values_list("key", flat=True)
    )
    unknown = sorted(set(manual) - known)
    if unknown:
        raise ValidationError(
            {"manual": f"not an item of the {period} checklist: {', '.join(unknown)}"}
        )
    results = checklist(period, start, manual)
    problems = {}
    open_items = [r.label for r in results if r.status == "open"]
    if open_items:
        problems["manual"] = "not ticked: " + "; ".join(open_items)
    failing = [r.label for r in results if r.status == "fail"]
    if failing and not note:
        problems["note"] = "a note is required: what was done about " + "; ".join(failing)
    if problems:
        raise ValidationError(problems)
    label = actor.get_username() if actor is not None else "system"
    try:
        with transaction.atomic():
            review = Review.objects.create(
                period=period,
                period_start=start,
                period_end=period_end(period, start),
                due_at=due_at(period, start, grace, tz),
                results=[asdict(r) for r in results],
                note=note,
                signed_off_by=actor,
                signed_off_by_label=label,
            )
            late = now > review.due_at
            audit_record(
                action="journal.review_sign_off",
                actor=actor,
                target=review,
                reason=note,
                data={
                    "period": period,
                    "start": start.isoformat(),
                    "failing": failing,
                    "late": late,
                },
                ip_address=ip_address,
            )
    except IntegrityError as exc:
        raise ReviewRefused(f"the {period} review of {start} is signed off already") from exc
    return review


# --- Defaults ------------------------------------------------------------------------------------

DEFAULT_ITEMS: dict[str, list[tuple[str, str, str]]] = {
    # (key, label, computed check or "" for a person to tick)
    Period.DAILY: [
        ("positions", "Positions of the expected size and direction", "positions"),
        ("pnl", "P&L within normal variance (z-score against the last 30 days)", "pnl_zscore"),
        ("orders", "Orders filled, no rejects", "orders"),
        ("errors", "No errors in the engines' logs", "errors"),
        ("log", "Trading log of the day written", ""),
    ],
    Period.WEEKLY: [
        ("performance", "Performance against expectations reviewed (weekly report)", ""),
        ("risk", "Risk exposure within limits: no breach this week", "risk_breaches"),
        ("errors", "No errors in the engines' logs this week", "errors"),
    ],
    Period.MONTHLY: [
        ("strategies", "Strategy effectiveness reviewed, engine by engine", ""),
        ("regime", "Market regime reviewed (the trading log's trend and volatility)", ""),
        ("risk", "No risk limit breach this month", "risk_breaches"),
    ],
    Period.QUARTERLY: [
        ("full", "Full review: strategies, capital, limits and results", ""),
        ("runbooks", "Runbooks still right (contacts, backup broker, steps)", ""),
        ("access", "Who holds which role still right", ""),
    ],
}
DEFAULT_GRACE_DAYS = {Period.DAILY: 1, Period.WEEKLY: 2, Period.MONTHLY: 5, Period.QUARTERLY: 10}


def seed_defaults(apps: Any = None, *, starts_on: date | None = None) -> None:
    """The guides' checklists and a schedule per period from ``starts_on`` (default: today), for
    whatever is not there yet. Used by the data migration and by tests on a flushed database."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    item_model = apps.get_model("journal", "ReviewItem")
    schedule_model = apps.get_model("journal", "ReviewSchedule")
    starts_on = starts_on or timezone.now().astimezone(figures.desk_tz()).date()
    for period, items in DEFAULT_ITEMS.items():
        schedule_model.objects.get_or_create(
            period=period,
            defaults={"starts_on": starts_on, "grace_days": DEFAULT_GRACE_DAYS[period]},
        )
        for position, (key, label, computed) in enumerate(items):
            item_model.objects.get_or_create(
                period=period,
                key=key,
                defaults={"label": label, "computed": computed, "position": position},
            )
