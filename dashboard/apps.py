from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from controlplane import events
        from dashboard import live

        # The operators' screens show what changed of these engines at once (a command's new
        # desired state, an ended pause), not when the engines next report.
        events.engines_changed.connect(
            lambda sender, engine_ids, **kwargs: live.publish_rows_now(engine_ids),
            weak=False,
            dispatch_uid="dashboard-engines-changed",
        )
