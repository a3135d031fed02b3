"""Shared personas and helpers. Tests talk to the real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from controlplane import roles, services, stages
from controlplane.models import CREATION_STAGES, Engine, Mode, Stage

# Fixtures that start real processes (uvicorn against the test database, browsers) live here.
pytest_plugins = ["tests.servers", "tests.dbflush"]

PASSWORD = "correct horse battery staple"
# The stage an engine made in a mode is placed at (as migration 0016 placed those registered
# before stages).
STAGE_OF_MODE = {
    Mode.BACKTEST: Stage.BACKTEST,
    Mode.PAPER: Stage.PAPER,
    Mode.SHADOW: Stage.SHADOW,
    Mode.LIVE: Stage.FULL,
}


def _make_user(username: str, role: str | None, **extra: Any) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, **extra)
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def admin_user(db: None) -> User:
    return _make_user("ada-admin", roles.ADMIN, is_staff=True, is_superuser=True)


@pytest.fixture
def risk_manager(db: None) -> User:
    return _make_user("rita-risk", roles.RISK_MANAGER, is_staff=True)


@pytest.fixture
def second_risk_manager(db: None) -> User:
    return _make_user("rex-risk", roles.RISK_MANAGER, is_staff=True)


@pytest.fixture
def operator(db: None) -> User:
    return _make_user("otto-operator", roles.OPERATOR)


@pytest.fixture
def viewer(db: None) -> User:
    return _make_user("vera-viewer", roles.VIEWER)


@pytest.fixture
def outsider(db: None) -> User:
    return _make_user("oscar-outsider", None)


@pytest.fixture
def make_engine(db: None) -> Callable[..., tuple[Engine, str]]:
    counter = iter(range(1, 10_000))

    def make(
        name: str | None = None, stage: str | None = None, **kwargs: Any
    ) -> tuple[Engine, str]:
        """An engine as ``services.engine_create`` makes it; one whose mode or ``stage`` is above
        paper (reached through the gates in the app) is created at paper, then placed at that
        stage (a live one in full production) with a recorded stage change."""
        name = name or f"engine-{next(counter)}"
        target = stage or STAGE_OF_MODE.get(kwargs.get("mode", Mode.PAPER))
        if target is None or target in CREATION_STAGES:
            return services.engine_create(name=name, stage=target, **kwargs)
        engine, token = services.engine_create(name=name, **kwargs | {"mode": Mode.PAPER})
        stages.stage_set(engine=engine, to_stage=target, reason="test: placed at its stage")
        return engine, token

    return make


@pytest.fixture
def engine_and_token(make_engine: Callable[..., tuple[Engine, str]]) -> tuple[Engine, str]:
    return make_engine("alpha", mode="paper", strategy_tags=["momentum"])
