"""A token bucket: how the engine gateway bounds the frames one engine may send.

Pure arithmetic on a monotonic clock, so that it is tested without a server.
"""

from __future__ import annotations

import time

# Refills are sums of floats: a sender exactly at the rate must not lose a token to rounding.
_ROUNDING = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; it starts full.

    An engine that keeps under ``rate`` frames a second is never refused, and one that was quiet
    may send ``burst`` frames at once (a replay after a reconnect, say).
    """

    __slots__ = ("_at", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, *, now: float | None = None) -> bool:
        """Take a token if there is one: True if the frame may go on."""
        self._refill(time.monotonic() if now is None else now)
        if self._tokens >= 1.0 - _ROUNDING:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def wait_s(self, *, now: float | None = None) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill(time.monotonic() if now is None else now)
        return max(0.0, (1.0 - _ROUNDING - self._tokens) / self.rate)
