"""The real servers of tests/alerts/test_notifications.py, and an e-mail channel, for every test
of this folder."""

from __future__ import annotations

import pytest

from alerts.models import NotificationChannel
from tests.alerts.test_notifications import eager_celery, smtp, webhook

__all__ = ["eager_celery", "smtp", "webhook"]


@pytest.fixture
def channel() -> NotificationChannel:
    channel = NotificationChannel(name="desk-mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    return channel
