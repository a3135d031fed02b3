"""The periodic sweeps fan out: one task per engine in the real broker, each engine's failure its
own."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from alerts import evaluation, tasks
from alerts.models import Alert, AlertRule
from controlplane import redis_clients
from controlplane.config.celery import app as celery_app
from controlplane.models import Engine

pytestmark = pytest.mark.django_db


def queued() -> list[tuple[str, list[Any], Any]]:
    """(task, args, expires) of every message waiting in the broker's default queue."""
    messages = []
    for raw in redis_clients.client().lrange("celery", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args, message["headers"]["expires"]))
    return messages


@pytest.fixture
def broker() -> Iterator[None]:
    celery_app.control.purge()  # what earlier tests queued and nobody ran is not this test's
    yield
    celery_app.control.purge()


@pytest.fixture
def eager() -> Iterator[None]:
    """Tasks queued by the sweep run at once, each as its own task (an exception is its own)."""
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False


def quiet_engines(make_engine: Callable[..., tuple[Engine, str]], count: int) -> list[Engine]:
    engines = [make_engine()[0] for _ in range(count)]
    ten_minutes_ago = datetime.now(UTC) - timedelta(minutes=10)
    Engine.objects.filter(pk__in=[e.pk for e in engines]).update(last_seen_at=ten_minutes_ago)
    AlertRule.objects.all().delete()
    AlertRule.objects.create(name="Engine down", metric="heartbeat_age_s", threshold=60)
    return engines


def test_the_sweep_queues_one_task_per_active_engine(
    make_engine: Callable[..., tuple[Engine, str]], broker: None
) -> None:
    engines = quiet_engines(make_engine, 3)
    Engine.objects.filter(pk=engines[2].pk).update(is_active=False)

    assert tasks.sweep() == 2

    sent = queued()
    assert sorted((task, args) for task, args, _ in sent) == [
        ("alerts.evaluate_engine", [engines[0].pk]),
        ("alerts.evaluate_engine", [engines[1].pk]),
    ]
    assert all(expires is not None for _, _, expires in sent)  # no backlog after an outage
    assert not Alert.objects.exists()  # the sweep itself evaluated nothing


def test_the_sweep_queues_nothing_without_a_time_based_rule(
    make_engine: Callable[..., tuple[Engine, str]], broker: None
) -> None:
    quiet_engines(make_engine, 2)
    AlertRule.objects.update(metric="drawdown_pct")

    assert tasks.sweep() == 0
    assert queued() == []


def test_one_engines_failure_does_not_stop_the_others(
    make_engine: Callable[..., tuple[Engine, str]],
    eager: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, broken, last = quiet_engines(make_engine, 3)
    real = evaluation.evaluate_engine

    def evaluate_engine(engine_id: int, **kwargs: Any) -> list[Alert]:
        # A fault in one engine's evaluation, whatever its cause (its data, a bug, a timeout).
        if engine_id == broken.pk:
            raise RuntimeError("this engine's evaluation failed")
        return real(engine_id, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_engine", evaluate_engine)

    tasks.sweep()

    firing = set(Alert.objects.filter(state="firing").values_list("engine_id", flat=True))
    assert firing == {first.pk, last.pk}


def test_a_task_for_an_engine_deleted_meanwhile_does_nothing(
    make_engine: Callable[..., tuple[Engine, str]],
) -> None:
    [engine] = quiet_engines(make_engine, 1)
    engine_id = engine.pk
    Engine.objects.filter(pk=engine_id).update(is_active=False)

    assert tasks.evaluate_engine_task(engine_id) == 0
    assert tasks.evaluate_engine_task(10**9) == 0
