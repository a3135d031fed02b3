"""Alert changes to the open browsers: a toast on every page, the badge and the fleet row."""

from __future__ import annotations

import logging

from alerts.models import Alert
from controlplane import hub
from dashboard import live as dashboard_live

log = logging.getLogger(__name__)


def alert_payload(alert: Alert) -> dict[str, object]:
    return {
        "id": alert.pk,
        "state": alert.state,
        "severity": alert.severity,
        "summary": alert.summary,
        "engine": alert.engine.name if alert.engine else None,
        "acknowledged_by": alert.acknowledged_by_label or None,
    }


def alert_changed(alert_id: int) -> None:
    alert = Alert.objects.select_related("engine").filter(pk=alert_id).first()
    if alert is None:
        return
    update = {"type": "live.alert", "topic": dashboard_live.ALERTS, "alert": alert_payload(alert)}
    try:
        hub.publish(dashboard_live.HUB, dashboard_live.encode([update]))
        if alert.engine_id is not None:
            dashboard_live.publish_rows_now([alert.engine_id])
    except Exception:  # the alert is stored; a browser that misses this resyncs later
        log.exception("alert %s: live update failed", alert_id)
