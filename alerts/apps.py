from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = "Alerts and notifications"

    def ready(self) -> None:
        from alerts import hooks
        from controlplane import events
        from risk import events as risk_events

        # After risk's receiver (risk is loaded first): a batch's breach is recorded before the
        # rules on it are scheduled.
        events.batch_stored.connect(hooks.on_batch_stored, dispatch_uid="alerts-batch-stored")
        risk_events.limit_event_raised.connect(
            hooks.on_limit_event_raised, dispatch_uid="alerts-limit-event"
        )
        events.stage_violated.connect(hooks.on_stage_violated, dispatch_uid="alerts-stage")
        events.capability_missing.connect(
            hooks.on_capability_missing, dispatch_uid="alerts-capability"
        )
        events.statement_reconciled.connect(
            hooks.on_statement_reconciled, dispatch_uid="alerts-statement"
        )
        risk_events.limit_disabled.connect(hooks.on_limit_disabled, dispatch_uid="alerts-limit")
        risk_events.limit_channels.connect(hooks.on_limit_channels, dispatch_uid="alerts-channels")
