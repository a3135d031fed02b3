"""Domain events: the layers above hear of the core through them, and a failing receiver costs
neither the other receivers nor the engine its ack."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controlplane import events, hub
from controlplane.ingest.store import IngestResult
from controlplane.models import Fill
from engine_sdk import protocol as p
from risk.models import LimitKind, RiskLimit, Scope
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

URL = "/api/v1/engine/events"


@pytest.fixture(autouse=True)
def no_counted_failures() -> Iterator[None]:
    hub.sync_client().delete(events.failures_key())
    yield
    hub.sync_client().delete(events.failures_key())


@pytest.fixture
def failing_receiver() -> Iterator[list[dict[str, Any]]]:
    """A receiver of batch_stored that raises, connected before alerts' own (which must still
    be called)."""
    heard: list[dict[str, Any]] = []

    def explode(sender: Any, **kwargs: Any) -> None:
        heard.append(kwargs)
        raise RuntimeError("receiver down")

    events.batch_stored.connect(explode, dispatch_uid="test-explode")
    yield heard
    events.batch_stored.disconnect(dispatch_uid="test-explode")


def test_a_failing_receiver_is_logged_and_counted_and_the_others_still_hear(
    failing_receiver: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[int] = []

    def listen(sender: Any, *, engine_id: int, **kwargs: Any) -> None:
        heard.append(engine_id)

    nothing = IngestResult(ack_seq=0)
    events.batch_stored.connect(listen, dispatch_uid="test-listen")
    try:
        events.announce(events.batch_stored, engine_id=7, result=nothing, refused=0)
        events.announce(events.batch_stored, engine_id=8, result=nothing, refused=0)
    finally:
        events.batch_stored.disconnect(dispatch_uid="test-listen")
    assert heard == [7, 8]
    assert [kwargs["engine_id"] for kwargs in failing_receiver] == [7, 8]
    assert "batch_stored: receiver" in caplog.text and "receiver down" in caplog.text
    counts = events.receiver_failures()
    assert list(counts.values()) == [2]
    [(event, receiver)] = counts
    assert (
        event == "batch_stored"
        and receiver == "tests.controlplane.test_events.failing_receiver.<locals>.explode"
    )


def test_an_engine_gets_its_ack_when_a_receiver_of_its_batch_fails(
    client, engine_and_token, failing_receiver: list[dict[str, Any]], admin_user
) -> None:
    engine, token = engine_and_token
    response = client.post(
        URL,
        data=f.events_frame(f.order(1, "o-1"), f.fill(2, "f-1", "o-1")),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert response.json() == [{"type": "ack", "seq": 2}]
    assert Fill.objects.filter(engine=engine).count() == 1
    [kwargs] = failing_receiver
    assert kwargs["engine_id"] == engine.pk and kwargs["result"].stored == 2
    # ... and /metrics says a receiver failed, by event and receiver.
    client.force_login(admin_user)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("django.conf.settings.METRICS_PUBLIC", True)
        mp.setattr("django.conf.settings.METRICS_TOKEN", "")
        text = client.get("/metrics").content.decode()
    [line] = [x for x in text.splitlines() if x.startswith("cp_event_receiver_failures_total{")]
    assert 'event="batch_stored"' in line and "explode" in line and line.endswith(" 1.0")


def test_the_welcome_carries_the_limits_the_risk_app_answers(client, engine_and_token) -> None:
    engine, token = engine_and_token
    RiskLimit.objects.create(kind=LimitKind.MAX_ORDER_QTY, scope=Scope.GLOBAL, threshold=5)
    version, limits = events.limits_for(engine)
    assert [limit["kind"] for limit in limits] == [LimitKind.MAX_ORDER_QTY]
    hello = p.Hello(
        protocol=1,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="x",
        account="y",
        trading_state="ACTIVE",
        last_seq=0,
    )
    [welcome] = client.post(
        URL,
        data=p.encode(hello),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    ).json()
    assert (welcome["limits_version"], welcome["limits"]) == (version, limits)


def test_two_apps_answering_the_limits_is_an_error_not_a_guess(engine_and_token) -> None:
    engine, _ = engine_and_token

    def also(sender: Any, **kwargs: Any) -> tuple[int, list[Any]]:
        return 99, []

    events.limits_wanted.connect(also, dispatch_uid="test-also")
    try:
        with pytest.raises(RuntimeError, match="2 receivers answer limits_wanted"):
            events.limits_for(engine)
    finally:
        events.limits_wanted.disconnect(dispatch_uid="test-also")
