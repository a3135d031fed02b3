"""Signals the risk app sends; higher layers (alerts) connect to them in their AppConfig.ready.

Sent after the commit of the change they announce.
"""

from __future__ import annotations

from controlplane.events import DomainEvent

# A limit's warning, breach or clearing was recorded (``event_id``: the RiskEvent). Sent after
# its commit; the alerting side turns it into an alert, or resolves one.
limit_event_raised = DomainEvent("limit_event_raised")

# A limit was switched off (``limit_id``, ``actor_label``): whatever it raised is over.
limit_disabled = DomainEvent("limit_disabled")


# Asked, not announced: receivers answer how many enabled notification channels the alerts of
# risk limits reach. No receiver, or every receiver answering 0, and a limit's warnings and
# breaches notify nobody: the admin says so beside each limit.
limit_channels = DomainEvent("limit_channels")


def limit_channel_count() -> int | None:
    """How many channels risk-limit alerts reach; None when nothing answers (no alerting)."""
    answers = [answer for _, answer in limit_channels.send_robust(sender=None)]
    counts = [answer for answer in answers if isinstance(answer, int)]
    return sum(counts) if counts else None
