from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = "Alerts and notifications"

    def ready(self) -> None:
        from alerts import hooks
        from risk import events as risk_events

        risk_events.limit_disabled.connect(hooks.on_limit_disabled, dispatch_uid="alerts-limit")
        risk_events.limit_channels.connect(hooks.on_limit_channels, dispatch_uid="alerts-channels")
