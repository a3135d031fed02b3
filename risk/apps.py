from __future__ import annotations

from django.apps import AppConfig


class RiskConfig(AppConfig):
    name = "risk"
    verbose_name = "Risk limits"

    def ready(self) -> None:
        from controlplane import events
        from risk import evaluation, selectors

        # Post-trade limits are evaluated on every stored batch, before the engine's ack.
        events.batch_stored.connect(evaluation.on_batch_stored, dispatch_uid="risk-batch-stored")
        # The pre-trade limits an engine enforces come with its welcome.
        events.limits_wanted.connect(selectors.on_limits_wanted, dispatch_uid="risk-limits")
