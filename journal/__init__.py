"""The desk's operations journal: incidents with their rollback checklist and post-mortem, the
trading log, runbooks, emergency contacts and review checklists (docs/operations.md).

A layer above going live (a red line's kill opens an incident) and below the dashboard.
"""
