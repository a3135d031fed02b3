"""Signals the risk app sends; higher layers (alerts) connect to them in their AppConfig.ready.

Sent after the commit of the change they announce.
"""

from __future__ import annotations

import logging

from django.dispatch import Signal

log = logging.getLogger(__name__)

# A limit was switched off (``limit_id``, ``actor_label``): whatever it raised is over.
limit_disabled = Signal()


def announce_limit_disabled(limit_id: int, actor_label: str) -> None:
    """Tell the receivers; one that fails is logged and costs the others nothing."""
    answers = limit_disabled.send_robust(sender=None, limit_id=limit_id, actor_label=actor_label)
    for receiver, answer in answers:
        if isinstance(answer, Exception):
            log.error("limit #%s disabled: %s failed: %r", limit_id, receiver, answer)


# Asked, not announced: receivers answer how many enabled notification channels the alerts of
# risk limits reach. No receiver, or every receiver answering 0, and a limit's warnings and
# breaches notify nobody: the admin says so beside each limit.
limit_channels = Signal()


def limit_channel_count() -> int | None:
    """How many channels risk-limit alerts reach; None when nothing answers (no alerting)."""
    answers = [answer for _, answer in limit_channels.send_robust(sender=None)]
    counts = [answer for answer in answers if isinstance(answer, int)]
    return sum(counts) if counts else None
