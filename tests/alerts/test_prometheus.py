"""/metrics: figures read from the database at scrape time, in Prometheus text format."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from alerts.models import Alert, Notification, NotificationChannel
from controlplane import events, heartbeats, hub, tasks
from controlplane.ingest.store import IngestResult
from controlplane.models import Command, Engine, Instrument, Position
from risk.models import LimitKind, LimitState, PortfolioLimitState, RiskLimit

pytestmark = pytest.mark.django_db


def scrape(client: Client, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


Labels = tuple[tuple[str, str], ...]


def bucket(name: str, kind: str, at_issue: str, le: str) -> tuple[str, Labels]:
    labels = (("engine_at_issue", at_issue), ("kind", kind), ("le", le))
    return (f"{name}_bucket", labels)


HEARTBEAT = "controlplane.tasks.heartbeat"
ACK = "cp_command_issued_to_acknowledged_seconds"
DONE = "cp_command_issued_to_done_seconds"


@pytest.fixture
def fleet(make_engine: Any) -> None:
    now = timezone.now()
    alpha, beta, gamma = (make_engine(name)[0] for name in ("alpha", "beta", "gamma"))
    Engine.objects.filter(pk=alpha.pk).update(
        connected=True,
        reported_state="ACTIVE",
        last_seq=1200,
        last_seen_at=now - timedelta(seconds=2),
        equity=Decimal("100000"),
        day_pnl=Decimal("-250.5"),
        drawdown_pct=Decimal("2.5"),
        fx_rates={"EUR": 1.1},
    )
    Engine.objects.filter(pk=beta.pk).update(
        connected=True,
        reported_state="PAUSED",
        last_seq=40,
        last_seen_at=now - timedelta(seconds=30),
        equity=Decimal("5000000"),
        account_currency="JPY",
    )
    usd, eur = (
        Instrument.objects.create(symbol="AAPL", currency="USD"),
        Instrument.objects.create(symbol="SAP", currency="EUR", multiplier=Decimal(2)),
    )
    Position.objects.create(
        engine=alpha, instrument=usd, quantity=-10, avg_price=90, last_price=100
    )
    Position.objects.create(engine=alpha, instrument=eur, quantity=5, avg_price=20)
    # beta accounts in yen and never reported a dollar rate: its exposure is unknown.
    Position.objects.create(engine=beta, instrument=usd, quantity=1, avg_price=100)

    # Pauses to a connected engine acknowledged in 0.1 s .. 1.0 s and done 1 s later; one issued
    # while it was offline, acknowledged a minute later; one kill to an offline engine at 120 s
    # and never done; one command never acknowledged; one issued before the connection was kept.
    def command(engine: Engine, kind: str, connected: bool | None, ack: float | None) -> None:
        made = Command.objects.create(
            engine=engine, kind=kind, reason="t", issued_by_label="t", engine_connected=connected
        )
        if ack is None:
            return
        acknowledged_at = made.created_at + timedelta(seconds=ack)
        done = {}
        if connected:
            done = {"status": "succeeded", "completed_at": acknowledged_at + timedelta(seconds=1)}
        Command.objects.filter(pk=made.pk).update(acknowledged_at=acknowledged_at, **done)

    for tenths in range(1, 11):
        command(alpha, "pause", True, tenths / 10)
    command(alpha, "pause", False, 60)
    command(beta, "kill", False, 120)
    command(gamma, "pause", True, None)
    command(beta, "resume", None, 0.02)

    daily_loss = RiskLimit.objects.create(kind=LimitKind.MAX_DAILY_LOSS, threshold=1000)
    LimitState.objects.create(limit=daily_loss, engine=alpha, utilisation=42.0)
    off = RiskLimit.objects.create(kind=LimitKind.MAX_DRAWDOWN_PCT, threshold=10, enabled=False)
    LimitState.objects.create(limit=off, engine=alpha, utilisation=90.0)
    fleet_loss = RiskLimit.objects.create(kind=LimitKind.PORTFOLIO_DAILY_LOSS_PCT, threshold=5)
    PortfolioLimitState.objects.create(limit=fleet_loss, subject="fleet", utilisation=80.0)

    for severity, state in (
        ("critical", "firing"),
        ("critical", "firing"),
        ("warning", "firing"),
        ("info", "resolved"),
    ):
        Alert.objects.create(
            engine=None,
            source=f"test-{Alert.objects.count()}",
            state=state,
            severity=severity,
            summary="s",
        )
    channel = NotificationChannel(name="mail", kind="email")
    channel.target = "desk@example.com"
    channel.save()
    for i, status in enumerate(("failed", "failed", "pending", "sending", "sent")):
        Notification.objects.create(
            key=str(i), channel=channel, event="firing", subject="s", body="b", status=status
        )


@pytest.fixture
def failing_receiver() -> Iterator[None]:
    """A receiver of batch_stored that raises: counted in cp_event_receiver_failures_total."""

    def explode(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver down")

    hub.sync_client().delete(events.failures_key())
    events.batch_stored.connect(explode, dispatch_uid="test-metrics-explode")
    yield
    events.batch_stored.disconnect(dispatch_uid="test-metrics-explode")
    hub.sync_client().delete(events.failures_key())


# engines, positions, commands, limits (three: the risk page's selector), alerts, notifications
SCRAPE_QUERIES = 8


def test_it_exposes_the_fleet_commands_alerts_and_deliveries(
    client: Client, fleet: None, django_assert_max_num_queries: Any
) -> None:
    before = timezone.now()
    with django_assert_max_num_queries(SCRAPE_QUERIES):
        samples = scrape(client)

    assert samples[("cp_engines_connected", ())] == 2
    assert samples[("cp_engines", (("state", "ACTIVE"),))] == 1
    assert samples[("cp_engines", (("state", "PAUSED"),))] == 1
    assert samples[("cp_engines", (("state", "HALTED"),))] == 0
    assert samples[("cp_engines", (("state", "unknown"),))] == 1
    assert samples[("cp_engine_last_seq", (("engine", "alpha"),))] == 1200
    assert samples[("cp_engine_last_seq", (("engine", "gamma"),))] == 0
    seen = "cp_engine_last_seen_timestamp_seconds"
    alpha_seen = samples[(seen, (("engine", "alpha"),))]
    assert alpha_seen == pytest.approx((before - timedelta(seconds=2)).timestamp(), abs=5)
    assert samples[(seen, (("engine", "beta"),))] == pytest.approx(alpha_seen - 28, abs=1)
    assert (seen, (("engine", "gamma"),)) not in samples  # never seen

    assert samples[("cp_engine_equity", (("currency", "USD"), ("engine", "alpha")))] == 100000
    assert samples[("cp_engine_equity", (("currency", "JPY"), ("engine", "beta")))] == 5000000
    assert samples[("cp_engine_day_pnl", (("currency", "USD"), ("engine", "alpha")))] == -250.5
    assert samples[("cp_engine_drawdown_ratio", (("engine", "alpha"),))] == 0.025
    # gamma has no equity yet: no equity, P&L or drawdown rather than zeros.
    money = ("cp_engine_equity", "cp_engine_day_pnl", "cp_engine_drawdown_ratio")
    assert not [key for key in samples if key[0] in money and "gamma" in str(key)]
    exposure = "cp_engine_gross_exposure"
    # |-10| x 100 (last price) in dollars + 5 x 20 (average price) x 2 in euros at 1.1
    assert samples[(exposure, (("currency", "USD"), ("engine", "alpha")))] == pytest.approx(1220)
    assert samples[(exposure, (("currency", "USD"), ("engine", "gamma")))] == 0  # no positions
    assert not [key for key in samples if key[0] == exposure and "beta" in str(key)]  # unknown

    assert samples[bucket(ACK, "pause", "connected", "0.5")] == 5
    assert samples[bucket(ACK, "pause", "connected", "1.0")] == 10
    assert samples[bucket(ACK, "pause", "connected", "+Inf")] == 10
    assert samples[(f"{ACK}_count", (("engine_at_issue", "connected"), ("kind", "pause")))] == 10
    assert samples[(f"{ACK}_sum", (("engine_at_issue", "connected"), ("kind", "pause")))] == (
        pytest.approx(5.5)
    )
    assert samples[bucket(ACK, "pause", "offline", "30.0")] == 0
    assert samples[bucket(ACK, "pause", "offline", "60.0")] == 1
    assert samples[bucket(ACK, "kill", "offline", "60.0")] == 0
    assert samples[bucket(ACK, "kill", "offline", "300.0")] == 1
    assert samples[bucket(ACK, "resume", "unknown", "0.025")] == 1
    assert samples[bucket(DONE, "pause", "connected", "1.0")] == 0
    assert samples[bucket(DONE, "pause", "connected", "2.5")] == 10
    assert not [key for key in samples if key[0].startswith(DONE) and "kill" in str(key)]

    ratio = "cp_engine_limit_utilisation_ratio"
    [(key, value)] = [(key, value) for key, value in samples.items() if key[0] == ratio]
    labels = dict(key[1])
    assert (labels["engine"], labels["kind"]) == ("alpha", "max_daily_loss")
    assert labels["limit"] == str(RiskLimit.objects.get(kind="max_daily_loss").pk)
    assert value == pytest.approx(0.42)  # the disabled limit is left out
    portfolio = "cp_portfolio_limit_utilisation_ratio"
    [(key, value)] = [(key, value) for key, value in samples.items() if key[0] == portfolio]
    assert dict(key[1])["subject"] == "fleet" and value == pytest.approx(0.8)

    assert samples[("cp_alerts_firing", (("severity", "critical"),))] == 2
    assert samples[("cp_alerts_firing", (("severity", "warning"),))] == 1
    assert samples[("cp_alerts_firing", (("severity", "info"),))] == 0
    assert samples[("cp_notifications_failed_total", ())] == 2
    assert samples[("cp_notifications_pending", ())] == 2

    [(key, value)] = [(key, value) for key, value in samples.items() if key[0] == "cp_build_info"]
    assert value == 1 and dict(key[1])["django"] == django.get_version()
    assert ("process_cpu_seconds_total", ()) in samples
    assert any(key[0] == "python_info" for key in samples)
    assert not [key for key in samples if "quantile" in dict(key[1])]


def test_the_number_of_queries_does_not_grow_with_the_fleet(
    client: Client, fleet: None, make_engine: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(20):
        make_engine(f"extra-{i}")
    with django_assert_max_num_queries(SCRAPE_QUERIES):
        samples = scrape(client)
    assert samples[("cp_engines", (("state", "unknown"),))] == 21


def test_with_no_commands_the_histograms_are_still_declared(client: Client) -> None:
    text = client.get("/metrics").content.decode()
    assert f"# TYPE {ACK} histogram" in text and f"# TYPE {DONE} histogram" in text
    assert f"{ACK}_bucket" not in text


def test_it_needs_no_login(client: Client) -> None:
    samples = scrape(client)
    assert samples[("cp_engines_connected", ())] == 0
    assert samples[("cp_alerts_firing", (("severity", "critical"),))] == 0


def test_without_a_token_it_is_closed_unless_made_public_on_purpose(
    client: Client, settings: Any
) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False  # production's default

    response = client.get("/metrics")

    assert response.status_code == 401
    assert b"cp_" not in response.content
    assert b"set METRICS_TOKEN" in response.content and b"METRICS_PUBLIC=true" in response.content


def test_with_a_token_set_it_refuses_a_missing_or_wrong_token(
    client: Client, settings: Any
) -> None:
    settings.METRICS_TOKEN = "scrape-me-please"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "scrape-me-please"},
        {"Authorization": "Basic scrape-me-please"},
    ):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"cp_" not in response.content

    samples = scrape(client, Authorization="Bearer scrape-me-please")
    assert ("cp_notifications_pending", ()) in samples


def test_promtool_accepts_the_whole_output_with_every_family_holding_samples(
    client: Client, fleet: None, failing_receiver: None
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (Debian's package has it)"
    hub.sync_client().delete(heartbeats.last_runs_key())
    tasks.heartbeat.apply()
    events.announce(events.batch_stored, engine_id=1, result=IngestResult(ack_seq=0), refused=0)

    response = client.get("/metrics")

    text = response.content.decode()
    empty = [
        family.name
        for family in text_string_to_metric_families(text)
        if not family.samples and family.name.startswith("cp_")
    ]
    assert empty == []
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout + checked.stderr == ""  # no lint warning either
    samples = scrape(client)
    last_run = samples[("cp_task_last_run_timestamp_seconds", (("task", HEARTBEAT),))]
    assert last_run == pytest.approx(time.time(), abs=30)


DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "fleet.json"
# PromQL words that are not metric names (when not followed by a parenthesis).
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: what is left once strings, label matchers,
    ranges, grouping clauses and function calls are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def test_the_name_extraction_finds_metrics_and_only_them() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, kind) (rate(a_bucket{engine_at_issue="x"}'
        '[$__rate_interval]))) and on (kind) time() - b_seconds{engine=~"$engine"} > 5'
    )
    assert metric_names(expr) == {"a_bucket", "b_seconds"}


def test_the_grafana_dashboard_reads_only_what_metrics_exports(
    client: Client, fleet: None, failing_receiver: None
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    hub.sync_client().delete(heartbeats.last_runs_key())
    tasks.heartbeat.apply()
    events.announce(events.batch_stored, engine_id=1, result=IngestResult(ack_seq=0), refused=0)
    labels_of: dict[str, set[str]] = {}
    for name, labels in scrape(client):
        labels_of.setdefault(name, set()).update(key for key, _ in labels)

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    used = set().union(*map(metric_names, exprs))
    variables = [v for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for variable in variables:
        found = re.findall(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
        [(metric, label)] = found
        used.add(metric)
        assert label in labels_of.get(metric, set()), variable["definition"]
    exported = set(labels_of)

    assert used - exported == set()
    wanted = {
        "cp_engines_connected",
        "cp_engines",
        "cp_command_issued_to_acknowledged_seconds_bucket",
        "cp_command_issued_to_done_seconds_bucket",
        "cp_engine_equity",
        "cp_engine_day_pnl",
        "cp_engine_drawdown_ratio",
        "cp_engine_gross_exposure",
        "cp_engine_limit_utilisation_ratio",
        "cp_alerts_firing",
        "cp_task_last_run_timestamp_seconds",
    }
    assert wanted <= used
    assert any(e.startswith("histogram_quantile(0.99,") for e in exprs)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
