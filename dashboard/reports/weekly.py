"""The weekly report: its figures (fleet, per engine, per tag, live against baseline), its CSV, its
e-mail, and the delivery of that e-mail to each subscribed user exactly once per ISO week.
"""

from __future__ import annotations

import csv
import enum
import io
import smtplib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from email.mime.image import MIMEImage
from zoneinfo import ZoneInfo

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from controlplane.models import Engine
from dashboard.models import Baseline, Profile, ReportDelivery, profile_for
from dashboard.reports import analytics, charts
from dashboard.reports.analytics import Analytics, Period
from golive import divergence
from golive.comparison import Comparison, Request, compare_many
from golive.models import DivergenceDay
from journal import tradinglog

MAX_ATTEMPTS = 6
# A "sending" claim older than this was left by a worker that died mid-send: take it over.
STALE_CLAIM = timedelta(minutes=15)
VIEW_PERMISSION = "controlplane.view_engine"


@dataclass(frozen=True)
class EngineRow:
    engine: Engine
    figures: Analytics
    # Against its backtest over the week (golive.comparison); None without a baseline.
    comparison: Comparison | None
    # The week's rows of its divergence log, oldest first.
    divergence_days: tuple[DivergenceDay, ...] = ()

    @property
    def days_beyond(self) -> list[DivergenceDay]:
        return [day for day in self.divergence_days if divergence.beyond(day)]

    @property
    def flagged(self) -> bool:
        return bool(self.comparison and self.comparison.significant)


@dataclass(frozen=True)
class WeeklyReport:
    period: Period
    fleet: Analytics
    engines: list[EngineRow]
    tags: list[tuple[str, Analytics]]
    # The desk's trading log of the week (journal.tradinglog.week_summary).
    log: tradinglog.WeekSummary | None = None

    @property
    def week(self) -> str:
        return self.period.label

    @property
    def has_trading(self) -> bool:
        return self.fleet.has_trading

    @property
    def compared(self) -> list[EngineRow]:
        return [row for row in self.engines if row.comparison is not None]

    @property
    def flagged(self) -> list[EngineRow]:
        return [row for row in self.engines if row.flagged]

    @property
    def logged(self) -> list[EngineRow]:
        """Engines with divergence log rows this week."""
        return [row for row in self.engines if row.divergence_days]

    @property
    def divergence_threshold_pct(self) -> float:
        return divergence.threshold_pct()


def weekly_report(week: str, tz: ZoneInfo, *, now: datetime | None = None) -> WeeklyReport:
    """The report of an ISO week in ``tz`` (raises analytics.BadWeek for a malformed week)."""
    period = analytics.iso_week(week, tz)
    engines = list(Engine.objects.all())
    data = analytics.collect([e.pk for e in engines], period.start, period.end, now=now)
    baselines = set(Baseline.objects.filter(engine__in=engines).values_list("engine_id", flat=True))
    shown = []
    for engine in engines:
        item = data[engine.pk]
        expected = engine.pk in baselines and engine.is_active
        if not (item.points or item.has_trading or expected):
            continue  # nothing to say about an engine that neither ran nor is expected to
        shown.append(engine)
    # Every comparison of the week at once (golive.comparison), and the week's logged days.
    compared = [e for e in shown if e.pk in baselines]
    comparisons = dict(
        zip(
            [e.pk for e in compared],
            compare_many([Request(e, period.start, period.end) for e in compared]),
            strict=True,
        )
    )
    logged = divergence.days_in([e.pk for e in shown], period.start.date(), period.end.date())
    rows = [
        EngineRow(
            engine,
            analytics.summarise([data[engine.pk]], period),
            comparisons.get(engine.pk),
            tuple(logged.get(engine.pk, ())),
        )
        for engine in shown
    ]
    tags = sorted({tag for row in rows for tag in row.engine.strategy_tags})
    by_tag = [
        (
            tag,
            analytics.summarise(
                [data[r.engine.pk] for r in rows if tag in r.engine.strategy_tags], period
            ),
        )
        for tag in tags
    ]
    fleet = analytics.with_unassigned_alerts(analytics.summarise(list(data.values()), period))
    log = tradinglog.week_summary(period.days[0], period.days[-1])
    return WeeklyReport(period=period, fleet=fleet, engines=rows, tags=by_tag, log=log)


# --- CSV -----------------------------------------------------------------------------------------

CSV_COLUMNS = [
    ("return_pct", "return_pct"),
    ("pnl", "pnl"),
    ("start_equity", "start_equity"),
    ("end_equity", "end_equity"),
    ("sharpe", "sharpe"),
    ("sortino", "sortino"),
    ("max_drawdown_pct", "max_drawdown_pct"),
    ("trades", "trades"),
    ("round_trips", "round_trips"),
    ("win_rate_pct", "win_rate_pct"),
    ("profit_factor", "profit_factor"),
    ("avg_slippage_bps", "avg_slippage_bps"),
    ("worst_slippage_bps", "worst_slippage_bps"),
    ("rejection_rate_pct", "rejection_rate_pct"),
    ("fill_rate_pct", "fill_rate_pct"),
    ("uptime_pct", "uptime_pct"),
    ("alerts_fired", "alerts_fired"),
    ("commands_issued", "commands_issued"),
]
# Per engine, against its backtest (golive.comparison): each figure's baseline and difference.
COMPARISON_COLUMNS = [
    "baseline_return_pct",
    "return_difference_pct",
    "trade_count_ratio",
    "win_rate_diff_pp",
    "slippage_beyond_model_bps",
    "sharpe_diff",
    "max_drawdown_diff_pct",
    "significant_divergence",
    "divergence_days_beyond",
]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


def report_csv(report: WeeklyReport) -> str:
    """One row for the fleet, one per tag, one per engine; blank where a figure is undefined."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["week", "scope", "name", *[c for c, _ in CSV_COLUMNS], *COMPARISON_COLUMNS])
    empty = [""] * len(COMPARISON_COLUMNS)

    def row(scope: str, name: str, figures: Analytics, item: EngineRow | None) -> None:
        values = [_cell(getattr(figures, attr)) for _, attr in CSV_COLUMNS]
        extra = empty
        if item is not None and item.comparison is not None:
            c = item.comparison
            extra = [
                _cell(c.figure("return_pct").baseline),
                _cell(c.figure("return_pct").difference),
                _cell(c.figure("trade_count_ratio").difference),
                _cell(c.figure("win_rate_pp").difference),
                _cell(c.figure("slippage_bps").difference),
                _cell(c.figure("sharpe").difference),
                _cell(c.figure("max_drawdown_pct").difference),
                _cell(c.significant),
                _cell(len(item.days_beyond)),
            ]
        elif item is not None and item.divergence_days:
            extra = [*empty[:-1], _cell(len(item.days_beyond))]
        writer.writerow([report.week, scope, name, *values, *extra])

    row("fleet", "fleet", report.fleet, None)
    for tag, figures in report.tags:
        row("tag", tag, figures, None)
    for item in report.engines:
        row("engine", item.engine.name, item.figures, item)
    return out.getvalue()


# --- E-mail --------------------------------------------------------------------------------------

EQUITY_CID = "equity-drawdown"
PNL_CID = "daily-pnl"


def report_email(report: WeeklyReport, user: object) -> EmailMultiAlternatives:
    """A multipart/related message: text and HTML alternatives, then the HTML's inline PNGs."""
    context = {
        "report": report,
        "user": user,
        "site_name": settings.SITE_NAME,
        "report_path": f"/reports/{report.week}/",
        "equity_cid": EQUITY_CID,
        "pnl_cid": PNL_CID,
    }
    subject = " ".join(render_to_string("reports/weekly_email_subject.txt", context).split())
    text = render_to_string("reports/weekly_email.txt", context)
    html = render_to_string("reports/weekly_email.html", context)
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[user.email],  # type: ignore[attr-defined]
    )
    message.attach_alternative(html, "text/html")
    if report.fleet.curve:
        pngs = charts.render_pngs(
            [
                charts.equity_drawdown_figure(report.fleet, theme="email"),
                charts.daily_pnl_figure(report.fleet, theme="email"),
            ]
        )
        message.mixed_subtype = "related"
        for cid, png in zip((EQUITY_CID, PNL_CID), pngs, strict=True):
            image = MIMEImage(png, "png")
            image.add_header("Content-ID", f"<{cid}>")
            image.add_header("Content-Disposition", "inline", filename=f"{cid}.png")
            message.attach(image)
    return message


# --- Delivery ------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    SENT = "sent"
    ALREADY_SENT = "already_sent"
    BUSY = "busy"  # another worker holds the claim
    RETRY = "retry"
    GAVE_UP = "gave_up"
    SKIPPED = "skipped"  # not subscribed any more, no address, no permission


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    retry_in_s: int = 0


def retry_delay_s(attempts: int) -> int:
    """1, 2, 4, 8 ... minutes after each failed attempt, at most an hour."""
    return min(3600, 60 * 2 ** max(0, attempts - 1))


def subscribers() -> list[tuple[int, str]]:
    """(user id, timezone) of each active user who wants the report, has an address and may see
    the engines."""
    User = get_user_model()
    users = (
        User.objects.filter(is_active=True, report_profile__weekly_report=True)
        .exclude(email="")
        .filter(
            Q(is_superuser=True)
            | Q(user_permissions__codename="view_engine")
            | Q(groups__permissions__codename="view_engine")
        )
        .distinct()
        .values_list("pk", "report_profile__timezone")
    )
    return list(users)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, smtplib.SMTPException | OSError)


def weekly_report_deliver(*, user_id: int, week: str, now: datetime | None = None) -> Result:
    """Send ``week``'s report to the user once: the delivery row is claimed by a conditional
    update, so the task run twice (or by two workers) sends one e-mail."""
    now = now or timezone.now()
    User = get_user_model()
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return Result(Outcome.SKIPPED)
    profile: Profile = profile_for(user)
    if not (profile.weekly_report and user.email and user.has_perm(VIEW_PERMISSION)):
        return Result(Outcome.SKIPPED)
    tz = ZoneInfo(profile.timezone)
    analytics.iso_week(week, tz)  # a malformed week is a bug of the caller: fail before the row

    row, _ = ReportDelivery.objects.get_or_create(user=user, week=week)
    if row.status == ReportDelivery.Status.SENT:
        return Result(Outcome.ALREADY_SENT)
    claimable = Q(status__in=[ReportDelivery.Status.PENDING, ReportDelivery.Status.FAILED]) | Q(
        status=ReportDelivery.Status.SENDING, claimed_at__lt=now - STALE_CLAIM
    )
    claimed = (
        ReportDelivery.objects.filter(pk=row.pk, attempts__lt=MAX_ATTEMPTS)
        .filter(claimable)
        .update(status=ReportDelivery.Status.SENDING, attempts=F("attempts") + 1, claimed_at=now)
    )
    if claimed != 1:
        row.refresh_from_db()
        if row.status == ReportDelivery.Status.SENT:
            return Result(Outcome.ALREADY_SENT)
        if row.attempts >= MAX_ATTEMPTS and row.status == ReportDelivery.Status.FAILED:
            return Result(Outcome.GAVE_UP)
        return Result(Outcome.BUSY)
    row.refresh_from_db()
    try:
        report_email(weekly_report(week, tz, now=now), user).send(fail_silently=False)
    except Exception as exc:
        ReportDelivery.objects.filter(pk=row.pk, status=ReportDelivery.Status.SENDING).update(
            status=ReportDelivery.Status.FAILED,
            error=f"attempt {row.attempts}: {type(exc).__name__}: {exc}"[:2000],
        )
        if not _transient(exc):
            raise
        if row.attempts >= MAX_ATTEMPTS:
            return Result(Outcome.GAVE_UP)
        return Result(Outcome.RETRY, retry_delay_s(row.attempts))
    ReportDelivery.objects.filter(pk=row.pk, status=ReportDelivery.Status.SENDING).update(
        status=ReportDelivery.Status.SENT, sent_at=timezone.now()
    )
    return Result(Outcome.SENT)
