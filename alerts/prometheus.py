"""/metrics in Prometheus text format, computed from the database at scrape time.

Several web and worker processes run at once, so process-local counters would each tell part of
the story; every cp_ figure here is read from PostgreSQL (and Redis) when Prometheus scrapes, in a
fixed number of queries whatever the size of the fleet. The process_ and python_ families are
prometheus_client's own and describe the web process that answered the scrape.
"""

from __future__ import annotations

import hmac
import platform
from collections.abc import Iterator
from importlib import metadata

import django
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from alerts.models import Alert, Notification, Severity
from controlplane import events, heartbeats
from controlplane.models import Command, Engine, TradingState
from controlplane.selectors import position_figures
from controlplane.trading_math import DEFAULT_ACCOUNT_CURRENCY
from risk.models import LimitState
from risk.selectors import limits_overview

# Upper bounds of the command latency buckets, in seconds: a connected engine answers within
# milliseconds; one that was offline when the command was issued answers when it comes back.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)

# Whether the engine was connected when the command was issued (Command.engine_connected).
CONNECTION_LABELS = {True: "connected", False: "offline", None: "unknown"}

_ACK = "extract(epoch FROM acknowledged_at - created_at)"
_DONE = "extract(epoch FROM completed_at - created_at)"
_RESULTED = ", ".join(
    f"'{status}'"
    for status in (Command.Status.SUCCEEDED, Command.Status.PARTIAL, Command.Status.FAILED)
)


def _histogram_columns(seconds: str, where: str) -> str:
    # Cumulative counts (le), then the count and the sum, each over the rows ``where`` holds.
    buckets = [f"count(*) FILTER (WHERE {where} AND {seconds} <= {le})" for le in LATENCY_BUCKETS]
    total = f"count(*) FILTER (WHERE {where})"
    sum_ = f"coalesce(sum(greatest({seconds}, 0)) FILTER (WHERE {where}), 0)"
    return ", ".join([*buckets, total, sum_])


# Every acknowledged command kept (commands are never deleted), aggregated in the database: the
# counts only grow as commands are answered.
# issued -> acknowledged: the engine's command_ack (or its result, which acknowledges too);
# issued -> done: a command_result (succeeded, partial, failed) from the engine, so a command
# failed at once by the control plane (an engine that cannot do the kind) is not counted.
_DONE_WHERE = f"completed_at IS NOT NULL AND status IN ({_RESULTED})"
_COMMAND_LATENCY_SQL = f"""
    SELECT kind, engine_connected,
           {_histogram_columns(_ACK, "TRUE")},
           {_histogram_columns(_DONE, _DONE_WHERE)}
      FROM {Command._meta.db_table}
     WHERE acknowledged_at IS NOT NULL
     GROUP BY kind, engine_connected
     ORDER BY kind, engine_connected
"""


class ControlPlaneCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield self._build_info()
        yield from self._engines()
        yield from self._command_latency()
        yield from self._limits()
        yield from self._alerts()
        yield from self._notifications()
        yield from self._receiver_failures()
        yield from self._task_runs()

    def _build_info(self) -> Metric:
        info = GaugeMetricFamily(
            "cp_build_info",
            "Always 1: the control plane's version and the Python and Django it runs on.",
            labels=["version", "python", "django"],
        )
        try:
            version = metadata.version("trading-controlplane")
        except metadata.PackageNotFoundError:  # run from a checkout never pip-installed
            version = "unknown"
        info.add_metric([version, platform.python_version(), django.get_version()], 1)
        return info

    def _engines(self) -> Iterator[Metric]:
        engines = list(
            Engine.objects.filter(is_active=True)
            .only(
                "name",
                "connected",
                "reported_state",
                "last_seq",
                "last_seen_at",
                "refused_events",
                "equity",
                "day_pnl",
                "drawdown_pct",
                "account_currency",
                "fx_rates",
            )
            .order_by("name")
        )
        positions = position_figures(engines) if engines else {}
        connected = GaugeMetricFamily(
            "cp_engines_connected", "Active engines with an open connection to the control plane."
        )
        connected.add_metric([], sum(1 for engine in engines if engine.connected))
        by_state = GaugeMetricFamily(
            "cp_engines",
            "Active engines by the trading state they last reported (unknown: never said).",
            labels=["state"],
        )
        counts = dict.fromkeys([*TradingState.values, "unknown"], 0)
        for engine in engines:
            state = engine.reported_state or "unknown"
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        last_seq = GaugeMetricFamily(
            "cp_engine_last_seq",
            "Highest event seq stored for the engine (events ingested since its journal began).",
            labels=["engine"],
        )
        last_seen = GaugeMetricFamily(
            "cp_engine_last_seen_timestamp_seconds",
            "Unix time the control plane last heard from the engine (absent: never heard).",
            labels=["engine"],
        )
        refused = CounterMetricFamily(
            "cp_engine_refused_events",
            "Events the control plane refused to store (each in the event log with its reason).",
            labels=["engine"],
        )
        equity = GaugeMetricFamily(
            "cp_engine_equity",
            "The engine's latest reported equity, in its account currency (absent: none yet).",
            labels=["engine", "currency"],
        )
        day_pnl = GaugeMetricFamily(
            "cp_engine_day_pnl",
            "The engine's P&L since the start of its trading day, in its account currency.",
            labels=["engine", "currency"],
        )
        drawdown = GaugeMetricFamily(
            "cp_engine_drawdown_ratio",
            "The engine's drawdown from its equity high-water mark (0.05: 5% below the peak).",
            labels=["engine"],
        )
        exposure = GaugeMetricFamily(
            "cp_engine_gross_exposure",
            "Sum of |quantity| x price x multiplier of the engine's positions in its account "
            "currency; absent while a position's currency has no FX rate reported.",
            labels=["engine", "currency"],
        )
        for engine in engines:
            name = engine.name
            currency = engine.account_currency or DEFAULT_ACCOUNT_CURRENCY
            last_seq.add_metric([name], engine.last_seq)
            refused.add_metric([name], engine.refused_events)
            if engine.last_seen_at is not None:
                last_seen.add_metric([name], engine.last_seen_at.timestamp())
            if engine.equity is not None:
                equity.add_metric([name, currency], float(engine.equity))
                day_pnl.add_metric([name, currency], float(engine.day_pnl))
                drawdown.add_metric([name], float(engine.drawdown_pct) / 100)
            figures = positions.get(engine.pk, {"gross": 0, "unconverted": []})
            # A partial sum would understate the exposure: unknown is left out, never 0.
            if not figures["unconverted"]:
                exposure.add_metric([name, currency], float(figures["gross"]))
        yield from (connected, by_state, last_seq, last_seen, refused)
        yield from (equity, day_pnl, drawdown, exposure)

    def _command_latency(self) -> Iterator[Metric]:
        labels = ["kind", "engine_at_issue"]
        acknowledged = HistogramMetricFamily(
            "cp_command_issued_to_acknowledged_seconds",
            "Time from issuing a command to the engine's acknowledgement, over every command "
            "kept; engine_at_issue: whether the engine was connected when it was issued.",
            labels=labels,
        )
        done = HistogramMetricFamily(
            "cp_command_issued_to_done_seconds",
            "Time from issuing a command to the engine's result (succeeded, partial or failed), "
            "over every command kept; engine_at_issue as for the acknowledgement.",
            labels=labels,
        )
        width = len(LATENCY_BUCKETS) + 2
        bounds = [*(repr(le) for le in LATENCY_BUCKETS), "+Inf"]
        with connection.cursor() as cursor:
            cursor.execute(_COMMAND_LATENCY_SQL)
            rows = cursor.fetchall()
        for kind, engine_connected, *figures in rows:
            label_values = [kind, CONNECTION_LABELS[engine_connected]]
            for family, part in ((acknowledged, figures[:width]), (done, figures[width:])):
                *cumulative, total, seconds = part
                if total:
                    buckets = list(zip(bounds, [*cumulative, total], strict=True))
                    family.add_metric(label_values, buckets, float(seconds))
        yield from (acknowledged, done)

    def _limits(self) -> Iterator[Metric]:
        labels = ["limit", "kind"]
        by_engine = GaugeMetricFamily(
            "cp_engine_limit_utilisation_ratio",
            "How much of an enabled risk limit's threshold the engine uses (1: at the limit), "
            "as the risk page shows it.",
            labels=["engine", *labels],
        )
        by_subject = GaugeMetricFamily(
            "cp_portfolio_limit_utilisation_ratio",
            "How much of an enabled portfolio limit's threshold its subject (fleet, tag, engine, "
            "pair) uses (1: at the limit).",
            labels=["subject", *labels],
        )
        for row in limits_overview():
            limit = row["limit"]
            if not limit.enabled:
                continue
            for state in row["states"]:
                ratio = state.utilisation / 100
                if isinstance(state, LimitState):
                    if state.engine.is_active:
                        by_engine.add_metric([state.label, str(limit.pk), limit.kind], ratio)
                else:
                    by_subject.add_metric([state.label, str(limit.pk), limit.kind], ratio)
        yield from (by_engine, by_subject)

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

    def _task_runs(self) -> Iterator[Metric]:
        last_run = GaugeMetricFamily(
            "cp_task_last_run_timestamp_seconds",
            "Unix time each periodic task last ran to the end; controlplane.tasks.heartbeat runs "
            "every 15 s, so its age is how long beat, the broker or the workers have been down.",
            labels=["task"],
        )
        try:
            runs = heartbeats.last_runs()
        except Exception:  # Redis away: the figures are unknown, the scrape still answers
            runs = {}
        for task, at in sorted(runs.items()):
            last_run.add_metric([task], at)
        yield last_run


# Built once, when the module is first imported: the process collectors register here and only
# here (prometheus_client's default registry is not used, so nothing is registered twice).
registry = CollectorRegistry(auto_describe=False)
registry.register(ControlPlaneCollector())
ProcessCollector(registry=registry)
PlatformCollector(registry=registry)


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
