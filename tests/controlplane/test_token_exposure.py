"""No token ever travels in a cookie or appears in a log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client

from controlplane import services
from controlplane.models import Engine
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db

# The only cookies the site sets: the session's key and the CSRF token, neither of them a secret
# of ours to show.
ALLOWED_COOKIES = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME}


def cookies_set(*responses: Any) -> dict[str, str]:
    return {name: morsel.value for r in responses for name, morsel in r.cookies.items()}


def test_a_new_engines_token_is_shown_once_on_the_page_but_never_put_in_a_cookie(
    admin_user: User,
) -> None:
    client = Client()
    client.force_login(admin_user)
    form = {
        "name": "zulu",
        "mode": "paper",
        "broker": "",
        "account": "",
        "strategy_tags": "",
        "description": "",
        "is_active": "on",
    }

    added = client.post("/admin/controlplane/engine/add/", form)
    shown = client.get(added["Location"])

    page = shown.content.decode()
    token = page[page.index("cpe_") :].split("<")[0].split()[0]
    assert len(token) > 20 and Engine.objects.get(name="zulu").token_hint == token[:8]
    cookies = cookies_set(added, shown)
    assert set(cookies) <= ALLOWED_COOKIES, f"cookies set: {sorted(cookies)}"
    assert not any(token in value for value in cookies.values())


def test_requests_with_engine_and_api_tokens_log_neither(
    caplog: pytest.LogCaptureFixture,
    engine_and_token: tuple[Engine, str],
    operator: User,
    settings: Any,
) -> None:
    settings.DEBUG = True  # the demo's: SQL is logged with its parameters too
    _, engine_token = engine_and_token
    _, api_token = services.api_token_create(user=operator, name="script")
    wrong = engine_token[:-4] + "AAAA"

    with caplog.at_level(logging.DEBUG):
        responses = [
            Client().post(
                "/api/v1/engine/events",
                data=f.events_frame(f.order(1, "o-1")),
                content_type="application/json",
                headers={"Authorization": f"Bearer {token}"},
            )
            for token in (engine_token, wrong)
        ] + [
            Client().get("/api/v1/engines", headers={"Authorization": f"Bearer {token}"})
            for token in (api_token, api_token[:-4] + "AAAA", engine_token)
        ]

    assert [r.status_code for r in responses] == [200, 401, 200, 401, 401]
    assert caplog.records, "the requests logged nothing at all: the test would prove nothing"
    for secret in (engine_token, wrong, api_token):
        assert secret not in caplog.text
        assert secret[8:] not in caplog.text
    assert not any(
        token in value
        for value in cookies_set(*responses).values()
        for token in (engine_token, api_token)
    )
