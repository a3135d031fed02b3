"""Reads behind the fleet overview, the engine page and their live updates.

The fleet overview is a constant number of queries whatever the number of engines or positions:
one for the engines (with the latest latency as a per-engine index lookup), one aggregate each for
positions, working orders and today's orders. The live publisher calls the same functions for
the engines that changed, so the first render and the updates cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import (
    Count,
    DecimalField,
    ExpressionWrapper,
    F,
    JSONField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
)
from django.db.models.functions import Coalesce, JSONObject, TruncMinute

from alerts.models import Alert
from controlplane.models import (
    AccountSnapshot,
    Command,
    CommandKind,
    Engine,
    EngineLog,
    Fill,
    MetricSample,
    Order,
    Position,
    TradingState,
)
from controlplane.selectors import position_figures
from controlplane.trading_math import (
    DEFAULT_ACCOUNT_CURRENCY,
    sum_in_account_currency,
)

ZERO = Decimal(0)


def connection_status(engine: Engine, now: datetime) -> str:
    if engine.stopped:
        return "stopped"  # shut down on purpose: not lost, not down
    if not engine.connected:
        return "offline"
    if engine.last_seen_at is None:
        return "stale"
    age = (now - engine.last_seen_at).total_seconds()
    return "online" if age <= settings.ENGINE_STALE_AFTER_S else "stale"


@dataclass
class FleetRow:
    id: int
    name: str
    mode: str
    stage: str
    strategy_tags: list[str]
    connection: str
    last_seen_at: str | None
    desired_state: str
    reported_state: str
    equity: float | None
    day_pnl: float
    drawdown_pct: float
    gross_exposure: float
    open_positions: int
    working_orders: int
    mismatches: int
    orders_today: int
    rejected_today: int
    rejection_rate: float | None
    latency_ms: float | None
    firing_alerts: int = 0
    # Currencies of open positions the engine reported no FX rate for: their exposure is unknown
    # and left out of gross_exposure (controlplane.trading_math.exposure).
    unconverted: list[str] = field(default_factory=list)
    # The state's cause as the row shows it on one line: who or what set it ("alice", "limit #3
    # max_daily_loss", "alert rule <name>", "control plane (latched state)", or "engine" for the
    # engine's own reason, such as the SDK's dead-man pause), when and why; cause_title says all
    # of it. "" when nothing is known (a new engine). See _cause_of.
    cause_kind: str = ""
    cause_by: str = ""
    cause_reason: str = ""
    cause_at: str | None = None
    cause_batch: str | None = None
    cause_title: str = ""
    # The engine's own reason for the state it reports, for the engine page.
    engine_reason: str = ""
    engine_reason_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FleetTotals:
    engines: int = 0
    online: int = 0
    equity: float = 0.0
    day_pnl: float = 0.0
    gross_exposure: float = 0.0
    open_positions: int = 0
    working_orders: int = 0
    mismatches: int = 0
    halted: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _engines(
    *, mode: str | None, tag: str | None, engine_ids: Iterable[int] | None
) -> QuerySet[Engine]:
    engines = Engine.objects.filter(is_active=True)
    if mode:
        engines = engines.filter(mode=mode)
    if tag:
        engines = engines.filter(strategy_tags__contains=[tag])
    if engine_ids is not None:
        engines = engines.filter(pk__in=list(engine_ids))
    latest_latency = (
        MetricSample.objects.filter(engine=OuterRef("pk"), name="latency_ms")
        .order_by("-ts")
        .values("value")[:1]
    )
    return engines.annotate(
        latency_ms=Subquery(latest_latency), state_cause=_state_cause()
    ).order_by("name")


# The desired state each command kind leaves an engine in, when it changes it.
STATE_SET_BY = {
    CommandKind.KILL: TradingState.HALTED,
    CommandKind.PAUSE: TradingState.PAUSED,
    CommandKind.RESUME: TradingState.ACTIVE,
    CommandKind.REDUCE: TradingState.REDUCING,
    CommandKind.FLATTEN: TradingState.REDUCING,
}


def _state_cause() -> Subquery:
    """The command that set each engine's desired state, as one JSON value per engine row.

    Issuing writes the batch's commands and the engines' new desired states with one timestamp
    (controlplane.commands.desired_state), so that command is the one of a state-setting
    kind created at the engine's desired_changed_at: an index lookup per engine
    (command_engine_recent_idx) inside the engines' own query, not a query per engine.
    """
    command = (
        Command.objects.filter(
            engine=OuterRef("pk"),
            created_at=OuterRef("desired_changed_at"),
            kind__in=list(STATE_SET_BY),
        )
        .order_by("-created_at")
        .values(
            cause=JSONObject(
                kind="kind",
                by="issued_by_label",
                reason="reason",
                at="created_at",
                batch="batch_id",
            )
        )[:1]
    )
    return Subquery(command, output_field=JSONField())


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cause_of(engine: Engine, now: datetime) -> dict[str, Any]:
    """The FleetRow's cause fields: the command that set the desired state and the engine's own
    reason for the state it reports; the row shows the engine's when it paused itself against
    the control plane's wish (the SDK's dead-man), the command's otherwise."""
    command = engine.state_cause or {}  # type: ignore[attr-defined]
    desired = engine.desired_state_at(now)  # a timed pause that ran out is over
    # A command of another kind than the state (the state changed since without a command,
    # say a timed pause that ran out) is not its cause.
    if command and STATE_SET_BY.get(command["kind"]) != desired:
        command = {}
    at = datetime.fromisoformat(command["at"]) if command else None
    # The engine's own reason, while it still reports the state it gave it for: an ACTIVE
    # engine's ("start", "dead-man: server is back") says nothing an operator must act on.
    own = (
        bool(engine.reported_reason)
        and engine.reported_reason_state == engine.reported_state
        and engine.reported_state != TradingState.ACTIVE
    )
    own_at = engine.reported_reason_at if own else None
    title = []
    if command:
        title.append(
            f"{engine.desired_state} by {command['by']} ({command['kind']}) at "
            f"{_stamp(at)}: {command['reason']}"  # type: ignore[arg-type]
        )
    if own:
        when = f" since {_stamp(own_at)}" if own_at else ""
        title.append(f"The engine reports {engine.reported_state}{when}: {engine.reported_reason}")
    fields: dict[str, Any] = {
        "cause_title": "\n".join(title),
        "engine_reason": engine.reported_reason if own else "",
        "engine_reason_at": own_at.isoformat() if own_at else None,
    }
    if own and (not command or engine.desired_state == TradingState.ACTIVE):
        shown = {"by": "engine", "reason": engine.reported_reason, "at": own_at}
        return fields | _shown(shown)
    if command:
        return fields | _shown(command | {"at": at})
    return fields


def _shown(cause: dict[str, Any]) -> dict[str, Any]:
    at = cause.get("at")
    return {
        "cause_kind": cause.get("kind", ""),
        "cause_by": cause["by"],
        "cause_reason": cause["reason"],
        "cause_at": at.astimezone(UTC).isoformat() if at else None,
        "cause_batch": cause.get("batch"),
    }


def fleet_rows(
    *,
    mode: str | None = None,
    tag: str | None = None,
    engine_ids: Iterable[int] | None = None,
    now: datetime | None = None,
) -> list[FleetRow]:
    now = now or datetime.now(UTC)
    engines = list(_engines(mode=mode, tag=tag, engine_ids=engine_ids))
    if not engines:
        return []
    ids = [e.pk for e in engines]
    positions = position_figures(engines)
    # Working orders and today's orders are counts the gateway keeps on the engine row
    # (Engine.counts_day): counting the day's orders here grew all day, on every live update.
    firing = dict(
        Alert.objects.filter(engine_id__in=ids, state=Alert.State.FIRING)
        .values("engine_id")
        .annotate(n=Count("pk"))
        .values_list("engine_id", "n")
    )
    rows = []
    for engine in engines:
        pos = positions.get(engine.pk, {})
        orders_today, rejected, _ = engine.day_counts(now)
        rows.append(
            FleetRow(
                id=engine.pk,
                name=engine.name,
                mode=engine.mode,
                stage=engine.stage,
                strategy_tags=list(engine.strategy_tags),
                connection=connection_status(engine, now),
                last_seen_at=engine.last_seen_at.isoformat() if engine.last_seen_at else None,
                desired_state=engine.desired_state_at(now),
                reported_state=engine.reported_state,
                equity=float(engine.equity) if engine.equity is not None else None,
                day_pnl=float(engine.day_pnl),
                drawdown_pct=float(engine.drawdown_pct),
                gross_exposure=float(pos.get("gross") or ZERO),
                unconverted=pos.get("unconverted", []),
                open_positions=pos.get("open", 0),
                working_orders=engine.working_orders,
                mismatches=pos.get("mismatches", 0),
                orders_today=orders_today,
                rejected_today=rejected,
                rejection_rate=rejected / orders_today if orders_today else None,
                latency_ms=engine.latency_ms,  # type: ignore[attr-defined]
                firing_alerts=firing.get(engine.pk, 0),
                **_cause_of(engine, now),
            )
        )
    return rows


def fleet_totals(rows: Iterable[FleetRow]) -> FleetTotals:
    totals = FleetTotals()
    for row in rows:
        totals.engines += 1
        totals.online += row.connection == "online"
        totals.equity += row.equity or 0.0
        totals.day_pnl += row.day_pnl
        totals.gross_exposure += row.gross_exposure
        totals.open_positions += row.open_positions
        totals.working_orders += row.working_orders
        totals.mismatches += row.mismatches
        state = row.reported_state or "UNKNOWN"
        totals.by_state[state] = totals.by_state.get(state, 0) + 1
        totals.halted += state == "HALTED"
    return totals


# --- one engine -----------------------------------------------------------------------------------


def slippage_bps(side: str, price: Decimal, expected: Decimal | None) -> float | None:
    """Positive is worse than expected: paid more on a buy, got less on a sell."""
    if expected is None or expected == 0:
        return None
    signed = (price - expected) if side == "buy" else (expected - price)
    return float(signed / expected * 10_000)


def engine_pnl(engine: Engine) -> dict[str, Any]:
    """The engine's realised P&L (of every position it has held) and unrealised P&L (of its open
    ones, at the last price, with the multiplier), each added up in its account currency: every
    position's P&L is in its instrument's currency, converted at the engine's latest FX rates.
    A total that needs a rate the engine never reported is None, an unknown, with the currencies
    named: never counted at a rate of 1. One query."""
    unrealized = ExpressionWrapper(
        (Coalesce(F("last_price"), F("avg_price")) - F("avg_price"))
        * F("quantity")
        * F("instrument__multiplier"),
        output_field=DecimalField(max_digits=48, decimal_places=14),
    )
    rows = list(
        Position.objects.filter(engine=engine)
        .values("instrument__currency")
        .annotate(realized=Sum("realized_pnl"), unrealized=Sum(unrealized))
        .values_list("instrument__currency", "realized", "unrealized")
    )
    account = engine.account_currency or DEFAULT_ACCOUNT_CURRENCY
    rates = engine.fx_rates or {}
    realized, realized_unknown = sum_in_account_currency(
        ((amount or ZERO, currency) for currency, amount, _ in rows), account, rates
    )
    open_pnl, open_unknown = sum_in_account_currency(
        ((amount or ZERO, currency) for currency, _, amount in rows), account, rates
    )
    return {
        "currency": account,
        "realized": float(realized) if realized is not None else None,
        "unrealized": float(open_pnl) if open_pnl is not None else None,
        "unconverted": sorted(set(realized_unknown) | set(open_unknown)),
    }


def engine_positions(engine: Engine) -> list[dict[str, Any]]:
    """The open (or reported) positions, each figure in its instrument's currency (shown with
    it): the value and unrealised P&L count the multiplier, as the realised P&L does."""
    rows = []
    for pos in (
        Position.objects.filter(engine=engine)
        .filter(~Q(quantity=0) | Q(reported_quantity__isnull=False) & ~Q(reported_quantity=0))
        .select_related("instrument")
        .order_by("instrument__symbol")
    ):
        price = pos.last_price if pos.last_price is not None else pos.avg_price
        multiplier = pos.instrument.multiplier
        rows.append(
            {
                "symbol": pos.instrument.symbol,
                "sector": pos.instrument.sector,
                "currency": pos.instrument.currency,
                "quantity": float(pos.quantity),
                "avg_price": float(pos.avg_price),
                "last_price": float(price),
                "market_value": float(pos.quantity * price * multiplier),
                "unrealized_pnl": float((price - pos.avg_price) * pos.quantity * multiplier),
                "realized_pnl": float(pos.realized_pnl),
                "reported_quantity": (
                    float(pos.reported_quantity) if pos.reported_quantity is not None else None
                ),
                "mismatch_since": pos.mismatch_since.isoformat() if pos.mismatch_since else None,
            }
        )
    return rows


def engine_working_orders(engine: Engine, limit: int = 200) -> list[dict[str, Any]]:
    return [
        {
            "client_order_id": o.client_order_id,
            "symbol": o.instrument.symbol,
            "side": o.side,
            "order_type": o.order_type,
            "quantity": float(o.quantity),
            "filled_quantity": float(o.filled_quantity),
            "limit_price": float(o.limit_price) if o.limit_price is not None else None,
            "status": o.status,
            "updated_at": o.updated_at.isoformat(),
        }
        for o in Order.objects.filter(engine=engine, status__in=Order.WORKING)
        .select_related("instrument")
        .order_by("-updated_at")[:limit]
    ]


def engine_fills(
    engine: Engine, *, after_id: int | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    fills = Fill.objects.filter(engine=engine).select_related("instrument")
    if after_id is not None:
        fills = fills.filter(pk__gt=after_id)
    return [
        {
            "id": f.pk,
            "fill_id": f.fill_id,
            "symbol": f.instrument.symbol,
            "side": f.side,
            "quantity": float(f.quantity),
            "price": float(f.price),
            "expected_price": float(f.expected_price) if f.expected_price is not None else None,
            "slippage_bps": slippage_bps(f.side, f.price, f.expected_price),
            "ts": f.ts.isoformat(),
        }
        for f in fills.order_by("-pk")[:limit]
    ]


EQUITY_POINTS = 2000

# The session's equity with its running peak and the drawdown from it, computed over every stored
# snapshot of the session, then cut down to at most %(points)s points for the chart: the session
# is split into %(buckets)s + 1 equal spans of time, and each span keeps its deepest drawdown and
# its highest equity (often the same point); the session's last point is always kept. A session
# short enough is returned whole.
_SESSION_EQUITY_SQL = f"""
WITH s AS (
    SELECT ts, equity,
           max(equity) OVER (ORDER BY ts, seq) AS peak,
           row_number() OVER (ORDER BY ts, seq) AS i,
           count(*) OVER () AS n,
           min(ts) OVER () AS first_ts,
           max(ts) OVER () AS last_ts
      FROM {AccountSnapshot._meta.db_table}
     WHERE engine_id = %(engine)s AND ts >= %(since)s
), d AS (
    SELECT ts, equity, peak, i, n,
           CASE WHEN peak > 0 THEN (equity - peak) / peak * 100 ELSE 0 END AS drawdown,
           CASE WHEN n <= %(points)s THEN i
                ELSE floor(extract(epoch FROM ts - first_ts)
                           / NULLIF(extract(epoch FROM last_ts - first_ts), 0) * %(buckets)s)
           END AS bucket
      FROM s
), ranked AS (
    SELECT ts, equity, peak, drawdown, i, n,
           row_number() OVER (PARTITION BY bucket ORDER BY drawdown, i) AS deepest,
           row_number() OVER (PARTITION BY bucket ORDER BY equity DESC, i) AS highest
      FROM d
)
SELECT ts, equity, drawdown, peak FROM ranked
 WHERE deepest = 1 OR highest = 1 OR i = n
 ORDER BY i
"""


def _drawdown_pct(equity: float, peak: float | None) -> float:
    return 100.0 * (equity - peak) / peak if peak else 0.0


def equity_series(
    engine: Engine,
    *,
    since: datetime | None = None,
    peak: float | None = None,
    limit: int = EQUITY_POINTS,
) -> dict[str, Any]:
    """The session's equity and its drawdown (%, negative) from the session's running peak.

    Without ``since``: the whole session (since ``Engine.session_start_at``), its peak taken from
    the series' own history in SQL and the points cut down to at most ``limit``. With ``since``
    (the live updates): the points after it, oldest first, their running peak starting at
    ``peak``, the session's peak up to ``since`` (ignored when a new session began after it).
    ``peak`` in the result is the session's peak at the last point, for the next call.
    """
    session = engine.session_start_at
    empty: dict[str, Any] = {"ts": [], "equity": [], "drawdown_pct": [], "peak": peak}
    if session is None:
        return empty
    if since is None:
        buckets = max(1, (limit - 1) // 2 - 1)
        with connection.cursor() as cursor:
            cursor.execute(
                _SESSION_EQUITY_SQL,
                {"engine": engine.pk, "since": session, "points": limit, "buckets": buckets},
            )
            rows = cursor.fetchall()
        if not rows:
            return empty
        return {
            "ts": [ts.isoformat() for ts, _, _, _ in rows],
            "equity": [float(equity) for _, equity, _, _ in rows],
            "drawdown_pct": [float(drawdown) for _, _, drawdown, _ in rows],
            "peak": float(rows[-1][3]),
        }
    if session > since:
        since, peak = session, None  # a new session: its peak starts again
        newer = AccountSnapshot.objects.filter(engine=engine, ts__gte=since)
    else:
        newer = AccountSnapshot.objects.filter(engine=engine, ts__gt=since)
    ts, equity, drawdown = [], [], []
    for at, value in newer.order_by("ts", "seq").values_list("ts", "equity"):
        v = float(value)
        peak = v if peak is None else max(peak, v)
        ts.append(at.isoformat())
        equity.append(v)
        drawdown.append(_drawdown_pct(v, peak))
    return {
        "ts": ts[-limit:],
        "equity": equity[-limit:],
        "drawdown_pct": drawdown[-limit:],
        "peak": peak,
    }


def metric_series(
    engine: Engine, name: str, *, since: datetime | None = None, limit: int = 2000
) -> dict:
    samples = MetricSample.objects.filter(engine=engine, name=name)
    if since is not None:
        samples = samples.filter(ts__gt=since)
    points = list(samples.order_by("-ts").values_list("ts", "value")[:limit])[::-1]
    return {"ts": [t.isoformat() for t, _ in points], "value": [v for _, v in points]}


def rejection_series(engine: Engine, *, minutes: int = 120, now: datetime | None = None) -> dict:
    """The share of orders rejected, per minute over the last ``minutes``."""
    now = now or datetime.now(UTC)
    buckets = (
        Order.objects.filter(engine=engine, created_at__gte=now - timedelta(minutes=minutes))
        .annotate(minute=TruncMinute("created_at"))
        .values("minute")
        .annotate(n=Count("pk"), rejected=Count("pk", filter=Q(status="rejected")))
        .order_by("minute")
    )
    ts, rate = [], []
    for bucket in buckets:
        ts.append(bucket["minute"].isoformat())
        rate.append(100.0 * bucket["rejected"] / bucket["n"])
    # The window itself, for the chart's axis to span when there are few buckets or none.
    since = (now - timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    return {"ts": ts, "rejection_pct": rate, "since": since.isoformat(), "until": now.isoformat()}


def engine_logs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    return [
        {"ts": log.ts.isoformat(), "level": log.level, "message": log.message}
        for log in EngineLog.objects.filter(engine=engine).order_by("-ts")[:limit]
    ]


def engine_commands(engine: Engine, limit: int = 20) -> list[Command]:
    return list(Command.objects.filter(engine=engine).order_by("-created_at")[:limit])


def engine_snapshot(engine: Engine) -> dict[str, Any]:
    """Everything the engine page shows, as the live updates extend it."""
    rows = fleet_rows(engine_ids=[engine.pk])
    return {
        "row": rows[0].as_dict() if rows else None,
        "positions": engine_positions(engine),
        "pnl": engine_pnl(engine),
        "orders": engine_working_orders(engine),
        "fills": engine_fills(engine),
        "equity": {k: v for k, v in equity_series(engine).items() if k != "peak"},
        "latency": metric_series(engine, "latency_ms"),
        "rejections": rejection_series(engine),
        "logs": engine_logs(engine),
        "commands": [
            {
                "id": str(c.pk),
                "kind": c.kind,
                "status": c.status,
                "issued_by": c.issued_by_label,
                "created_at": c.created_at.isoformat(),
                "shortfall": c.shortfall,
            }
            for c in engine_commands(engine)
        ],
    }
