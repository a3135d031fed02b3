"""Backtest baselines: the uploaded equity curve, and live figures compared against a baseline.

Each comparison is a relative divergence in % (docs/analytics.md, "Live against baseline"); the
largest of them is what the ``backtest_divergence_pct`` alert metric watches.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from django.core.exceptions import ValidationError
from django.utils.dateparse import parse_date, parse_datetime

from controlplane.models import Engine
from controlplane.trading_math import TRADING_DAYS_PER_YEAR
from dashboard.models import Baseline
from dashboard.reports import analytics

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


@dataclass(frozen=True)
class Comparison:
    baseline: Baseline
    weekdays: int
    live_return_pct: float | None
    expected_return_pct: float | None
    return_diff_pp: float | None
    return_divergence_pct: float | None
    live_trades: int
    expected_trades: float | None
    trade_ratio: float | None
    trade_divergence_pct: float | None
    live_win_rate_pct: float | None
    expected_win_rate_pct: float | None
    win_rate_diff_pp: float | None
    win_rate_divergence_pct: float | None
    live_sharpe: float | None
    expected_sharpe: float | None

    @property
    def divergence_pct(self) -> float | None:
        values = [
            v
            for v in (
                self.return_divergence_pct,
                self.trade_divergence_pct,
                self.win_rate_divergence_pct,
            )
            if v is not None
        ]
        return max(values) if values else None

    @property
    def tolerance_pct(self) -> float:
        return self.baseline.tolerance_pct

    def over(self, value: float | None) -> bool:
        return value is not None and value > self.baseline.tolerance_pct

    @property
    def flagged(self) -> bool:
        return self.over(self.divergence_pct)

    @property
    def flags(self) -> list[str]:
        names = {
            "return": self.return_divergence_pct,
            "trades": self.trade_divergence_pct,
            "win rate": self.win_rate_divergence_pct,
        }
        return [name for name, value in names.items() if self.over(value)]


def _relative(live: float | None, expected: float | None) -> float | None:
    if live is None or expected is None or expected == 0:
        return None
    return abs(live - expected) / abs(expected) * 100


def expected_annual_return_pct(baseline: Baseline) -> float | None:
    if baseline.expected_annual_return_pct is not None:
        return baseline.expected_annual_return_pct
    return curve_annual_return_pct(baseline.equity_curve)


def compare(baseline: Baseline, live: analytics.Analytics, tz: ZoneInfo) -> Comparison:
    """Live figures of [live.start, live.end) against what the baseline expects over it.

    The expectation covers the weekdays from the later of the period's start and the engine's
    first data, so an engine that started mid-period is not held to a whole period.
    """
    start = live.start
    if live.first_data_at is not None:
        start = max(start, live.first_data_at)
    weekdays = analytics.weekdays_between(start, live.end, tz)
    annual = expected_annual_return_pct(baseline)
    expected_return = annual * weekdays / TRADING_DAYS_PER_YEAR if annual is not None else None
    expected_trades = (
        baseline.trades_per_day * weekdays if baseline.trades_per_day is not None else None
    )
    trade_ratio = live.trades / expected_trades if expected_trades else None
    win_diff = (
        live.win_rate_pct - baseline.win_rate_pct
        if live.win_rate_pct is not None and baseline.win_rate_pct is not None
        else None
    )
    return Comparison(
        baseline=baseline,
        weekdays=weekdays,
        live_return_pct=live.return_pct,
        expected_return_pct=expected_return,
        return_diff_pp=(
            live.return_pct - expected_return
            if live.return_pct is not None and expected_return is not None
            else None
        ),
        return_divergence_pct=_relative(live.return_pct, expected_return),
        live_trades=live.trades,
        expected_trades=expected_trades,
        trade_ratio=trade_ratio,
        trade_divergence_pct=abs(trade_ratio - 1) * 100 if trade_ratio is not None else None,
        live_win_rate_pct=live.win_rate_pct,
        expected_win_rate_pct=baseline.win_rate_pct,
        win_rate_diff_pp=win_diff,
        win_rate_divergence_pct=_relative(live.win_rate_pct, baseline.win_rate_pct),
        live_sharpe=live.sharpe,
        expected_sharpe=baseline.sharpe,
    )


def engine_comparison(
    engine: Engine, start: datetime, end: datetime, *, tz: ZoneInfo | None = None
) -> Comparison | None:
    baseline = Baseline.objects.filter(engine=engine).first()
    if baseline is None:
        return None
    tz = tz or ZoneInfo("UTC")
    live = analytics.engine_analytics(engine, start, end, tz=tz, now=end)
    return compare(baseline, live, tz)


def divergence_pct(engine: Engine, now: datetime) -> float | None:
    """The largest relative divergence (%) over the last 30 days; None without a baseline."""
    comparison = engine_comparison(engine, now - DIVERGENCE_WINDOW, now)
    if comparison is None:
        return None
    value = comparison.divergence_pct
    return value if value is not None and math.isfinite(value) else None
