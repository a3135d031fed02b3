"""The desk's operations journal: incidents with their rollback checklist and post-mortem, the
trading log, runbooks, emergency contacts and review checklists (docs/operations.md).

A layer above going live (a red line's kill opens an incident) and below the dashboard.
"""

from __future__ import annotations

from django.apps import AppConfig


class JournalConfig(AppConfig):
    name = "journal"
    verbose_name = "Operations journal"

    def ready(self) -> None:
        from alerts import runbooks as alert_runbooks
        from journal import runbooks

        # The alerts (a layer below) show each alert's runbook: the toast, the page, the message.
        alert_runbooks.runbooks_from(runbooks.runbooks_for_alerts)
