"""Post-trade limits, evaluated as each batch of an engine is stored (not on a schedule).

For each enabled post-trade limit that applies to the engine: measure the value (docs/risk.md),
its utilisation (% of the threshold), and move the engine's LimitState: a warning when a warning
level is crossed upwards, a breach at 100 % with the limit's action issued as a command through
the commands service (issued by the limit), and "cleared" when the value falls back. Each move is
claimed with a conditional update, so a batch evaluated twice never issues the action twice.
Leaving a level needs the value to fall HYSTERESIS points below it: a value hovering at the
threshold does not flap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import transaction

from controlplane.commands import issuing
from controlplane.events import announce
from controlplane.models import CommandKind, Engine, TradingState
from controlplane.trading_math import DEFAULT_ACCOUNT_CURRENCY, exposure
from risk import events as risk_events
from risk import selectors
from risk.models import POST_TRADE, Action, Level, LimitKind, LimitState, RiskEvent, RiskLimit

log = logging.getLogger(__name__)

HYSTERESIS = 5.0  # points of utilisation below a level before it is left
MIN_ORDERS_FOR_REJECTION_RATE = 20
_CACHE_S = 1.0


@dataclass
class _Cache:
    revision: int = -1
    limits: list[RiskLimit] = field(default_factory=list)
    checked_at: float = 0.0


_cache = _Cache()

# The kinds of event whose storage can move a measure: positions and prices (fills), equity, P&L
# and drawdown (account), trades and orders of the day. Metrics, logs, reported positions and
# trading states move none.
MEASURED_KINDS = frozenset({"fill", "account", "order"})
# engine id -> (limits revision, UTC day) of its last complete evaluation in this process.
_evaluated: dict[int, tuple[int, date]] = {}
# The limit kinds measured on the open positions.
_EXPOSURE_KINDS = frozenset(
    {
        LimitKind.MAX_POSITION_PCT,
        LimitKind.MAX_SECTOR_PCT,
        LimitKind.MAX_GROSS_EXPOSURE_PCT,
        LimitKind.CAPITAL_CEILING_PCT,
    }
)


def _post_trade_limits() -> list[RiskLimit]:
    # The revision check is one cheap query; it runs at most once a second per process.
    now = time.monotonic()
    if now - _cache.checked_at > _CACHE_S:
        revision = selectors.limits_revision()
        if revision != _cache.revision:
            _cache.limits = list(RiskLimit.objects.filter(enabled=True, kind__in=POST_TRADE))
            _cache.revision = revision
        _cache.checked_at = now
    return _cache.limits


def forget_cached_limits() -> None:
    _cache.checked_at = 0.0
    _cache.revision = -1
    _evaluated.clear()


# engine id -> the symbols whose exposure it last could not convert (logged once per change).
_unknown_fx: dict[int, set[str]] = {}


@dataclass
class _Book:
    equity: Decimal | None
    # symbol, sector, |quantity x price x multiplier| x FX rate; None when the rate is unknown
    exposures: list[tuple[str, str, Decimal | None]]
    day_pnl: Decimal
    session_equity: Decimal | None
    drawdown_pct: Decimal
    trades_today: int
    orders_today: tuple[int, int]  # orders, rejected
    capital_ceiling: Decimal | None  # the engine's, at the real-money stages (the capital ramp)


def _book(engine: Engine, limits: list[RiskLimit]) -> tuple[_Book, dict[int, LimitState]]:
    """The engine's figures the limits measure, and its state of each limit (one round trip)."""
    kinds = {limit.kind for limit in limits}
    inputs = selectors.post_trade_inputs(
        engine_id=engine.pk,
        limit_ids=[limit.pk for limit in limits],
        positions=bool(kinds & _EXPOSURE_KINDS),
    )
    # Today's orders and fills: the counts the gateway keeps on the engine row.
    orders, rejected, fills = engine.day_counts()
    # In the account currency, with each instrument's multiplier (docs/risk.md, "Exposure"); None
    # for a position in a currency the engine reported no rate for.
    account, rates = engine.account_currency, engine.fx_rates or {}
    exposures = [
        (
            symbol,
            sector,
            exposure(quantity, last if last is not None else avg, mult, currency, account, rates),
        )
        for symbol, sector, quantity, last, avg, mult, currency in inputs.positions
    ]
    unknown = {symbol for symbol, _, value in exposures if value is None}
    if unknown and _unknown_fx.get(engine.pk) != unknown:
        _unknown_fx[engine.pk] = unknown
        log.warning(
            "risk: %s: no FX rate into %s for %s; the exposure limits that count them are not "
            "measured until the engine reports one",
            engine.name,
            account or DEFAULT_ACCOUNT_CURRENCY,
            ", ".join(sorted(unknown)),
        )
    book = _Book(
        equity=engine.equity,
        exposures=exposures,
        day_pnl=engine.day_pnl,
        session_equity=engine.session_start_equity,
        drawdown_pct=engine.drawdown_pct,
        trades_today=fills,
        orders_today=(orders, rejected),
        capital_ceiling=engine.capital_ceiling,
    )
    return book, inputs.states


def measure(limit: RiskLimit, book: _Book) -> tuple[Decimal, str] | None:
    """The limit's value for this engine and what it is about; None when it cannot be known."""
    kind, scoped = limit.kind, limit.scope_value
    equity = book.equity if book.equity and book.equity > 0 else None
    # A limit whose positions include one of unknown exposure (no FX rate) cannot be known.
    if kind == LimitKind.MAX_POSITION_PCT:
        rows = [(s, e) for s, _, e in book.exposures if limit.scope != "symbol" or s == scoped]
        if equity is None or any(e is None for _, e in rows):
            return None
        symbol, value = max(rows, key=lambda r: r[1], default=(scoped or "-", Decimal(0)))
        return value / equity * 100, symbol  # type: ignore[operator]
    if kind == LimitKind.MAX_SECTOR_PCT:
        if equity is None:
            return None
        sectors: dict[str, Decimal | None] = {}
        for _, sector, value in book.exposures:
            so_far = sectors.get(sector, Decimal(0))
            sectors[sector] = None if so_far is None or value is None else so_far + value
        if limit.scope == "sector":
            sectors = {scoped: sectors.get(scoped, Decimal(0))}
        if any(value is None for value in sectors.values()):
            return None
        sector, value = max(sectors.items(), key=lambda r: r[1], default=("-", Decimal(0)))  # type: ignore[arg-type,return-value]
        return value / equity * 100, f"sector {sector or '(none)'}"  # type: ignore[operator]
    if kind in (LimitKind.MAX_GROSS_EXPOSURE_PCT, LimitKind.CAPITAL_CEILING_PCT):
        values = [e for _, _, e in book.exposures]
        if any(e is None for e in values):
            return None
        gross = sum(values, Decimal(0))  # type: ignore[arg-type]
        if kind == LimitKind.MAX_GROSS_EXPOSURE_PCT:
            return (gross / equity * 100, "gross") if equity is not None else None
        # Only engines the capital ramp gives a ceiling are measured.
        if book.capital_ceiling is None or book.capital_ceiling <= 0:
            return None
        return gross / book.capital_ceiling * 100, f"gross of {book.capital_ceiling:,.2f}"
    if kind == LimitKind.MAX_DAILY_LOSS_PCT:
        if not book.session_equity:
            return None
        return max(-book.day_pnl, Decimal(0)) / book.session_equity * 100, "day loss"
    if kind == LimitKind.MAX_DAILY_LOSS:
        return max(-book.day_pnl, Decimal(0)), "day loss"
    if kind == LimitKind.MAX_DRAWDOWN_PCT:
        return book.drawdown_pct, "drawdown"
    if kind == LimitKind.MAX_TRADES_PER_DAY:
        return Decimal(book.trades_today), "trades today"
    if kind == LimitKind.MAX_REJECTION_RATE_PCT:
        orders, rejected = book.orders_today
        if orders < MIN_ORDERS_FOR_REJECTION_RATE:
            return Decimal(0), f"rejections ({orders} orders so far)"
        return Decimal(rejected) / orders * 100, "rejections"
    return None


def evaluate_engine(
    engine_id: int, *, engine: Engine | None = None, stored: Collection[str] | None = None
) -> list[RiskEvent]:
    """Evaluate the post-trade limits of one engine; returns the events it raised.

    After a batch, the gateway passes the engine row as the batch left it (``engine``, with at
    least the figures the limits read) and the kinds of the events it stored (``stored``). A
    batch that stored nothing a limit measures is not evaluated again, unless the limits have
    changed or a UTC day has begun since this process last evaluated the engine.
    """
    limits = _post_trade_limits()
    if not limits:
        return []
    mark = (_cache.revision, datetime.now(UTC).date())
    unchanged = stored is not None and not MEASURED_KINDS.intersection(stored)
    if unchanged and _evaluated.get(engine_id) == mark:
        return []
    if engine is None:
        engine = Engine.objects.filter(pk=engine_id).first()
        if engine is None:
            return []
    applicable = [limit for limit in limits if selectors.applies_to(limit, engine)]
    events: list[RiskEvent] = []
    if applicable:
        book, states = _book(engine, applicable)
        for limit in applicable:
            measured = measure(limit, book)
            if measured is None:
                continue
            value, about = measured
            utilisation = float(value / limit.threshold * 100)
            state = states.get(limit.pk)
            events.extend(_move(limit, engine, state, value, utilisation, about))
    _evaluated[engine_id] = mark
    return events


def transition(
    warning_levels: Collection[int] | None,
    level: str,
    warned: int,
    breached_at: datetime | None,
    utilisation: float,
) -> tuple[str, int, datetime | None, list[tuple[str, int]]]:
    """A state's next (level, warned-at level, breached at) at this utilisation, and the events
    the move raises: (kind, level). Shared by the engines' limits and the portfolio limits
    (risk.portfolio), so a level means one thing for both."""
    previous = level
    levels = sorted(warning_levels or [])
    events: list[tuple[str, int]] = []
    if utilisation >= 100:
        if level != Level.BREACHED:
            level, breached_at = Level.BREACHED, datetime.now(UTC)
            warned = max(levels, default=0)  # its warnings are passed too: none on the way back
            events.append((RiskEvent.Kind.BREACH, 100))
    else:
        breach_cleared = level == Level.BREACHED and utilisation < 100 - HYSTERESIS
        if breach_cleared:
            level, breached_at = Level.WARNING, None
        crossed = max((lv for lv in levels if utilisation >= lv), default=0)
        if level != Level.BREACHED and crossed > warned:
            warned, level = crossed, Level.WARNING
            events.append((RiskEvent.Kind.WARNING, crossed))
        elif level != Level.BREACHED:
            # Levels are left only HYSTERESIS points below them.
            while warned and utilisation < warned - HYSTERESIS:
                lower = [lv for lv in levels if lv < warned]
                warned = lower[-1] if lower else 0
            if warned == 0:
                level = Level.OK
        # "Cleared" carries the warning level the value is still at: a breach that falls back
        # to a warning says so (its alert becomes a warning), and leaving the lowest warning
        # level (0: under every level) resolves the alert, whether it began as a warning or a
        # breach.
        if breach_cleared or (level == Level.OK and previous != Level.OK):
            events.append((RiskEvent.Kind.CLEARED, warned))
    return level, warned, breached_at, events


def _move(
    limit: RiskLimit,
    engine: Engine,
    state: LimitState | None,
    value: Decimal,
    utilisation: float,
    about: str,
) -> list[RiskEvent]:
    if state is None:  # the engine's first evaluation against this limit
        state, _ = LimitState.objects.get_or_create(limit=limit, engine_id=engine.pk)
    level, warned, breached_at, events = transition(
        limit.warning_levels, state.level, state.warned_at_level, state.breached_at, utilisation
    )
    quantum = Decimal("0.00000001")
    changed = (level, warned) != (state.level, state.warned_at_level)
    if not changed and abs(utilisation - state.utilisation) < 0.5:
        return []
    # Claimed with a conditional update: only the evaluation that moves the state acts on it.
    claimed = LimitState.objects.filter(
        pk=state.pk, level=state.level, warned_at_level=state.warned_at_level
    ).update(
        value=value.quantize(quantum),
        utilisation=utilisation,
        level=level,
        warned_at_level=warned,
        breached_at=breached_at,
    )
    if claimed != 1 or not changed:
        return []
    return [_raise(limit, engine, kind, at, value, utilisation, about) for kind, at in events]


def _raise(
    limit: RiskLimit,
    engine: Engine,
    kind: str,
    level: int,
    value: Decimal,
    utilisation: float,
    about: str,
) -> RiskEvent:
    what = limit.get_kind_display()
    if kind == RiskEvent.Kind.BREACH:
        message = (
            f"{engine.name}: {what} breached ({about}: {value:.2f} against "
            f"{limit.threshold:.2f}); action: {limit.get_action_display()}"
        )
    elif kind == RiskEvent.Kind.WARNING:
        message = (
            f"{engine.name}: {what} at {utilisation:.0f}% of its limit ({about}: "
            f"{value:.2f} of {limit.threshold:.2f})"
        )
    elif level:
        message = (
            f"{engine.name}: {what} back under its limit, still over its {level}% "
            f"warning level ({utilisation:.0f}%)"
        )
    else:
        message = f"{engine.name}: {what} back under its warning levels ({utilisation:.0f}%)"
    # Stored before its action is issued: whoever sees the command (the engine's answer, an
    # incident opened by a kill) finds the breach that issued it.
    event = RiskEvent.objects.create(
        limit=limit,
        engine=engine,
        kind=kind,
        level=level,
        threshold=limit.threshold,
        value=value.quantize(Decimal("0.00000001")),
        utilisation=utilisation,
        message=message,
    )
    log.warning("risk: %s", message)
    if kind == RiskEvent.Kind.BREACH and limit.action != Action.ALERT:
        event.command = _act(limit, engine, message)
        if event.command is not None:
            RiskEvent.objects.filter(pk=event.pk).update(command=event.command)
    transaction.on_commit(lambda: announce(risk_events.limit_event_raised, event_id=event.pk))
    return event


def _act(limit: RiskLimit, engine: Engine, message: str) -> Any:
    # Read now, not with the figures: the engine row may come from the batch's own transaction.
    engine.refresh_from_db(fields=["desired_state"])
    if engine.desired_state == TradingState.HALTED:
        return None  # already killed, latched: nothing a limit does can loosen or repeat it
    kind, params = {
        Action.PAUSE: (CommandKind.PAUSE, {"cancel_open": True}),
        Action.REDUCE: (CommandKind.REDUCE, {"target_pct": float(limit.reduce_to_pct or 0)}),
        Action.KILL: (CommandKind.KILL, {"flatten": True}),
    }[limit.action]  # type: ignore[index]
    batch = issuing.command_issue(
        kind=kind,
        selector=f"engine:{engine.name}",
        reason=message,
        params=params,
        actor=None,
        actor_label=f"limit #{limit.pk} {limit.kind}",
    )
    return batch.commands.get()


def on_batch_stored(sender: Any, *, engine_id: int, result: Any, **kwargs: Any) -> None:
    """controlplane.events.batch_stored: evaluate the post-trade limits on what the batch stored
    (the engine row as the batch left it saves reading it again)."""
    if result.stored:
        evaluate_engine(engine_id, engine=result.engine, stored=result.kinds)
