from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = "Alerts and notifications"

    def ready(self) -> None:
        # The evaluation tasks live beside the notification tasks (alerts.tasks).
        from alerts import jobs  # noqa: F401
