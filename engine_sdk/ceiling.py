"""The capital ceiling: the most an engine at a real-money stage may hold, gross.

The control plane sends it in ``welcome`` and ``set_limits`` (``capital_ceiling``, a decimal
string in the account's currency; null when the engine's stage sets none, docs/going-live.md).
``check_order`` refuses a new order that would take the engine's gross exposure above it:

    exposure = sum over symbols of abs(position) x price

where a symbol's position is the one the engine passes to ``check_order`` for the order's own
symbol, and for the others the last ``position`` event the engine emitted; its price is the
latest known of: the order's limit price or reference price given to ``check_order``, else the
position event's average price. An order that does not grow its symbol's position away from
zero always passes (it cannot raise the exposure); one that does, on a symbol with no known
price, is refused, since its exposure cannot be measured.

The server checks the same ceiling after trades from the positions it stores (the risk limit
``capital_ceiling_pct``), like every other limit: this check keeps the engine under it, that one
catches what slipped past (a price move, an engine that does not call ``check_order``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from engine_sdk.limits import LimitRejected
from engine_sdk.protocol import MAX_DECIMAL_ABS, Side

__all__ = ["KIND", "CapitalCeiling", "ceiling_from", "ceiling_text", "parse_ceiling"]

# The limit_kind of the LimitRejected it raises.
KIND: Final = "capital_ceiling"
_ZERO: Final = Decimal(0)


def parse_ceiling(value: Any) -> Decimal | None:
    """A ceiling from the wire: None for null; raises ValueError naming what is wrong."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"capital_ceiling must be a decimal string or null, got {value!r:.64}")
    try:
        ceiling = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"capital_ceiling {value!r:.64} is not a decimal") from None
    if not ceiling.is_finite() or ceiling < 0 or ceiling >= MAX_DECIMAL_ABS:
        raise ValueError(f"capital_ceiling {value!r:.64} must be a finite decimal >= 0")
    return ceiling


class CapitalCeiling:
    """The ceiling in force and what the exposure is measured on; safe from any thread."""

    def __init__(self, ceiling: Decimal | None = None) -> None:
        self.ceiling = ceiling
        # symbol -> signed quantity, from the engine's position events and check_order calls.
        self._positions: dict[str, Decimal] = {}
        # symbol -> the latest price known for it.
        self._prices: dict[str, Decimal] = {}
        self._lock = threading.Lock()

    def track_position(self, symbol: str, quantity: Decimal, avg_price: Decimal | None) -> None:
        """A position event the engine emitted: its quantity, and its price if none is known."""
        with self._lock:
            self._positions[symbol] = quantity
            if avg_price is not None and avg_price > 0 and symbol not in self._prices:
                self._prices[symbol] = avg_price

    def exposure(self) -> Decimal:
        """The gross exposure of the tracked positions at their known prices."""
        with self._lock:
            return self._exposure(None)

    def _exposure(self, skip: str | None) -> Decimal:
        total = _ZERO
        for symbol, quantity in self._positions.items():
            if symbol != skip and quantity:
                total += abs(quantity) * self._prices.get(symbol, _ZERO)
        return total

    def check(
        self,
        symbol: str,
        side: Side,
        quantity: Decimal,
        current_position: Decimal,
        price: Decimal | None,
    ) -> None:
        """Raise LimitRejected if this order would take the gross exposure above the ceiling.

        ``price`` is the order's limit price or, for a market order, the reference price.
        """
        with self._lock:
            self._positions[symbol] = current_position
            if price is not None and price > 0:
                self._prices[symbol] = price
            ceiling = self.ceiling
            if ceiling is None:
                return
            after = current_position + quantity if side == "buy" else current_position - quantity
            shrinks = abs(after) <= abs(current_position)
            if shrinks and (after == 0 or (after > 0) == (current_position > 0)):
                return  # it shrinks the position without crossing zero: never more exposure
            known = self._prices.get(symbol)
            if known is None:
                raise LimitRejected(
                    f"capital ceiling {ceiling}: no price for {symbol} to measure this order's "
                    "exposure (give the order a price or a reference price)",
                    limit_id=None,
                    limit_kind=KIND,
                )
            total = self._exposure(symbol) + abs(after) * known
            if total > ceiling:
                raise LimitRejected(
                    f"capital ceiling {ceiling}: gross exposure would be {total:.2f} after this "
                    f"order (now {self._exposure(None):.2f})",
                    limit_id=None,
                    limit_kind=KIND,
                )


def ceiling_text(ceiling: Decimal | None) -> str | None:
    """A ceiling as the wire and limits.json carry it: a decimal string, or None."""
    return None if ceiling is None else str(ceiling)


def ceiling_from(params: Mapping[str, Any]) -> tuple[bool, Decimal | None]:
    """Whether ``params`` (a set_limits' or a saved file's) say a ceiling, and which."""
    if "capital_ceiling" not in params:
        return False, None
    return True, parse_ceiling(params["capital_ceiling"])
