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
        from alerts import events as alert_events
        from alerts import runbooks as alert_runbooks
        from controlplane import events
        from journal import incidents, runbooks

        # Incidents: a kill opens one; what is issued to its engines, their answers and their
        # HALTED engines' batches tick its checklist; their alerts join it.
        events.commands_issued.connect(
            incidents.on_commands_issued, dispatch_uid="journal-incidents-issued"
        )
        events.command_answered.connect(
            incidents.on_command_answered, dispatch_uid="journal-incidents-answered"
        )
        events.batch_stored.connect(
            incidents.on_batch_stored, dispatch_uid="journal-incidents-batch"
        )
        alert_events.alert_changed.connect(
            incidents.on_alert_changed, dispatch_uid="journal-incidents-alerts"
        )

        # The alerts (a layer below) show each alert's runbook: the toast, the page, the message.
        alert_runbooks.runbooks_from(runbooks.runbooks_for_alerts)
