"""A lease in Redis that one beat process holds at a time: only its holder sends the schedule.

Two beats started against the same Redis and database would each send every due task, so every
sweep would run twice. Each beat tries ``SET key token NX PX ttl`` on every pass of its loop; the
one that got it renews the lease (only while the key still holds its own token) at least every
third of the TTL, and deletes it on a clean exit. The others keep ticking without sending, and
one of them takes over at most ``ttl`` plus one retry interval after the holder died.
"""

from __future__ import annotations

import logging
import secrets
import socket
from dataclasses import dataclass, field

import redis

log = logging.getLogger(__name__)

# Renew, or release, only a lease that is still ours: another beat may hold the key by now.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def _token() -> str:
    # Who holds it, readable with GET by whoever wonders; the random part makes it unique.
    return f"{socket.gethostname()}:{secrets.token_hex(8)}"


@dataclass
class BeatLock:
    client: redis.Redis
    key: str
    ttl_s: float
    token: str = field(default_factory=_token)
    held: bool = False
    _waiting_told: bool = field(default=False, repr=False)

    @property
    def retry_interval_s(self) -> float:
        """How often the holder renews and the others try: three chances within one TTL."""
        return self.ttl_s / 3

    def hold(self) -> bool:
        """Renew the lease if held, else try to take it; whether this process holds it now.

        A Redis error counts as not holding: a beat that cannot reach Redis cannot reach the
        broker either, and must not go on sending once its lease may have passed to another."""
        ttl_ms = int(self.ttl_s * 1000)
        was_held = self.held
        try:
            if self.held:
                self.held = bool(self.client.eval(_RENEW, 1, self.key, self.token, ttl_ms))
            if not self.held:
                self.held = bool(self.client.set(self.key, self.token, nx=True, px=ttl_ms))
        except redis.RedisError as exc:
            log.warning("beat lock: Redis unreachable (%s); not sending", exc)
            self.held = False
        if self.held and not was_held:
            log.info("beat lock %s taken (%s): this beat sends the schedule", self.key, self.token)
        elif was_held and not self.held:
            log.warning("beat lock %s lost: this beat stops sending", self.key)
        elif not self.held and not self._waiting_told:
            log.info("beat lock %s held by another beat: this one waits", self.key)
        self._waiting_told = not self.held
        return self.held

    def holder(self) -> str | None:
        """The token of the beat holding the lease, if any (None with Redis away too)."""
        try:
            value = self.client.get(self.key)
        except redis.RedisError:
            return None
        return value.decode() if value is not None else None

    def release(self) -> None:
        """Give the lease up (if still ours), so that another beat takes over at once."""
        if not self.held:
            return
        self.held = False
        try:
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as exc:  # it expires by itself within the TTL
            log.warning("beat lock: not released (%s); it expires in %.0fs", exc, self.ttl_s)
