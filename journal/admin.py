from __future__ import annotations

from journal import incident_admin  # noqa: F401  (registers incidents and emergency contacts)
