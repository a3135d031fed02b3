"""Going live's periodic tasks fan out: one task per engine they look at, in the real broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controlplane import redis_clients
from controlplane.config.celery import app as celery_app
from controlplane.models import Engine
from golive import tasks

pytestmark = pytest.mark.django_db


def queued() -> list[tuple[str, list[Any]]]:
    """(task, args) of every message waiting in the broker's default queue, sorted."""
    messages = []
    for raw in redis_clients.client().lrange("celery", 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args))
    return sorted(messages)


@pytest.fixture
def broker() -> Iterator[None]:
    celery_app.control.purge()  # what earlier tests queued and nobody ran is not this test's
    yield
    celery_app.control.purge()


def test_red_lines_queue_one_task_per_watched_engine(
    make_engine: Callable[..., tuple[Engine, str]], broker: None
) -> None:
    paper, _ = make_engine(stage="paper")
    shadow, _ = make_engine(stage="shadow")
    small, _ = make_engine(stage="small_capital")
    gone, _ = make_engine(stage="shadow")
    Engine.objects.filter(pk=gone.pk).update(is_active=False)

    assert tasks.red_lines() == 2

    assert queued() == sorted(
        [
            ("golive.tasks.red_lines_engine", [shadow.pk]),
            ("golive.tasks.red_lines_engine", [small.pk]),
        ]
    )
    assert tasks.red_lines_engine(paper.pk) == 0  # not watched: skipped, whoever queued it


def test_the_capital_ramp_queues_one_task_per_small_capital_engine(
    make_engine: Callable[..., tuple[Engine, str]], broker: None
) -> None:
    make_engine(stage="shadow")
    small, _ = make_engine(stage="small_capital")

    assert tasks.capital_ramp() == 1

    assert queued() == [("golive.tasks.capital_ramp_engine", [small.pk])]
    assert tasks.capital_ramp_engine(small.pk) == 0  # just placed there: no step due yet
