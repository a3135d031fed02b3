"""Shared personas and helpers. Tests talk to the real PostgreSQL and Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from controlplane import roles, services
from controlplane.models import Engine

# Fixtures that start real processes (uvicorn against the test database, browsers) live here.
pytest_plugins = ["tests.servers"]

PASSWORD = "correct horse battery staple"


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

    def make(name: str | None = None, **kwargs: Any) -> tuple[Engine, str]:
        return services.engine_create(name=name or f"engine-{next(counter)}", **kwargs)

    return make


@pytest.fixture
def engine_and_token(make_engine: Callable[..., tuple[Engine, str]]) -> tuple[Engine, str]:
    return make_engine("alpha", mode="paper", strategy_tags=["momentum"])
