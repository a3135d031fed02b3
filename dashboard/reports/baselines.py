"""Backtest baselines: the uploaded equity curve, what it expects, and the divergence the
``backtest_divergence_pct`` alert metric watches (measured by golive.comparison, the one
comparison of live against a baseline: docs/going-live.md, "Live against the baseline").
"""

from __future__ import annotations

import csv
import io
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_date, parse_datetime

from controlplane.models import AccountSnapshot, Engine, Fill
from controlplane.trading_math import TRADING_DAYS_PER_YEAR
from dashboard.models import Baseline
from dashboard.reports import analytics
from golive import comparison

MAX_CURVE_ROWS = 50_000
MAX_ERRORS_SHOWN = 10
# The window the divergence alert measures over, ending now.
DIVERGENCE_WINDOW = timedelta(days=30)


# --- The equity curve CSV ------------------------------------------------------------------------


def _parse_ts(raw: str) -> datetime | None:
    value = raw.strip()
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            return None
        moment = datetime(day.year, day.month, day.day)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def parse_equity_curve_csv(text: str) -> list[list[str]]:
    """``ts,equity`` rows, oldest first, as [[ISO timestamp, equity], ...].

    Raises ValidationError listing every problem found (the first few), each naming its line
    and column; nothing is returned, so nothing is stored, when there is one.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text))
    errors: list[str] = []
    rows: list[list[str]] = []
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ValidationError(f"line 1: not CSV ({exc}).") from None
    if header is None or not any(cell.strip() for cell in header):
        raise ValidationError("The file is empty: expected a header line 'ts,equity'.")
    names = [cell.strip().lower() for cell in header]
    if names != ["ts", "equity"]:
        raise ValidationError(
            f"line 1: the header must be 'ts,equity' (found {','.join(header)!r})."
        )
    previous: datetime | None = None
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line, e.g. at the end
            if len(row) != 2:
                errors.append(f"line {line}: expected 2 columns (ts,equity), found {len(row)}.")
                continue
            raw_ts, raw_equity = row
            moment = _parse_ts(raw_ts)
            if moment is None:
                errors.append(
                    f"line {line}, column ts: {raw_ts.strip()!r} is not a date or an ISO 8601 "
                    "timestamp (e.g. 2026-11-16 or 2026-11-16T21:00:00Z)."
                )
            try:
                equity = Decimal(raw_equity.strip())
                if not equity.is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                errors.append(
                    f"line {line}, column equity: {raw_equity.strip()!r} is not a number."
                )
                equity = None
            else:
                if equity <= 0:
                    errors.append(
                        f"line {line}, column equity: {raw_equity.strip()} must be above 0."
                    )
            if moment is not None and previous is not None and moment <= previous:
                errors.append(
                    f"line {line}, column ts: {raw_ts.strip()} is not after the line before "
                    "(timestamps must only grow)."
                )
            if moment is not None:
                previous = moment
            if moment is not None and equity is not None:
                rows.append([moment.isoformat(), str(equity)])
            if len(rows) > MAX_CURVE_ROWS:
                errors.append(f"line {line}: more than {MAX_CURVE_ROWS} rows.")
                break
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: not CSV ({exc}).")
    if not errors and len(rows) < 2:
        errors.append("At least 2 rows of data are needed after the header.")
    if errors:
        shown = errors[:MAX_ERRORS_SHOWN]
        if len(errors) > MAX_ERRORS_SHOWN:
            shown.append(f"... and {len(errors) - MAX_ERRORS_SHOWN} more.")
        raise ValidationError(shown)
    return rows


def curve_annual_return_pct(curve: list[list[str]]) -> float | None:
    """The curve's return, scaled linearly to 252 weekdays (as the live side is compared)."""
    if len(curve) < 2:
        return None
    first_ts, first = datetime.fromisoformat(curve[0][0]), Decimal(curve[0][1])
    last_ts, last = datetime.fromisoformat(curve[-1][0]), Decimal(curve[-1][1])
    weekdays = analytics.weekdays_between(first_ts, last_ts, ZoneInfo("UTC"))
    if not weekdays or not first:
        return None
    return float(last / first - 1) * 100 * TRADING_DAYS_PER_YEAR / weekdays


# --- Live against baseline -----------------------------------------------------------------------


def expected_annual_return_pct(baseline: Baseline) -> float | None:
    if baseline.expected_annual_return_pct is not None:
        return baseline.expected_annual_return_pct
    return curve_annual_return_pct(baseline.equity_curve)


def divergence_pct(engine: Engine, now: datetime) -> float | None:
    """The largest relative divergence (%) from the backtest over the last 30 days, as
    golive.comparison measures it: the return's |live - baseline| / |baseline| x 100, the trade
    count's |ratio - 1| x 100, the win rate's |live - baseline| / baseline x 100. None without a
    baseline or a figure to measure. The window starts at the engine's first data when that is
    later, so an engine that began mid-window is not held to the whole of it."""
    if not Baseline.objects.filter(engine=engine).exists():
        return None
    start = now - DIVERGENCE_WINDOW
    firsts = [
        model.objects.filter(engine=engine, ts__gte=start, ts__lt=now)
        .order_by("ts")
        .values_list("ts", flat=True)
        .first()
        for model in (Fill, AccountSnapshot)
    ]
    before = Fill.objects.filter(engine=engine, ts__lt=start).exists()
    before = before or AccountSnapshot.objects.filter(engine=engine, ts__lt=start).exists()
    if not before and any(firsts):
        start = min(first for first in firsts if first is not None)
    result = comparison.compare(engine, start, now)
    if result.baseline_name is None:
        return None
    values = []
    ret = result.figure("return_pct").difference
    if ret is not None:
        values.append(ret)
    ratio = result.figure("trade_count_ratio").difference
    if ratio is not None:
        values.append(abs(ratio - 1) * 100)
    win = result.figure("win_rate_pp")
    if win.difference is not None and win.baseline:
        values.append(abs(win.difference) / abs(win.baseline) * 100)
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else None
