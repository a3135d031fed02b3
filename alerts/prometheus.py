"""/metrics in Prometheus text format, computed from the database at scrape time.

Several web and worker processes run at once, so process-local counters would each tell part of
the story; every figure here is read from PostgreSQL when Prometheus scrapes, in four queries
whatever the size of the fleet.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from alerts.models import Alert, Notification, Severity
from controlplane import events
from controlplane.models import Command, Engine, TradingState

COMMAND_LATENCY_WINDOW = timedelta(hours=1)
QUANTILES = ("0.5", "0.99")

_COMMAND_LATENCY_SQL = f"""
    SELECT kind, count(*),
           percentile_cont(ARRAY[{", ".join(QUANTILES)}]) WITHIN GROUP (
               ORDER BY extract(epoch FROM acknowledged_at - created_at))
    FROM {Command._meta.db_table}
    WHERE created_at >= %s AND acknowledged_at IS NOT NULL
    GROUP BY kind
"""


class ControlPlaneCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield from self._engines(now)
        yield from self._command_latency(now)
        yield from self._alerts()
        yield from self._notifications()
        yield from self._receiver_failures()

    def _engines(self, now: datetime) -> Iterator[Metric]:
        rows = list(
            Engine.objects.filter(is_active=True).values_list(
                "name", "connected", "reported_state", "last_seq", "last_seen_at", "refused_events"
            )
        )
        connected = GaugeMetricFamily(
            "cp_engines_connected", "Active engines with an open connection to the control plane."
        )
        connected.add_metric([], sum(1 for row in rows if row[1]))
        by_state = GaugeMetricFamily(
            "cp_engines",
            "Active engines by the trading state they last reported (unknown: never said).",
            labels=["state"],
        )
        counts = dict.fromkeys([*TradingState.values, "unknown"], 0)
        for row in rows:
            counts[row[2] or "unknown"] = counts.get(row[2] or "unknown", 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        last_seq = GaugeMetricFamily(
            "cp_engine_last_seq",
            "Highest event seq stored for the engine (events ingested since its journal began).",
            labels=["engine"],
        )
        lag = GaugeMetricFamily(
            "cp_engine_ingest_lag_seconds",
            "Seconds since the control plane last heard from the engine.",
            labels=["engine"],
        )
        refused = CounterMetricFamily(
            "cp_engine_refused_events",
            "Events the control plane refused to store (each in the event log with its reason).",
            labels=["engine"],
        )
        for name, _, _, seq, seen_at, refused_count in rows:
            last_seq.add_metric([name], seq)
            refused.add_metric([name], refused_count)
            if seen_at is not None:
                lag.add_metric([name], max((now - seen_at).total_seconds(), 0.0))
        yield from (connected, by_state, last_seq, lag, refused)

    def _command_latency(self, now: datetime) -> Iterator[Metric]:
        latency = GaugeMetricFamily(
            "cp_command_latency_seconds",
            "Command issue-to-acknowledgement time over the last hour, by kind and quantile.",
            labels=["kind", "quantile"],
        )
        samples = GaugeMetricFamily(
            "cp_command_latency_samples",
            "Acknowledged commands the latency quantiles are computed from (last hour).",
            labels=["kind"],
        )
        with connection.cursor() as cursor:
            cursor.execute(_COMMAND_LATENCY_SQL, [now - COMMAND_LATENCY_WINDOW])
            for kind, count, values in cursor.fetchall():
                samples.add_metric([kind], count)
                for quantile, value in zip(QUANTILES, values, strict=True):
                    latency.add_metric([kind, quantile], float(value))
        yield from (latency, samples)

    def _alerts(self) -> Iterator[Metric]:
        firing = GaugeMetricFamily(
            "cp_alerts_firing", "Alerts firing now, by severity.", labels=["severity"]
        )
        counts = dict.fromkeys(Severity.values, 0)
        rows = (
            Alert.objects.filter(state=Alert.State.FIRING)
            .values_list("severity")
            .annotate(n=Count("pk"))
            .order_by()
        )
        for severity, count in rows:
            counts[severity] = count
        for severity, count in counts.items():
            firing.add_metric([severity], count)
        yield firing

    def _notifications(self) -> Iterator[Metric]:
        totals = Notification.objects.aggregate(
            failed=Count("pk", filter=Q(status=Notification.Status.FAILED)),
            pending=Count(
                "pk",
                filter=Q(status__in=[Notification.Status.PENDING, Notification.Status.SENDING]),
            ),
        )
        failed = CounterMetricFamily(
            "cp_notifications_failed",
            "Notifications given up on (permanent error, or out of attempts), as stored.",
        )
        failed.add_metric([], totals["failed"])
        pending = GaugeMetricFamily(
            "cp_notifications_pending", "Notifications not delivered yet (pending or sending)."
        )
        pending.add_metric([], totals["pending"])
        yield from (failed, pending)

    def _receiver_failures(self) -> Iterator[Metric]:
        failures = CounterMetricFamily(
            "cp_event_receiver_failures",
            "Receivers of a domain event (controlplane.events) that raised, by event and "
            "receiver; what the event announced was stored all the same.",
            labels=["event", "receiver"],
        )
        try:
            counts = events.receiver_failures()
        except Exception:  # Redis away: the figure is unknown, the scrape still answers
            counts = {}
        for (event, receiver), count in sorted(counts.items()):
            failures.add_metric([event, receiver], count)
        yield failures


registry = CollectorRegistry(auto_describe=False)
registry.register(ControlPlaneCollector())


def _authorised(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        # Settings refuse to start production with neither; this holds whatever they say.
        return settings.METRICS_PUBLIC
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


@login_not_required
@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    if not _authorised(request):
        message = "A valid bearer token is required.\n"
        if not settings.METRICS_TOKEN:
            message = (
                "/metrics is closed: set METRICS_TOKEN (then send it as a bearer token), "
                "or METRICS_PUBLIC=true to open it.\n"
            )
        response = HttpResponse(message, status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
