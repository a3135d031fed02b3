from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"

    def ready(self) -> None:
        from alerts import rule_metrics
        from dashboard.reports import baselines

        # The alert rule on backtest divergence measures it with the reports' baselines.
        rule_metrics.measure_divergence_with(baselines.divergence_pct)
