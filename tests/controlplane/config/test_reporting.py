"""The demo's debug pages (DEBUG=True) never show a password, not even inside a URL."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from django.test import Client, RequestFactory
from django.views.debug import technical_500_response

from controlplane.config.reporting import hide_url_passwords
from controlplane.redis_clients import channel_layer_host, make_config

DB_PASSWORD = "pg-s3cret-Zq9"
REDIS_PASSWORD = "redis-s3cret-Xw4"
DATABASE_URL = f"postgresql://controlplane:{DB_PASSWORD}@db.internal:5432/controlplane"
REDIS_URL = f"redis://:{REDIS_PASSWORD}@redis.internal:6379/0"
SENTINEL_PASSWORD = "sentinel-s3cret-Kp2"


@pytest.fixture
def url_settings(settings: Any) -> Any:
    settings.DEBUG = True
    settings.DATABASE_URL = DATABASE_URL
    settings.REDIS_URL = REDIS_URL
    settings.CELERY_BROKER_URL = REDIS_URL
    # Through Redis Sentinel: the configuration and the layer's host carry both passwords.
    settings.REDIS_CONFIG = make_config(REDIS_URL, ["s1:26379"], "main", SENTINEL_PASSWORD)
    sentinel_host = channel_layer_host(settings.REDIS_CONFIG)
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "x", "CONFIG": {"hosts": [REDIS_URL, sentinel_host], "prefix": "cp"}}
    }
    settings.CACHES = {**settings.CACHES, "spare": {"BACKEND": "x", "LOCATION": (REDIS_URL,)}}
    return settings


def _fail_with_a_url_in_a_variable() -> None:
    broker = f"{REDIS_URL}?password={REDIS_PASSWORD}"  # a local the traceback shows
    try:
        raise ConnectionError(f"refused: {DATABASE_URL}")
    except ConnectionError:
        raise RuntimeError(f"could not reach the broker at {broker.split('@')[1]}") from None


def test_the_500_debug_page_hides_every_url_password(url_settings: Any) -> None:
    request = RequestFactory().get(
        f"/x?token={DB_PASSWORD}", HTTP_REFERER=f"https://desk.example/?token={REDIS_PASSWORD}"
    )
    try:
        _fail_with_a_url_in_a_variable()
    except RuntimeError:
        response = technical_500_response(request, *sys.exc_info())

    page = response.content.decode()
    assert "DATABASE_URL" in page and "db.internal:5432/controlplane" in page  # still useful
    assert "could not reach the broker" in page
    assert DB_PASSWORD not in page
    assert REDIS_PASSWORD not in page
    assert SENTINEL_PASSWORD not in page


def test_the_404_debug_page_hides_every_url_password(url_settings: Any, operator: Any) -> None:
    client = Client()
    client.force_login(operator)

    response = client.get("/no-such-page/")

    page = response.content.decode()
    assert response.status_code == 404 and "DEBUG = True" in page
    assert DB_PASSWORD not in page and REDIS_PASSWORD not in page
    assert SENTINEL_PASSWORD not in page


def test_url_passwords_and_secret_parameters_are_hidden_and_the_rest_kept() -> None:
    hidden = hide_url_passwords(
        f"{DATABASE_URL} and {REDIS_URL} and https://h/p?user=ada&api_key=k3y&x=1 and a:b@c"
    )
    assert hidden == (
        "postgresql://controlplane:********************@db.internal:5432/controlplane and "
        "redis://:********************@redis.internal:6379/0 and "
        "https://h/p?user=ada&api_key=********************&x=1 and a:b@c"
    )
