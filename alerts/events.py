"""Signals the alerts app sends; the dashboard connects to them in its AppConfig.ready."""

from __future__ import annotations

from controlplane.events import DomainEvent

# An alert was raised, escalated, acknowledged, resolved or closed (``alert_id``). Sent after the
# commit of the change: the open browsers get a toast, the badge and the engine's fleet row.
alert_changed = DomainEvent("alert_changed")
