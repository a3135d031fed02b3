"""The day's figures the journal reads from the data: trades, P&L, rejects, alerts, errors and
commands of a day in the desk's time zone (settings.OPERATOR_TIME_ZONE), and the daily P&L series
the reviews compare a day against. The arithmetic is pure (``daily_pnl``, ``zscore``)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import TruncDate

from alerts.models import Alert
from controlplane.models import AccountSnapshot, Command, EngineLog, Fill, Order

ERROR_LEVELS = ("error", "critical")


def desk_tz() -> ZoneInfo:
    return ZoneInfo(settings.OPERATOR_TIME_ZONE)


def bounds(first: date, last: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start of ``first``, start of the day after ``last``) in ``tz``."""
    return (
        datetime.combine(first, time.min, tzinfo=tz),
        datetime.combine(last + timedelta(days=1), time.min, tzinfo=tz),
    )


# --- P&L from the equity snapshots ---------------------------------------------------------------


def equity_closes(
    first: date, last: date, tz: ZoneInfo, engine_id: int | None = None
) -> tuple[dict[int, Decimal], dict[int, list[tuple[date, Decimal]]]]:
    """Each engine's equity before ``first`` (its last snapshot earlier) and at the close of each
    day from ``first`` to ``last`` that has a snapshot (its last of that day), oldest first."""
    start, end = bounds(first, last, tz)
    snapshots = AccountSnapshot.objects.all()
    if engine_id is not None:
        snapshots = snapshots.filter(engine_id=engine_id)
    rows = (
        snapshots.filter(ts__gte=start, ts__lt=end)
        .annotate(local_day=TruncDate("ts", tzinfo=tz))
        .order_by("engine_id", "local_day", "-ts")
        .distinct("engine_id", "local_day")
        .values_list("engine_id", "local_day", "equity")
    )
    closes: dict[int, list[tuple[date, Decimal]]] = defaultdict(list)
    for engine, day, equity in rows:
        closes[engine].append((day, equity))
    opening = dict(
        snapshots.filter(ts__lt=start, engine_id__in=list(closes))
        .order_by("engine_id", "-ts")
        .distinct("engine_id")
        .values_list("engine_id", "equity")
    )
    return opening, dict(closes)


def daily_pnl(
    opening: Mapping[int, Decimal], closes: Mapping[int, Sequence[tuple[date, Decimal]]]
) -> dict[date, tuple[Decimal, Decimal]]:
    """The desk's P&L of each day, and the equity it was earned on: for each engine, a day's
    close less the close before it (its opening equity for the first day). An engine's first day
    ever has nothing to compare with and adds nothing."""
    days: dict[date, tuple[Decimal, Decimal]] = {}
    for engine, series in closes.items():
        previous = opening.get(engine)
        for day, equity in series:
            if previous is not None:
                pnl, base = days.get(day, (Decimal(0), Decimal(0)))
                days[day] = (pnl + equity - previous, base + previous)
            previous = equity
    return dict(sorted(days.items()))


MIN_HISTORY = 5


def zscore(value: float, history: Sequence[float]) -> float | None:
    """How many sample standard deviations ``value`` lies from the mean of ``history``; None with
    fewer than MIN_HISTORY values or none that differ (nothing to call normal)."""
    if len(history) < MIN_HISTORY:
        return None
    spread = statistics.stdev(history)
    if spread == 0 or not math.isfinite(spread):
        return None
    return (value - statistics.fmean(history)) / spread


# --- A day's figures -----------------------------------------------------------------------------


def day_figures(day: date, engine_id: int | None = None) -> dict[str, Any]:
    """What the data says of ``day`` for the desk (``engine_id`` None) or one engine: the
    trading log's figures. ``pnl_pct`` is None when no equity was reported that day."""
    tz = desk_tz()
    start, end = bounds(day, day, tz)
    on: dict[str, Any] = {} if engine_id is None else {"engine_id": engine_id}
    opening, closes = equity_closes(day, day, tz, engine_id)
    pnl = daily_pnl(opening, closes).get(day)
    pnl_pct = float(pnl[0] / pnl[1] * 100) if pnl and pnl[1] else None
    return {
        "trades": Fill.objects.filter(ts__gte=start, ts__lt=end, **on).count(),
        "pnl": float(pnl[0]) if pnl else None,
        "pnl_pct": round(pnl_pct, 4) if pnl_pct is not None else None,
        "rejects": Order.objects.filter(
            status=Order.Status.REJECTED, updated_at__gte=start, updated_at__lt=end, **on
        ).count(),
        "alerts": Alert.objects.filter(fired_at__gte=start, fired_at__lt=end, **on).count(),
        "errors": EngineLog.objects.filter(
            Q(level__in=ERROR_LEVELS), ts__gte=start, ts__lt=end, **on
        ).count(),
        "commands": Command.objects.filter(created_at__gte=start, created_at__lt=end, **on).count(),
    }


FIGURE_LABELS = {
    "trades": "Trades",
    "pnl_pct": "P&L %",
    "rejects": "Rejects",
    "alerts": "Alerts",
    "errors": "Errors",
    "commands": "Commands",
}
