"""The runbook an alert points at, asked of whoever keeps runbooks (the journal, a layer above).

The alerts layer does not import the journal: the journal's app hands its lookup in here
(``runbooks_from``) when it is ready. Without one, or when it fails, an alert simply names no
runbook: the toast, the page and the notification still go out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from alerts.models import Alert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunbookRef:
    title: str
    url: str  # a path on this site, e.g. /runbooks/broker-api-failure/


Lookup = Callable[[Sequence[Alert]], Mapping[int, RunbookRef]]
_lookup: Lookup | None = None


def runbooks_from(lookup: Lookup | None) -> None:
    """Set the function that finds each alert's runbook (by alert id)."""
    global _lookup
    _lookup = lookup


def runbooks_of(alerts: Sequence[Alert]) -> Mapping[int, RunbookRef]:
    """The runbook of each of ``alerts`` that has one, by alert id."""
    if _lookup is None or not alerts:
        return {}
    try:
        return _lookup(alerts)
    except Exception:
        # What the runbook would add is help, not the alert: never lose the alert for it.
        log.warning("runbooks of alerts %s not found", [a.pk for a in alerts], exc_info=True)
        return {}


def runbook_of(alert: Alert) -> RunbookRef | None:
    return runbooks_of([alert]).get(alert.pk)
