"""/metrics: figures read from the database at scrape time, in Prometheus text format."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from alerts.models import Alert, Notification, NotificationChannel
from controlplane.models import Command, Engine

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


@pytest.fixture
def fleet(make_engine: Any) -> None:
    now = timezone.now()
    alpha, beta, gamma = (make_engine(name)[0] for name in ("alpha", "beta", "gamma"))
    Engine.objects.filter(pk=alpha.pk).update(
        connected=True,
        reported_state="ACTIVE",
        last_seq=1200,
        last_seen_at=now - timedelta(seconds=2),
    )
    Engine.objects.filter(pk=beta.pk).update(
        connected=True,
        reported_state="PAUSED",
        last_seq=40,
        last_seen_at=now - timedelta(seconds=30),
    )
    # Pause latencies of 0.1 s .. 1.0 s; one kill at 0.2 s; an old and an unacknowledged command.
    for tenths in range(1, 11):
        command = Command.objects.create(
            engine=alpha, kind="pause", reason="t", issued_by_label="t"
        )
        Command.objects.filter(pk=command.pk).update(
            acknowledged_at=command.created_at + timedelta(seconds=tenths / 10)
        )
    kill = Command.objects.create(engine=beta, kind="kill", reason="t", issued_by_label="t")
    Command.objects.filter(pk=kill.pk).update(
        acknowledged_at=kill.created_at + timedelta(seconds=0.2)
    )
    old = Command.objects.create(engine=beta, kind="pause", reason="t", issued_by_label="t")
    Command.objects.filter(pk=old.pk).update(
        created_at=now - timedelta(hours=2), acknowledged_at=now - timedelta(hours=1, minutes=59)
    )
    Command.objects.create(engine=gamma, kind="pause", reason="t", issued_by_label="t")

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


def test_it_exposes_the_fleet_commands_alerts_and_deliveries(
    client: Client, fleet: None, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(4):
        samples = scrape(client)

    assert samples[("cp_engines_connected", ())] == 2
    assert samples[("cp_engines", (("state", "ACTIVE"),))] == 1
    assert samples[("cp_engines", (("state", "PAUSED"),))] == 1
    assert samples[("cp_engines", (("state", "HALTED"),))] == 0
    assert samples[("cp_engines", (("state", "unknown"),))] == 1
    assert samples[("cp_engine_last_seq", (("engine", "alpha"),))] == 1200
    assert samples[("cp_engine_last_seq", (("engine", "gamma"),))] == 0
    assert 2 <= samples[("cp_engine_ingest_lag_seconds", (("engine", "alpha"),))] < 10
    assert 30 <= samples[("cp_engine_ingest_lag_seconds", (("engine", "beta"),))] < 40
    assert ("cp_engine_ingest_lag_seconds", (("engine", "gamma"),)) not in samples  # never seen

    pause = (("kind", "pause"),)
    assert samples[("cp_command_latency_samples", pause)] == 10  # the last hour's, acknowledged
    assert samples[("cp_command_latency_seconds", (*pause, ("quantile", "0.5")))] == (
        pytest.approx(0.55)
    )
    assert samples[("cp_command_latency_seconds", (*pause, ("quantile", "0.99")))] == (
        pytest.approx(0.991)
    )
    kill = (("kind", "kill"), ("quantile", "0.5"))
    assert samples[("cp_command_latency_seconds", kill)] == pytest.approx(0.2)

    assert samples[("cp_alerts_firing", (("severity", "critical"),))] == 2
    assert samples[("cp_alerts_firing", (("severity", "warning"),))] == 1
    assert samples[("cp_alerts_firing", (("severity", "info"),))] == 0
    assert samples[("cp_notifications_failed_total", ())] == 2
    assert samples[("cp_notifications_pending", ())] == 2


def test_the_number_of_queries_does_not_grow_with_the_fleet(
    client: Client, fleet: None, make_engine: Any, django_assert_max_num_queries: Any
) -> None:
    for i in range(20):
        make_engine(f"extra-{i}")
    with django_assert_max_num_queries(4):
        samples = scrape(client)
    assert samples[("cp_engines", (("state", "unknown"),))] == 21


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
