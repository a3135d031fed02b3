"""The real servers of tests/alerts/test_notifications.py, for every test of this folder."""

from __future__ import annotations

from tests.alerts.test_notifications import eager_celery, smtp, webhook

__all__ = ["eager_celery", "smtp", "webhook"]
