"""One transport per kind of notification channel (``NotificationChannel.kind``)."""

from __future__ import annotations

from alerts.models import NotificationChannel
from alerts.transports.apprise import AppriseTransport
from alerts.transports.base import Transport, TransportError
from alerts.transports.email import EmailTransport

TRANSPORTS: dict[str, type[Transport]] = {
    NotificationChannel.Kind.EMAIL: EmailTransport,
    NotificationChannel.Kind.APPRISE: AppriseTransport,
}


def transport_for(channel: NotificationChannel) -> Transport:
    try:
        transport_class = TRANSPORTS[channel.kind]
    except KeyError:
        raise TransportError(f"unknown channel kind {channel.kind!r}", permanent=True) from None
    try:
        target = channel.target
    except ValueError as exc:  # encrypted with another key: nobody can fix that by retrying
        raise TransportError(str(exc), permanent=True) from exc
    return transport_class(target)


__all__ = ["TRANSPORTS", "Transport", "TransportError", "transport_for"]
