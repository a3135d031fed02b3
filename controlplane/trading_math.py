"""The trade arithmetic every layer reads the same way (docs/analytics.md): round trips from an
instrument's fills, the Sharpe and Sortino ratios of daily returns, an equity series' maximum
drawdown; and the portfolio limits' figures (docs/risk.md): combined daily returns, correlation,
historical value at risk, a combined equity's peak. Pure functions, no
database: the reports (dashboard.reports.analytics) and the go-live gates (golive.gates) both
call them, so a round trip or a Sharpe ratio means one thing on every page.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

TRADING_DAYS_PER_YEAR = 252
ZERO = Decimal(0)

# The cash's number type: Decimal for the reports (exact to the cent), float for the gates (a
# fleet's fills read many times a minute).
Cash = TypeVar("Cash", Decimal, float)


def _exact(quantity: Decimal) -> Decimal:
    return quantity


def round_trips(
    fills: Iterable[Sequence[Any]],
    start: Any,
    end: Any,
    *,
    cash: Callable[[Decimal], Cash] = _exact,  # type: ignore[assignment]
    zero: Cash = ZERO,  # type: ignore[assignment]
) -> list[Cash]:
    """P&L of the round trips that close in [start, end), from one instrument's fills in order.

    ``fills``: (side, quantity (Decimal), price, fee, multiplier, ts). A round trip opens when the
    position leaves zero and closes when it returns to zero; its P&L is the cash its fills moved,
    fees included. A fill that crosses zero is split by quantity, its fee pro rata: the part that
    brings the position to zero closes the trip, the rest opens the next one.

    The position is counted in Decimal whatever the cash (a float position would not come back
    to exactly zero). Prices, fees and multipliers are of the cash's type, quantities and shares
    are turned into it by ``cash`` (with ``zero`` its 0): by default Decimal, exact; with
    ``cash=float, zero=0.0``, floats. ``ts``, ``start`` and ``end`` only need to compare.
    """
    trips: list[Cash] = []
    position = ZERO
    moved = zero
    for side, quantity, price, fee, multiplier, ts in fills:
        signed = quantity if side == "buy" else -quantity
        closing = ZERO
        if position != 0 and (position > 0) != (signed > 0):
            closing = min(quantity, abs(position))
        if closing:
            share = cash(closing / quantity)
            moved += _flow(side, cash(closing), price, multiplier) - fee * share
            position += closing if signed > 0 else -closing
            if position == 0:
                if start <= ts < end:
                    trips.append(moved)
                moved = zero
            rest = quantity - closing
            if rest:
                moved += _flow(side, cash(rest), price, multiplier) - fee * (1 - share)
                position += rest if signed > 0 else -rest
        else:
            moved += _flow(side, cash(quantity), price, multiplier) - fee
            position += signed
    return trips


def _flow(side: str, quantity: Cash, price: Cash, multiplier: Cash) -> Cash:
    """Cash a fill moves: a sell brings money in, a buy pays it out (before fees)."""
    value = quantity * price * multiplier
    return value if side == "sell" else -value


def sharpe_ratio(returns: Sequence[float]) -> float | None:
    """Mean daily return over its sample standard deviation, times sqrt(252); risk-free 0."""
    if len(returns) < 2:
        return None
    deviation = statistics.stdev(returns)
    if deviation == 0:
        return None
    return statistics.fmean(returns) / deviation * math.sqrt(TRADING_DAYS_PER_YEAR)


def sortino_ratio(returns: Sequence[float]) -> float | None:
    """Mean daily return over the downside deviation (target 0, over all days), times sqrt(252)."""
    if len(returns) < 2:
        return None
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in returns) / len(returns))
    if downside == 0:
        return None
    return statistics.fmean(returns) / downside * math.sqrt(TRADING_DAYS_PER_YEAR)


def max_drawdown_pct(equity: Sequence[Decimal]) -> float | None:
    """The largest fall of an equity series from its running peak, in % (0 if it never fell);
    None with fewer than two values."""
    if len(equity) < 2:
        return None
    peak = ZERO
    worst = 0.0
    for value in equity:
        peak = max(peak, value)
        if peak > 0:
            worst = max(worst, float((peak - value) / peak * 100))
    return worst


# Portfolio risk (docs/risk.md, portfolio limits): daily returns of one engine or of several
# together, their correlation, historical value at risk, and a combined equity's peak.

Key = TypeVar("Key")


def combined_daily_returns(
    closes: Mapping[Key, Sequence[tuple[date, Decimal]]],
) -> dict[date, float]:
    """Daily returns of engines taken together, from each one's end-of-day equity (by day).

    For each day d that any engine has a close on: the engines with a close before d take part,
    each with p = its latest close before d and c = its close on d (p if it has none on d); the
    return is sum(c - p) / sum(p). An engine's first close brings its capital, not a return: it
    takes part from the next day. One engine alone: its close over its previous close, - 1.
    """
    days = sorted({day for series in closes.values() for day, _ in series})
    ordered = {key: sorted(series) for key, series in closes.items()}
    latest: dict[Key, Decimal] = {}
    index = dict.fromkeys(ordered, 0)
    returns: dict[date, float] = {}
    for day in days:
        change = ZERO
        base = ZERO
        today: dict[Key, Decimal] = {}
        for key, series in ordered.items():
            i = index[key]
            if i < len(series) and series[i][0] == day:
                today[key] = series[i][1]
                index[key] = i + 1
        for key, previous in latest.items():
            change += today.get(key, previous) - previous
            base += previous
        if base > 0:
            returns[day] = float(change / base)
        latest.update(today)
    return returns


def correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation of two equally long series; None with fewer than two values or
    when either does not vary."""
    n = len(x)
    if n != len(y) or n < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def historical_var_pct(returns: Sequence[float], confidence_pct: int) -> float | None:
    """Historical value at risk, in % of equity: the loss of the k-th worst daily return, k =
    ceil(n x (100 - confidence) / 100) (nearest rank), 0 when that return is a gain; None
    without a return."""
    n = len(returns)
    if n == 0 or not 0 < confidence_pct < 100:
        return None
    rank = -(-n * (100 - confidence_pct) // 100)  # the ceiling, in integers: exact
    worst = sorted(returns)[max(rank, 1) - 1]
    return max(-worst, 0.0) * 100


def combined_peak(
    start: Mapping[Key, Decimal],
    points: Iterable[tuple[Any, Key, Decimal]],
    peak: Decimal | None,
) -> tuple[Decimal | None, Decimal | None]:
    """Fold equity points into a combined equity and its running peak.

    ``start``: each engine's equity before the points; ``points``: (ts, engine, equity) in time
    order; ``peak``: the peak so far (None: none yet). The combined equity is the sum of each
    engine's latest equity; engines reporting at the same instant move it together, so a peak
    between them does not count. Returns (combined equity after the points, peak)."""
    current = dict(start)
    total: Decimal | None = sum(current.values(), ZERO) if current else None
    if total is not None:
        peak = total if peak is None else max(peak, total)
    pending_ts: Any = None
    for ts, key, equity in points:
        if pending_ts is not None and ts != pending_ts and total is not None:
            peak = total if peak is None else max(peak, total)
        pending_ts = ts
        total = (total or ZERO) + equity - current.get(key, ZERO)
        current[key] = equity
    if pending_ts is not None and total is not None:
        peak = total if peak is None else max(peak, total)
    return total, peak


# What an account event says when it names no currency (engine_sdk.protocol.AccountEvent).
DEFAULT_ACCOUNT_CURRENCY = "USD"


def exposure(
    quantity: Decimal,
    price: Decimal,
    multiplier: Decimal,
    currency: str,
    account_currency: str,
    fx_rates: dict[str, Any],
) -> Decimal | None:
    """A position's exposure in its engine's account currency: |quantity| x price x multiplier,
    times the engine's latest rate for the instrument's currency when that is not the account's.

    None when the instrument is in another currency and the engine never reported its rate:
    the exposure is unknown, and is said to be rather than counted at a rate of 1 (a yen
    position counted at 1 would be worth 150 times its dollars). An engine that never sent an
    account event is taken to account in the protocol's default currency.
    """
    return in_account_currency(
        abs(quantity) * price * multiplier, currency, account_currency, fx_rates
    )


def in_account_currency(
    amount: Decimal, currency: str, account_currency: str, fx_rates: Mapping[str, Any]
) -> Decimal | None:
    """``amount`` of ``currency`` in the account's currency at the engine's latest rate; None
    when the engine reported no rate for it (see ``exposure``)."""
    if currency == (account_currency or DEFAULT_ACCOUNT_CURRENCY):
        return amount
    rate = fx_rates.get(currency)
    if rate is None:
        return None
    return amount * Decimal(str(rate))


def sum_in_account_currency(
    amounts: Iterable[tuple[Decimal, str]], account_currency: str, fx_rates: Mapping[str, Any]
) -> tuple[Decimal | None, list[str]]:
    """The sum of ``amounts``, each (amount, its currency), in the account's currency at the
    engine's latest rates, and the currencies that have no rate (sorted). The sum is None, an
    unknown, when a non-zero amount is in such a currency: it is never counted at a rate of 1,
    nor left out of a total that would then look whole."""
    total = ZERO
    unconverted: set[str] = set()
    for amount, currency in amounts:
        if not amount:
            continue
        converted = in_account_currency(amount, currency, account_currency, fx_rates)
        if converted is None:
            unconverted.add(currency)
        else:
            total += converted
    return (None if unconverted else total), sorted(unconverted)


def convert(
    amount: Decimal,
    currency: str,
    into: str,
    account_currency: str,
    fx_rates: Mapping[str, Any],
) -> Decimal | None:
    """``amount`` of ``currency`` in the currency ``into``, through the account's currency at
    the engine's latest rates (each one unit of a currency in the account's currency); None when
    either currency other than the account's has no rate: never counted at a rate of 1."""
    if currency == into:
        return amount
    account = account_currency or DEFAULT_ACCOUNT_CURRENCY
    in_account = in_account_currency(amount, currency, account, fx_rates)
    if in_account is None:
        return None
    if into == account:
        return in_account
    rate = fx_rates.get(into)
    if rate is None:
        return None
    return in_account / Decimal(str(rate))
