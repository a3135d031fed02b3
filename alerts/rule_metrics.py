"""The metrics alert rules can watch, each measured for one engine (docs/alerts.md).

Each function reads what it needs for one engine and returns a number, or None when it cannot be
known yet (no equity reported, too few orders): a rule on an unknown value neither fires nor
resolves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Avg, Count, F, Q, QuerySet

from controlplane import partitions
from controlplane.models import Engine, EngineLog, Fill, MetricSample, Order, Position

WINDOW = timedelta(minutes=15)
ERROR_WINDOW = timedelta(minutes=5)
MIN_ORDERS = 10


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    description: str
    measure: Callable[[Engine, datetime], float | None]
    # Measured from time passing, not only from new data: the beat sweep evaluates these.
    time_based: bool = False
    # What the alert's summary adds after the value: the figures behind it (which id was reused,
    # the positions of an orphaned engine), so the notice names them.
    detail: Callable[[Engine, datetime], str | None] | None = None


def _latest(engine: Engine, name: str) -> float | None:
    return (
        MetricSample.objects.filter(engine=engine, name=name)
        .order_by("-ts")
        .values_list("value", flat=True)
        .first()
    )


def daily_pnl_pct(engine: Engine, now: datetime) -> float | None:
    if not engine.session_start_equity:
        return None
    return float(engine.day_pnl / engine.session_start_equity * 100)


def drawdown_pct(engine: Engine, now: datetime) -> float | None:
    return float(engine.drawdown_pct) if engine.high_water_mark is not None else None


def error_count(engine: Engine, now: datetime) -> float | None:
    return float(
        EngineLog.objects.filter(
            engine=engine, level__in=["error", "critical"], ts__gte=now - ERROR_WINDOW
        ).count()
    )


def critical_count(engine: Engine, now: datetime) -> float | None:
    # An engine writes a critical line for what a person must see at once (a bridge finding its
    # bot trading again while killed): one is enough to page.
    return float(
        EngineLog.objects.filter(
            engine=engine, level="critical", ts__gte=now - ERROR_WINDOW
        ).count()
    )


_REFUSED_SQL = f"""
    SELECT count(*) FROM {partitions.PARENT}
    WHERE engine_id = %s AND refused IS NOT NULL AND received_at >= %s"""


def refused_events(engine: Engine, now: datetime) -> float | None:
    # The engine row counts every refusal: one that never had any costs no query.
    if not engine.refused_events:
        return 0.0
    with connection.cursor() as cursor:
        cursor.execute(_REFUSED_SQL, [engine.pk, now - WINDOW])
        return float(cursor.fetchone()[0])


def rejection_rate_pct(engine: Engine, now: datetime) -> float | None:
    counts = Order.objects.filter(engine=engine, created_at__gte=now - WINDOW).aggregate(
        n=Count("pk"), rejected=Count("pk", filter=Q(status="rejected"))
    )
    if counts["n"] < MIN_ORDERS:
        return None
    return 100.0 * counts["rejected"] / counts["n"]


def slippage_bps(engine: Engine, now: datetime) -> float | None:
    """Mean slippage of the window's fills against their expected price; positive is worse."""
    fills = Fill.objects.filter(engine=engine, ts__gte=now - WINDOW, expected_price__gt=0)
    buys = fills.filter(side="buy").aggregate(
        v=Avg((F("price") - F("expected_price")) / F("expected_price")), n=Count("pk")
    )
    sells = fills.filter(side="sell").aggregate(
        v=Avg((F("expected_price") - F("price")) / F("expected_price")), n=Count("pk")
    )
    n = (buys["n"] or 0) + (sells["n"] or 0)
    if n == 0:
        return None
    total = float(buys["v"] or 0) * (buys["n"] or 0) + float(sells["v"] or 0) * (sells["n"] or 0)
    return total / n * 10_000


def fill_rate_pct(engine: Engine, now: datetime) -> float | None:
    counts = Order.objects.filter(
        engine=engine,
        updated_at__gte=now - WINDOW,
        status__in=["filled", "cancelled", "rejected", "expired"],
    ).aggregate(n=Count("pk"), filled=Count("pk", filter=Q(status="filled")))
    if counts["n"] < MIN_ORDERS:
        return None
    return 100.0 * counts["filled"] / counts["n"]


def heartbeat_age_s(engine: Engine, now: datetime) -> float | None:
    if engine.last_seen_at is None:
        return None
    if engine.stopped:
        # Shut down on purpose (its last heartbeat said so): not down, nothing to wait for.
        return 0.0
    return (now - engine.last_seen_at).total_seconds()


def silent(engine: Engine, now: datetime) -> bool:
    """Nobody is running this engine as far as the control plane can tell: it stopped, or it
    has not been heard from for longer than ENGINE_STALE_AFTER_S (connected or not)."""
    if engine.stopped:
        return True
    if engine.last_seen_at is None:
        return False
    return (now - engine.last_seen_at).total_seconds() > settings.ENGINE_STALE_AFTER_S


def _open_positions(engine: Engine) -> list[tuple[str, Decimal, Decimal]]:
    """(symbol, quantity, |quantity x price|) of each open position, largest first. The price
    is the position's last fill price, its average price before any, as for the risk limits'
    gross exposure."""
    rows = [
        (symbol, quantity, abs(quantity) * (last if last is not None else avg))
        for symbol, quantity, last, avg in Position.objects.filter(engine=engine)
        .exclude(quantity=0)
        .values_list("instrument__symbol", "quantity", "last_price", "avg_price")
    ]
    return sorted(rows, key=lambda row: (-row[2], row[0]))


def orphaned_exposure(engine: Engine, now: datetime) -> float | None:
    """Gross exposure left with nobody to manage it: 0 while the engine is heard from."""
    if not silent(engine, now):
        return 0.0
    return float(sum((exposure for _, _, exposure in _open_positions(engine)), Decimal(0)))


def orphaned_detail(engine: Engine, now: datetime) -> str:
    positions = _open_positions(engine)
    if not positions:
        return "flat"
    if engine.stopped:
        how = f"stopped at {engine.stopped_at:%H:%M:%S} UTC"
    elif engine.last_seen_at is not None:
        how = f"silent for {(now - engine.last_seen_at).total_seconds():.0f} s"
    else:
        how = "never heard from"
    named = ", ".join(f"{symbol} {quantity.normalize():f}" for symbol, quantity, _ in positions[:8])
    more = f" and {len(positions) - 8} more" if len(positions) > 8 else ""
    gross = sum((exposure for _, _, exposure in positions), Decimal(0))
    return (
        f"{how}, holding {len(positions)} position{'s' if len(positions) != 1 else ''} "
        f"(gross exposure {gross:,.2f}): {named}{more}"
    )


def position_mismatch_s(engine: Engine, now: datetime) -> float | None:
    oldest = (
        Position.objects.filter(engine=engine, mismatch_since__isnull=False)
        .order_by("mismatch_since")
        .values_list("mismatch_since", flat=True)
        .first()
    )
    return (now - oldest).total_seconds() if oldest else 0.0


def position_pct(engine: Engine, now: datetime) -> float | None:
    if not engine.equity or engine.equity <= 0:
        return None
    largest = 0.0
    for quantity, last, avg in (
        Position.objects.filter(engine=engine)
        .exclude(quantity=0)
        .values_list("quantity", "last_price", "avg_price")
    ):
        largest = max(largest, float(abs(quantity) * (last if last is not None else avg)))
    return largest / float(engine.equity) * 100


def _reused_id_lines(engine: Engine) -> QuerySet[EngineLog]:
    # The ingest logs each event it refuses for reusing an id
    # (controlplane.ingest.store._refuse_id).
    return EngineLog.objects.filter(engine=engine, level="error", context__code="duplicate_id")


def reused_ids(engine: Engine, now: datetime) -> float | None:
    return float(_reused_id_lines(engine).filter(ts__gte=now - WINDOW).count())


def last_reused_id(engine: Engine, now: datetime) -> str | None:
    return _reused_id_lines(engine).order_by("-ts", "-pk").values_list("message", flat=True).first()


# The divergence from a backtest baseline is measured by the reports (a layer above, which holds
# the baselines): they hand their measure over when they load (``measure_divergence_with``).
_divergence: Callable[[Engine, datetime], float | None] | None = None


def measure_divergence_with(measure: Callable[[Engine, datetime], float | None]) -> None:
    global _divergence
    _divergence = measure


def backtest_divergence_pct(engine: Engine, now: datetime) -> float | None:
    """Unknown (None) without a baseline, or where no reports app measures it."""
    return _divergence(engine, now) if _divergence is not None else None


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric(
            "daily_pnl_pct",
            "%",
            "Day P&L as % of the session start equity (a loss is negative)",
            daily_pnl_pct,
        ),
        Metric("drawdown_pct", "%", "Drawdown from the equity high-water mark", drawdown_pct),
        Metric(
            "error_count",
            "count",
            "Error and critical log lines in the last 5 minutes",
            error_count,
            time_based=True,
        ),
        Metric(
            "critical_count",
            "count",
            "Critical log lines in the last 5 minutes",
            critical_count,
            time_based=True,
        ),
        Metric(
            "refused_events",
            "count",
            "Events the control plane refused to store in the last 15 minutes (docs/protocol.md)",
            refused_events,
            time_based=True,
        ),
        Metric(
            "rejection_rate_pct",
            "%",
            "Rejected orders of those placed in the last 15 minutes (from 10 orders)",
            rejection_rate_pct,
        ),
        Metric(
            "slippage_bps",
            "bps",
            "Mean slippage of the last 15 minutes' fills; positive is worse",
            slippage_bps,
        ),
        Metric(
            "fill_rate_pct",
            "%",
            "Filled orders of those finished in the last 15 minutes (from 10 orders)",
            fill_rate_pct,
        ),
        Metric(
            "heartbeat_age_s",
            "s",
            "Seconds since the engine was last heard from (engine down)",
            heartbeat_age_s,
            time_based=True,
        ),
        Metric(
            "md_latency_ms",
            "ms",
            "Latest market-data latency the engine reported",
            lambda e, n: _latest(e, "md_latency_ms"),
        ),
        Metric(
            "quote_age_ms",
            "ms",
            "Age of the newest quote the engine reported",
            lambda e, n: _latest(e, "quote_age_ms"),
        ),
        Metric(
            "order_latency_ms",
            "ms",
            "Latest order latency the engine reported",
            lambda e, n: _latest(e, "latency_ms"),
        ),
        Metric(
            "position_mismatch_s",
            "s",
            "How long the oldest ledger/broker position mismatch has lasted",
            position_mismatch_s,
            time_based=True,
        ),
        Metric("position_pct", "%", "Largest position as % of equity", position_pct),
        Metric(
            "orphaned_exposure",
            "",
            "Gross exposure of an engine that stopped or went silent while holding positions",
            orphaned_exposure,
            time_based=True,
            detail=orphaned_detail,
        ),
        Metric(
            "cpu_pct",
            "%",
            "CPU of the engine's host, as reported",
            lambda e, n: _latest(e, "cpu_pct"),
        ),
        Metric(
            "memory_mb",
            "MB",
            "Memory of the engine process, as reported",
            lambda e, n: _latest(e, "memory_mb"),
        ),
        Metric(
            "reused_ids",
            "count",
            "Events refused in the last 15 minutes for reusing a fill_id or client_order_id",
            reused_ids,
            time_based=True,
            detail=last_reused_id,
        ),
        Metric(
            "backtest_divergence_pct",
            "%",
            "Divergence of live return from the engine's backtest baseline",
            backtest_divergence_pct,
        ),
    ]
}

# Risk limits raise alerts through the rule with this metric (its channels, its severity).
RISK_LIMIT_METRIC = "risk_limit"
# An engine said hello in a mode its stage forbids (a live hello before small capital): a critical
# alert through the rule with this metric.
STAGE_VIOLATION_METRIC = "stage_violation"
# A broker statement differs from the ledger (controlplane.statements): a critical alert through
# the rule with this metric, one per engine and statement day, resolved by a statement of that day
# that matches.
STATEMENT_METRIC = "statement_difference"
# A day of an engine's divergence log beyond its threshold (golive.divergence): an alert through
# the rule with this metric, one per engine while its days stay beyond, resolved by a day within.
DIVERGENCE_DAY_METRIC = "divergence_day"
# A red line crossed by an engine (golive.redlines): a critical alert through the rule with this
# metric, one per red line and engine, left open for a person to resolve.
RED_LINE_METRIC = "red_line"
# An engine asked what it said it cannot do (controlplane.capabilities: a command of a kind it
# does not handle, or pre-trade limits of kinds it cannot enforce): an alert through the rule with
# this metric, one open per engine and what it was asked.
CAPABILITY_METRIC = "capability_missing"
# Rules raised by what happens, not measured: the sweeps never evaluate them.
EVENT_METRICS = (
    CAPABILITY_METRIC,
    RISK_LIMIT_METRIC,
    STAGE_VIOLATION_METRIC,
    STATEMENT_METRIC,
    DIVERGENCE_DAY_METRIC,
    RED_LINE_METRIC,
)
ENGINE_DOWN_METRIC = "heartbeat_age_s"
# Raised when an engine is down or stopped: never kept quiet by an engine-down alert.
ORPHANED_METRIC = "orphaned_exposure"
