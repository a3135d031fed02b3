"""Performance analytics over the stored data, for one engine, a strategy tag or the fleet, for any
period [start, end). Every figure is defined in docs/analytics.md; the names here follow it.

The data of all the engines asked for is read in a fixed number of queries (``collect``), then
summarised per engine, per tag and for the fleet without going back to the database
(``summarise``), so a report over the whole fleet costs the same few queries as one engine.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from alerts.models import Alert
from controlplane.models import (
    AccountSnapshot,
    Command,
    Engine,
    Fill,
    Instrument,
    MetricSample,
    Order,
)
from controlplane.trading_math import (
    DEFAULT_ACCOUNT_CURRENCY,
    ZERO,
    convert,
    in_account_currency,
    round_trips,
    sharpe_ratio,
    sortino_ratio,
)
from dashboard.overview import slippage_bps

FINAL_ORDER_STATUSES = ("filled", "cancelled", "rejected", "expired")
_WEEK_RE = re.compile(r"^(\d{4})-W(\d{2})$")


# --- Periods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    tz: ZoneInfo
    label: str = ""

    @property
    def days(self) -> list[date]:
        """The calendar dates (in ``tz``) the period touches."""
        first = self.start.astimezone(self.tz).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.tz).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


# Engines trade in the present: these bound a week that can be asked for, well inside what dates
# and time zones can express.
FIRST_REPORT_YEAR = 1970
LAST_REPORT_YEAR = 9998


class BadWeek(ValueError):
    """A week string that is not an ISO week such as 2026-W47."""


def iso_week(week: str, tz: ZoneInfo) -> Period:
    """The ISO week "YYYY-Www": Monday 00:00 to the next Monday 00:00 in ``tz``."""
    match = _WEEK_RE.match(week)
    if not match:
        raise BadWeek(f"{week!r} is not an ISO week: write it as YYYY-Www, e.g. 2026-W47.")
    year, number = int(match[1]), int(match[2])
    if not FIRST_REPORT_YEAR <= year <= LAST_REPORT_YEAR:
        # The page links the weeks either side and reads the days around the period in any
        # time zone: at the calendar's ends those dates do not exist.
        raise BadWeek(
            f"{week!r} is out of range: reports cover {FIRST_REPORT_YEAR} to {LAST_REPORT_YEAR}."
        )
    try:
        monday = date.fromisocalendar(year, number, 1)
    except ValueError:
        raise BadWeek(f"{year} has no ISO week {number}.") from None
    start = datetime(monday.year, monday.month, monday.day, tzinfo=tz)
    end_day = monday + timedelta(days=7)
    end = datetime(end_day.year, end_day.month, end_day.day, tzinfo=tz)
    return Period(start=start, end=end, tz=tz, label=f"{year}-W{number:02d}")


def week_label(day: date) -> str:
    year, number, _ = day.isocalendar()
    return f"{year}-W{number:02d}"


def previous_iso_week(now: datetime, tz: ZoneInfo) -> str:
    """The last complete ISO week before ``now`` in ``tz``."""
    return week_label(now.astimezone(tz).date() - timedelta(days=7))


def weekdays_between(start: datetime, end: datetime, tz: ZoneInfo) -> int:
    """Dates Monday to Friday (in ``tz``) that [start, end) touches, partly or whole."""
    if end <= start:
        return 0
    period = Period(start=start, end=end, tz=tz)
    return sum(1 for d in period.days if d.weekday() < 5)


# --- What is read from the database --------------------------------------------------------------


@dataclass
class EngineData:
    """One engine's raw ingredients for a period."""

    engine_id: int
    start_equity: Decimal | None = None  # last equity before the period, if any
    points: list[tuple[datetime, Decimal]] = field(default_factory=list)  # in the period
    # Round trips closed in the period, in the account currency; None: unknown, a currency
    # (the instrument's or a fee's) without an FX rate, named in ``unconverted``.
    trips: list[Decimal | None] = field(default_factory=list)
    unconverted: set[str] = field(default_factory=set)
    fills: int = 0
    slippages: list[float] = field(default_factory=list)
    orders: int = 0
    orders_rejected: int = 0
    orders_final: int = 0
    orders_filled: int = 0
    minutes_up: int = 0
    minutes_total: int = 0
    alerts: int = 0
    commands: int = 0
    first_data_at: datetime | None = None

    @property
    def has_trading(self) -> bool:
        return self.fills > 0 or self.orders > 0


def _uptime_minutes(engine_ids: list[int], start: datetime, end: datetime) -> dict[int, int]:
    snapshots = AccountSnapshot._meta.db_table
    metrics = MetricSample._meta.db_table
    sql = f"""
        SELECT engine_id, count(DISTINCT date_trunc('minute', ts)) FROM (
            SELECT engine_id, ts FROM {snapshots}
             WHERE engine_id = ANY(%(ids)s) AND ts >= %(start)s AND ts < %(end)s
            UNION ALL
            SELECT engine_id, ts FROM {metrics}
             WHERE engine_id = ANY(%(ids)s) AND ts >= %(start)s AND ts < %(end)s
        ) AS seen GROUP BY engine_id
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"ids": engine_ids, "start": start, "end": end})
        return dict(cursor.fetchall())


# An instrument's trip open at a moment: the (ts, seq) of the fill that last closed a trip before
# it (None: none ever did, the trip opened with the first fill) and the position that fill left
# (beyond zero when it crossed zero; 0 when it closed exactly).
OpenTrip = tuple[datetime | None, int | None, Decimal]


def _open_trips(ids: list[int], start: datetime) -> dict[tuple[int, int], OpenTrip]:
    """Per (engine, instrument) with a position open at ``start``: where its trip began.

    The position at the start is the sum of every earlier fill, in the database from
    fill_trip_idx alone. From it, the fills before the start are walked backwards (newest
    first) only until the one after which the position was at or across zero, as
    trading_math.round_trips closes a trip (a buy: 0 <= after < quantity): the trip open at
    the start began there, and no earlier fill counts in the period's round trips.
    """
    fills = Fill._meta.db_table
    signed = "CASE WHEN f.side = 'buy' THEN f.quantity ELSE -f.quantity END"
    sql = f"""
        SELECT p.engine_id, p.instrument_id, m.ts, m.seq, m.after
        FROM (
            SELECT f.engine_id, f.instrument_id, sum({signed}) AS position
            FROM {fills} f WHERE f.engine_id = ANY(%(ids)s) AND f.ts < %(start)s
            GROUP BY f.engine_id, f.instrument_id
        ) AS p
        LEFT JOIN LATERAL (
            SELECT r.ts, r.seq, r.after FROM (
                SELECT f.ts, f.seq, f.side, f.quantity,
                    p.position - sum({signed}) OVER later + {signed} AS after
                FROM {fills} f
                WHERE f.engine_id = p.engine_id AND f.instrument_id = p.instrument_id
                    AND f.ts < %(start)s
                WINDOW later AS (ORDER BY f.ts DESC, f.seq DESC ROWS UNBOUNDED PRECEDING)
            ) AS r
            WHERE CASE WHEN r.side = 'buy' THEN r.after >= 0 AND r.after < r.quantity
                ELSE r.after <= 0 AND r.after > -r.quantity END
            LIMIT 1
        ) AS m ON true
        WHERE p.position <> 0
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, {"ids": ids, "start": start})
        return {
            (engine_id, instrument_id): (ts, seq, after if after is not None else ZERO)
            for engine_id, instrument_id, ts, seq, after in cursor.fetchall()
        }


def _trip_fills(
    ids: list[int], start: datetime, end: datetime, opened: dict[tuple[int, int], OpenTrip]
) -> list[tuple]:
    """The fills the period's round trips are made of, per (engine, instrument) in (ts, seq)
    order: those of [start, end), and before them those of each trip open at the start, from
    the fill that closed the trip before it (included, for the part of it beyond zero)."""
    fills, instruments = Fill._meta.db_table, Instrument._meta.db_table
    columns = (
        "f.engine_id, f.instrument_id, f.side, f.quantity, f.price, f.fee, f.expected_price, "
        "f.ts, i.multiplier, f.fee_currency, i.currency, f.seq"
    )
    keys = list(opened)
    sql = f"""
        SELECT {columns} FROM {fills} f JOIN {instruments} i ON i.id = f.instrument_id
        WHERE f.engine_id = ANY(%(ids)s) AND f.ts >= %(start)s AND f.ts < %(end)s
        UNION ALL
        SELECT {columns}
        FROM unnest(%(engines)s::bigint[], %(instruments)s::bigint[], %(ts)s::timestamptz[],
            %(seqs)s::bigint[]) AS o(engine_id, instrument_id, ts, seq)
        JOIN {fills} f ON f.engine_id = o.engine_id AND f.instrument_id = o.instrument_id
            AND f.ts < %(start)s
            AND (f.ts, f.seq) >= (COALESCE(o.ts, '-infinity'), COALESCE(o.seq, 0))
        JOIN {instruments} i ON i.id = f.instrument_id
        ORDER BY 1, 2, 8, 12
    """
    params = {
        "ids": ids,
        "start": start,
        "end": end,
        "engines": [k[0] for k in keys],
        "instruments": [k[1] for k in keys],
        "ts": [opened[k][0] for k in keys],
        "seqs": [opened[k][1] for k in keys],
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def collect(
    engine_ids: Sequence[int], start: datetime, end: datetime, *, now: datetime | None = None
) -> dict[int, EngineData]:
    """Read everything the analytics of these engines need, in a fixed number of queries."""
    now = now or timezone.now()
    ids = list(engine_ids)
    data = {engine_id: EngineData(engine_id) for engine_id in ids}
    if not ids:
        return data

    snapshots = AccountSnapshot._meta.db_table
    # The last equity before the period: one backward probe of snapshot_engine_ts_idx per
    # engine, not every snapshot since the engine began.
    opening_sql = f"""
        SELECT e.id, (SELECT a.equity FROM {snapshots} a
            WHERE a.engine_id = e.id AND a.ts < %(start)s ORDER BY a.ts DESC, a.seq DESC LIMIT 1)
        FROM unnest(%(ids)s::bigint[]) AS e(id)
    """
    with connection.cursor() as cursor:
        cursor.execute(opening_sql, {"ids": ids, "start": start})
        for engine_id, equity in cursor.fetchall():
            data[engine_id].start_equity = equity
    for engine_id, ts, equity in (
        AccountSnapshot.objects.filter(engine_id__in=ids, ts__gte=start, ts__lt=end)
        .order_by("ts", "engine_id", "seq")
        .values_list("engine_id", "ts", "equity")
    ):
        data[engine_id].points.append((ts, equity))

    # Each engine's account currency and latest FX rates: a fee is counted in its instrument's
    # currency, a round trip in the account's (docs/analytics.md, "Currencies").
    accounts = {
        pk: (currency or DEFAULT_ACCOUNT_CURRENCY, rates or {})
        for pk, currency, rates in Engine.objects.filter(pk__in=ids).values_list(
            "pk", "account_currency", "fx_rates"
        )
    }
    # A round trip closing in the period may have opened long before it: the period's fills,
    # and before them the fills of the trip each instrument has open at the start (_open_trips).
    by_instrument: dict[tuple[int, int], list[tuple]] = defaultdict(list)
    currencies: dict[tuple[int, int], str] = {}
    unknown_fees: dict[tuple[int, int], set[str]] = defaultdict(set)
    opened = _open_trips(ids, start)
    for row in _trip_fills(ids, start, end, opened):
        engine_id, instrument_id, side, qty, price, fee, expected, ts, multiplier, *money = row
        fee_currency, currency, seq = money
        key = (engine_id, instrument_id)
        currencies[key] = currency
        if fee:
            account, rates = accounts[engine_id]
            converted = convert(fee, fee_currency or account, currency, account, rates)
            if converted is None:
                unknown_fees[key].add(fee_currency or account)
            fee = converted
        fee = fee or ZERO
        mark = opened.get(key)
        if mark is not None and (ts, seq) == (mark[0], mark[1]):
            # The fill that last closed a trip before the period: only its part beyond zero,
            # if any, opens the trip still open, with its share of the fee, as round_trips
            # splits a fill that crosses zero.
            beyond = abs(mark[2])
            if not beyond:
                continue
            share = (qty - beyond) / qty
            qty, fee = beyond, fee * (1 - share)
        by_instrument[key].append((side, qty, price, fee, multiplier, ts))
        if ts >= start:
            item = data[engine_id]
            item.fills += 1
            slip = slippage_bps(side, price, expected)
            if slip is not None:
                item.slippages.append(slip)
    for key, fills in by_instrument.items():
        engine_id, currency = key[0], currencies[key]
        account, rates = accounts[engine_id]
        item = data[engine_id]
        for trip in round_trips(fills, start, end):
            converted = (
                None if unknown_fees[key] else in_account_currency(trip, currency, account, rates)
            )
            if converted is None:
                item.unconverted |= unknown_fees[key] or {currency}
            item.trips.append(converted)

    for row in (
        Order.objects.filter(engine_id__in=ids, created_at__gte=start, created_at__lt=end)
        .values("engine_id")
        .annotate(
            n=Count("pk"),
            rejected=Count("pk", filter=Q(status="rejected")),
            final=Count("pk", filter=Q(status__in=FINAL_ORDER_STATUSES)),
            filled=Count("pk", filter=Q(status="filled")),
        )
    ):
        item = data[row["engine_id"]]
        item.orders, item.orders_rejected = row["n"], row["rejected"]
        item.orders_final, item.orders_filled = row["final"], row["filled"]

    # Each engine's first data: two forward probes of an index per engine.
    first_sql = f"""
        SELECT e.id, LEAST(
            (SELECT min(ts) FROM {Fill._meta.db_table} WHERE engine_id = e.id),
            (SELECT min(ts) FROM {snapshots} WHERE engine_id = e.id))
        FROM unnest(%(ids)s::bigint[]) AS e(id)
    """
    with connection.cursor() as cursor:
        cursor.execute(first_sql, {"ids": ids})
        firsts = {engine_id: first for engine_id, first in cursor.fetchall() if first}
    up = _uptime_minutes(ids, start, end)
    horizon = min(end, now)
    for engine_id, first in firsts.items():
        item = data[engine_id]
        item.first_data_at = first
        low = max(start, first.replace(second=0, microsecond=0))
        item.minutes_total = max(0, math.ceil((horizon - low).total_seconds() / 60))
        item.minutes_up = up.get(engine_id, 0)

    for row in (
        Alert.objects.filter(engine_id__in=ids, fired_at__gte=start, fired_at__lt=end)
        .values("engine_id")
        .annotate(n=Count("pk"))
    ):
        data[row["engine_id"]].alerts = row["n"]
    for row in (
        Command.objects.filter(engine_id__in=ids, created_at__gte=start, created_at__lt=end)
        .values("engine_id")
        .annotate(n=Count("pk"))
    ):
        data[row["engine_id"]].commands = row["n"]
    return data


# --- Figures -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Day:
    day: date
    equity: Decimal  # end of day
    pnl: Decimal
    return_pct: float | None


@dataclass(frozen=True)
class Analytics:
    start: datetime
    end: datetime
    engines: int
    start_equity: Decimal | None
    end_equity: Decimal | None
    pnl: Decimal | None
    return_pct: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown_pct: float | None
    round_trips: int
    wins: int
    losses: int
    win_rate_pct: float | None
    profit_factor: float | None
    # None when a round trip's P&L is unknown: in a currency without an FX rate, named here.
    round_trip_pnl: Decimal | None
    unconverted_currencies: list[str]
    trades: int
    avg_slippage_bps: float | None
    worst_slippage_bps: float | None
    orders: int
    rejection_rate_pct: float | None
    fill_rate_pct: float | None
    uptime_pct: float | None
    alerts_fired: int
    commands_issued: int
    first_data_at: datetime | None
    days: list[Day]
    # (ts, combined equity, drawdown % from the running peak, <= 0)
    curve: list[tuple[datetime, Decimal, float]]

    @property
    def has_trading(self) -> bool:
        return self.trades > 0 or self.orders > 0


def _pct(part: float, whole: float) -> float | None:
    return 100.0 * part / whole if whole else None


def _equity(items: Sequence[EngineData], period: Period) -> tuple[Decimal | None, list, list[Day]]:
    """The scope's combined equity: its value at the start, the curve, and the days."""
    current: dict[int, Decimal] = {}
    for item in items:
        first = item.start_equity
        if first is None and item.points:
            first = item.points[0][1]
        if first is not None:
            current[item.engine_id] = first
    if not current:
        return None, [], []
    total = sum(current.values(), ZERO)
    opening = total
    merged = sorted(
        ((ts, item.engine_id, equity) for item in items for ts, equity in item.points),
        key=lambda p: p[0],
    )
    curve: list[tuple[datetime, Decimal, float]] = []
    end_of_day: dict[date, Decimal] = {}
    peak = opening
    index = 0
    while index < len(merged):
        ts = merged[index][0]
        # Engines reporting at the same instant move the total together.
        while index < len(merged) and merged[index][0] == ts:
            _, engine_id, equity = merged[index]
            total += equity - current[engine_id]
            current[engine_id] = equity
            index += 1
        peak = max(peak, total)
        drawdown = -float((peak - total) / peak * 100) if peak > 0 else 0.0
        curve.append((ts, total, drawdown))
        end_of_day[ts.astimezone(period.tz).date()] = total
    days = []
    previous = opening
    for day in sorted(end_of_day):
        value = end_of_day[day]
        days.append(
            Day(day, value, value - previous, float(value / previous - 1) if previous else None)
        )
        previous = value
    return opening, curve, days


def summarise(items: Sequence[EngineData], period: Period) -> Analytics:
    opening, curve, days = _equity(items, period)
    closing = curve[-1][1] if curve else opening
    pnl = closing - opening if opening is not None and closing is not None else None
    returns = [d.return_pct for d in days if d.return_pct is not None]
    all_trips = [t for item in items for t in item.trips]
    # Trips of unknown P&L count as trips, but neither as wins nor losses, and no sum holds them.
    trips = [t for t in all_trips if t is not None]
    unconverted = sorted({c for item in items for c in item.unconverted})
    wins = [t for t in trips if t > 0]
    losses = [t for t in trips if t < 0]
    gross_loss = -sum(losses, ZERO)
    slippages = [s for item in items for s in item.slippages]
    orders = sum(i.orders for i in items)
    final = sum(i.orders_final for i in items)
    minutes_total = sum(i.minutes_total for i in items)
    firsts = [i.first_data_at for i in items if i.first_data_at is not None]
    return Analytics(
        start=period.start,
        end=period.end,
        engines=len(items),
        start_equity=opening,
        end_equity=closing,
        pnl=pnl,
        return_pct=float(pnl / opening * 100) if pnl is not None and opening else None,
        sharpe=sharpe_ratio(returns),
        sortino=sortino_ratio(returns),
        max_drawdown_pct=-min((p[2] for p in curve), default=0.0) if curve else None,
        round_trips=len(all_trips),
        wins=len(wins),
        losses=len(losses),
        win_rate_pct=_pct(len(wins), len(trips)),
        profit_factor=(
            float(sum(wins, ZERO) / gross_loss) if gross_loss and not unconverted else None
        ),
        round_trip_pnl=None if unconverted else sum(trips, ZERO),
        unconverted_currencies=unconverted,
        trades=sum(i.fills for i in items),
        avg_slippage_bps=statistics.fmean(slippages) if slippages else None,
        worst_slippage_bps=max(slippages) if slippages else None,
        orders=orders,
        rejection_rate_pct=_pct(sum(i.orders_rejected for i in items), orders),
        fill_rate_pct=_pct(sum(i.orders_filled for i in items), final),
        uptime_pct=_pct(sum(i.minutes_up for i in items), minutes_total),
        alerts_fired=sum(i.alerts for i in items),
        commands_issued=sum(i.commands for i in items),
        first_data_at=min(firsts) if firsts else None,
        days=days,
        curve=curve,
    )


# --- Scopes --------------------------------------------------------------------------------------


def _period(start: datetime, end: datetime, tz: ZoneInfo | None) -> Period:
    if end <= start:
        raise ValueError("the period must end after it starts")
    return Period(start=start, end=end, tz=tz or ZoneInfo("UTC"))


def engines_analytics(
    engines: Sequence[Engine],
    start: datetime,
    end: datetime,
    *,
    tz: ZoneInfo | None = None,
    now: datetime | None = None,
) -> Analytics:
    period = _period(start, end, tz)
    data = collect([e.pk for e in engines], period.start, period.end, now=now)
    return summarise(list(data.values()), period)


def engine_analytics(engine: Engine, start: datetime, end: datetime, **kw: object) -> Analytics:
    return engines_analytics([engine], start, end, **kw)  # type: ignore[arg-type]


def tag_analytics(tag: str, start: datetime, end: datetime, **kw: object) -> Analytics:
    engines = list(Engine.objects.filter(strategy_tags__contains=[tag]))
    return engines_analytics(engines, start, end, **kw)  # type: ignore[arg-type]


def unassigned_alerts(start: datetime, end: datetime) -> int:
    """Alerts fired in the period that are not tied to an engine: they count for the fleet."""
    return Alert.objects.filter(engine__isnull=True, fired_at__gte=start, fired_at__lt=end).count()


def with_unassigned_alerts(fleet: Analytics) -> Analytics:
    extra = unassigned_alerts(fleet.start, fleet.end)
    return replace(fleet, alerts_fired=fleet.alerts_fired + extra) if extra else fleet


def fleet_analytics(start: datetime, end: datetime, **kw: object) -> Analytics:
    """Every engine, active or not (a retired engine may have traded in the period)."""
    result = engines_analytics(list(Engine.objects.all()), start, end, **kw)  # type: ignore[arg-type]
    return with_unassigned_alerts(result)
