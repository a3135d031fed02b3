from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from alerts import events as alert_events
        from alerts import rule_metrics
        from controlplane import events
        from dashboard import live
        from dashboard.reports import baselines
        from dashboard.reports import golive as golive_baselines
        from golive import gates

        # What the screens show follows the domain's events (dashboard.live).
        events.engines_changed.connect(live.on_engines_changed, dispatch_uid="dashboard-engines")
        events.command_answered.connect(live.on_engines_changed, dispatch_uid="dashboard-answers")
        alert_events.alert_changed.connect(live.on_alert_changed, dispatch_uid="dashboard-alerts")
        # The alert rule on backtest divergence measures it with the reports' baselines.
        rule_metrics.measure_divergence_with(baselines.divergence_pct)
        # The go-live gates compare engines with their baselines, read by the reports.
        gates.baselines_from(golive_baselines.baseline_figures)
