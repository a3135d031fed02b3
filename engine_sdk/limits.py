"""Pre-trade limits: the checks a new order must pass in the engine before it reaches a broker.

The control plane sends the limits that apply to this engine (in ``welcome`` and ``set_limits``);
each is ``{"id", "kind", "threshold", "scope", "scope_value"}`` with the threshold a decimal
string. The kinds enforced here:

| kind                 | an order is rejected when                                            |
| -------------------- | -------------------------------------------------------------------- |
| `max_order_qty`      | quantity > threshold                                                 |
| `max_order_notional` | quantity x price > threshold (price: the limit price, else the       |
|                      | reference price; with neither, the order is rejected)                |
| `price_collar_pct`   | abs(price - reference) / reference x 100 > threshold (only when both |
|                      | are known: a market order has no collar)                             |
| `max_order_rate`     | it would make more than threshold passed orders within the last 1 s  |
|                      | (orders at exactly 1 s ago no longer count)                          |
| `duplicate_order`    | an order with the same symbol, side, quantity and price passed less  |
|                      | than threshold seconds ago                                           |

A limit applies to every order (scope ``all``), to one symbol (``symbol``) or to the orders whose
sector, as the engine gives it per order, equals ``scope_value`` (``sector``). Rate and duplicate
windows count the orders that passed and that the limit applies to.

Wire data is read leniently: a limit object that cannot be read is skipped with a warning and a
kind this SDK does not know is ignored (logged once), so a newer server never stops an engine.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from engine_sdk.gate import OrderRejected
from engine_sdk.protocol import Side

__all__ = ["KINDS", "RATE_WINDOW_S", "Limit", "LimitRejected", "PreTradeLimits", "to_decimal"]

log = logging.getLogger(__name__)

Scope = Literal["all", "symbol", "sector"]
Number = Decimal | int | float

KINDS: Final = frozenset(
    {"max_order_qty", "max_order_notional", "price_collar_pct", "max_order_rate", "duplicate_order"}
)
RATE_WINDOW_S: Final = 1.0
_SCOPES: Final = frozenset({"all", "symbol", "sector"})
_WINDOWED: Final = frozenset({"max_order_rate", "duplicate_order"})
_HUNDRED: Final = Decimal(100)
# Kinds already reported as ignored, so that every welcome does not log them again.
_ignored_kinds_logged: set[str] = set()


class LimitRejected(OrderRejected):
    """A pre-trade limit refused an order; ``reason`` names the limit, its threshold and the value.

    ``limit_id`` is None only when the engine does not know its limits (see EngineClient).
    """

    def __init__(self, reason: str, *, limit_id: int | None, limit_kind: str) -> None:
        super().__init__(reason)
        self.limit_id = limit_id
        self.limit_kind = limit_kind


@dataclass(frozen=True)
class Limit:
    id: int
    kind: str
    threshold: Decimal
    scope: Scope = "all"
    scope_value: str | None = None

    @property
    def name(self) -> str:
        return f"pre-trade limit {self.kind} (#{self.id})"

    def applies_to(self, symbol: str, sector: str | None) -> bool:
        if self.scope == "symbol":
            return symbol == self.scope_value
        if self.scope == "sector":
            return sector is not None and sector == self.scope_value
        return True

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "threshold": str(self.threshold),
            "scope": self.scope,
            "scope_value": self.scope_value,
        }


class _Malformed(ValueError):
    pass


def _parse_limit(raw: Any) -> Limit | None:
    """A Limit, or None for a kind this SDK does not enforce; raises _Malformed."""
    if not isinstance(raw, Mapping):
        raise _Malformed(f"a limit must be an object, got {type(raw).__name__}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise _Malformed("kind must be a non-empty string")
    if kind not in KINDS:
        if kind not in _ignored_kinds_logged:
            _ignored_kinds_logged.add(kind)
            log.warning("engine: ignoring pre-trade limits of unknown kind %r", kind[:64])
        return None
    limit_id = raw.get("id")
    if isinstance(limit_id, bool) or not isinstance(limit_id, int):
        raise _Malformed(f"{kind}: id must be an integer")
    threshold = to_decimal(raw.get("threshold"))
    if threshold is None or threshold < 0:
        raise _Malformed(f"{kind} (#{limit_id}): threshold must be a decimal string >= 0")
    scope = raw.get("scope", "all")
    if scope not in _SCOPES:
        raise _Malformed(f"{kind} (#{limit_id}): unknown scope {str(scope)[:32]!r}")
    scope_value = raw.get("scope_value")
    if scope == "all":
        scope_value = None
    elif not isinstance(scope_value, str) or not scope_value:
        raise _Malformed(f"{kind} (#{limit_id}): scope {scope} needs a scope_value")
    return Limit(id=limit_id, kind=kind, threshold=threshold, scope=scope, scope_value=scope_value)


def to_decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a decimal string or a number, else None."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, str | int | Decimal):
            number = Decimal(value)
        elif isinstance(value, float):
            number = Decimal(repr(value))
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _price(value: Number | None) -> Decimal | None:
    # A price that is missing, not a number or not positive is no price at all.
    number = to_decimal(value) if value is not None else None
    return number if number is not None and number > 0 else None


def _text(number: Decimal) -> str:
    return format(number, "f")


@dataclass(frozen=True)
class _Passed:
    at: float
    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal | None
    sector: str | None


_DuplicateKey = tuple[str, str, Decimal, Decimal | None]


class PreTradeLimits:
    """One version of the pre-trade limits and the recent orders its windows need.

    ``check`` raises LimitRejected for an order that breaks a limit; ``record`` tells the rate and
    duplicate windows about an order that passed. ``now`` is a monotonic clock in seconds
    (``time.monotonic()`` when left out). Not thread-safe: use it from one thread or event loop.
    """

    def __init__(self, version: int, limits: Iterable[Any] = ()) -> None:
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"limits_version must be an integer, got {type(version).__name__}")
        self.version = version
        enforced: list[Limit] = []
        # What is not enforced, and why: malformed limits (skipped) and kinds this SDK does not
        # know (ignored). A set_limits carrying either is answered ``partial``, never succeeded.
        self.skipped: list[str] = []
        self.ignored: list[str] = []
        for raw in limits:
            try:
                limit = raw if isinstance(raw, Limit) else _parse_limit(raw)
            except _Malformed as exc:
                self.skipped.append(str(exc))
                log.warning(
                    "engine: skipping a malformed pre-trade limit (version %d): %s", version, exc
                )
                continue
            if limit is not None:
                enforced.append(limit)
            else:
                self.ignored.append(
                    f"{str(raw.get('kind'))[:64]} (#{str(raw.get('id'))[:32]}): a kind this SDK "
                    "does not enforce"
                )
        self.limits: tuple[Limit, ...] = tuple(enforced)
        windows = [RATE_WINDOW_S for lim in self.limits if lim.kind == "max_order_rate"]
        windows += [float(lim.threshold) for lim in self.limits if lim.kind == "duplicate_order"]
        # How long a passed order matters to some limit here.
        self._horizon = max(windows, default=0.0)
        self._recent: deque[_Passed] = deque()
        self._rate: dict[int, deque[float]] = {}
        self._last_seen: dict[int, dict[_DuplicateKey, float]] = {}
        self._seen_order: dict[int, deque[tuple[float, _DuplicateKey]]] = {}
        for index, limit in enumerate(self.limits):
            if limit.kind == "max_order_rate":
                self._rate[index] = deque()
            elif limit.kind == "duplicate_order":
                self._last_seen[index] = {}
                self._seen_order[index] = deque()

    @classmethod
    def from_wire(cls, data: Any) -> PreTradeLimits:
        """From ``{"limits_version": int, "limits": [...]}`` (set_limits params, limits.json).

        Raises ValueError when the version or the list itself is missing or of the wrong type;
        single limits that cannot be read are skipped.
        """
        if not isinstance(data, Mapping):
            raise ValueError("limits must come as an object with limits_version and limits")
        version = data.get("limits_version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError("limits_version must be an integer")
        limits = data.get("limits")
        if not isinstance(limits, list):
            raise ValueError("limits must be a list")
        return cls(version, limits)

    def to_wire(self) -> dict[str, Any]:
        """The enforced limits in the shape ``from_wire`` reads."""
        return {"limits_version": self.version, "limits": [lim.to_wire() for lim in self.limits]}

    @property
    def not_enforced(self) -> list[str]:
        """Each limit of this version that ``check`` does not enforce, with why."""
        return [*self.skipped, *self.ignored]

    def __len__(self) -> int:
        return len(self.limits)

    def __repr__(self) -> str:
        return f"PreTradeLimits(version={self.version}, limits={len(self.limits)})"

    def take_history_from(self, previous: PreTradeLimits) -> None:
        """Count the orders that ``previous`` still remembers in this set's windows too.

        Used when one version replaces another, so that a resent or changed set of limits does
        not open a gap in the rate and duplicate windows. ``previous`` only kept orders for as
        long as its own limits needed them.
        """
        for order in previous._recent:
            self._remember(order)

    def check(
        self,
        symbol: str,
        side: Side,
        quantity: Number,
        price: Number | None = None,
        reference_price: Number | None = None,
        sector: str | None = None,
        now: float | None = None,
    ) -> None:
        """Raise LimitRejected if this order breaks a limit that applies to it.

        ``price`` is the order's limit price (None for a market order); ``reference_price`` the
        last or reference price of the symbol, if known.
        """
        if not self.limits:
            return
        at = time.monotonic() if now is None else now
        qty = to_decimal(quantity)
        order_price = _price(price)
        reference = _price(reference_price)
        for index, limit in enumerate(self.limits):
            if not limit.applies_to(symbol, sector):
                continue
            if qty is None:
                problem: str | None = f"quantity {quantity!r} is not a number"
            else:
                problem = self._problem(index, limit, symbol, side, qty, order_price, reference, at)
            if problem is not None:
                raise LimitRejected(
                    f"{limit.name}: {problem}", limit_id=limit.id, limit_kind=limit.kind
                )

    def record(
        self,
        symbol: str,
        side: Side,
        quantity: Number,
        price: Number | None = None,
        sector: str | None = None,
        now: float | None = None,
    ) -> None:
        """Remember an order that passed, for the rate and duplicate windows."""
        if self._horizon <= 0:
            return
        qty = to_decimal(quantity)
        if qty is None:
            return
        at = time.monotonic() if now is None else now
        self._remember(_Passed(at, symbol, side, qty, _price(price), sector))

    # --- internals -----------------------------------------------------------------------------

    def _problem(
        self,
        index: int,
        limit: Limit,
        symbol: str,
        side: Side,
        quantity: Decimal,
        price: Decimal | None,
        reference: Decimal | None,
        now: float,
    ) -> str | None:
        threshold = limit.threshold
        match limit.kind:
            case "max_order_qty":
                if quantity > threshold:
                    return f"quantity {_text(quantity)} exceeds {_text(threshold)}"
            case "max_order_notional":
                basis = price if price is not None else reference
                if basis is None:
                    return "no price to check notional"
                notional = quantity * basis
                if notional > threshold:
                    return f"notional {_text(notional)} exceeds {_text(threshold)}"
            case "price_collar_pct":
                if price is not None and reference is not None:
                    away = abs(price - reference) / reference * _HUNDRED
                    if away > threshold:
                        return (
                            f"price {_text(price)} is {_percent(away)}% from the reference "
                            f"{_text(reference)}, beyond {_text(threshold)}%"
                        )
            case "max_order_rate":
                times = self._rate[index]
                _expire(times, now - RATE_WINDOW_S)
                count = len(times) + 1
                if count > threshold:
                    return f"{count} orders within {RATE_WINDOW_S:g} s exceeds {_text(threshold)}"
            case "duplicate_order":
                window = float(threshold)
                self._expire_seen(index, now - window)
                key = (symbol, side, quantity, price)
                last = self._last_seen[index].get(key)
                if last is not None and now - last < window:
                    at_price = f" @ {_text(price)}" if price is not None else " at market"
                    return (
                        f"the same order ({symbol} {side} {_text(quantity)}{at_price}) passed "
                        f"{now - last:.3g} s ago, within {_text(threshold)} s"
                    )
        return None

    def _remember(self, order: _Passed) -> None:
        recent = self._recent
        recent.append(order)
        while recent and recent[0].at <= order.at - self._horizon:
            recent.popleft()
        for index, limit in enumerate(self.limits):
            if limit.kind not in _WINDOWED or not limit.applies_to(order.symbol, order.sector):
                continue
            if limit.kind == "max_order_rate":
                times = self._rate[index]
                times.append(order.at)
                _expire(times, order.at - RATE_WINDOW_S)
            else:
                key = (order.symbol, order.side, order.quantity, order.price)
                self._last_seen[index][key] = order.at
                self._seen_order[index].append((order.at, key))
                self._expire_seen(index, order.at - float(limit.threshold))

    def _expire_seen(self, index: int, before: float) -> None:
        seen, last_seen = self._seen_order[index], self._last_seen[index]
        while seen and seen[0][0] <= before:
            at, key = seen.popleft()
            if last_seen.get(key) == at:
                del last_seen[key]


def _expire(times: deque[float], before: float) -> None:
    while times and times[0] <= before:
        times.popleft()


def _percent(value: Decimal) -> str:
    # Enough digits to show why it is beyond the threshold, without a long tail.
    return f"{value:.4f}".rstrip("0").rstrip(".")
