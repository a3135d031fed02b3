"""Logins are throttled per username and address; the address is never a client's own say-so."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client, RequestFactory

from controlplane.audit import client_ip
from controlplane.models import AuditEvent
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

LOCKED = "Too many failed logins for otto-operator from this address"


def log_in(username: str, password: str, **meta: str) -> Any:
    return Client().post("/login/", {"username": username, "password": password}, **meta)


def fail_five_times(username: str = "otto-operator", **meta: str) -> Any:
    """Four failures show the form again; the fifth locks, and says so."""
    for _ in range(4):
        response = log_in(username, "not the password", **meta)
        assert response.status_code == 200  # the form again, with its error
    return log_in(username, "not the password", **meta)


def test_five_wrong_passwords_lock_the_user_out_from_that_address_even_with_the_right_one(
    operator: User,
) -> None:
    fifth = fail_five_times()
    assert fifth.status_code == 429 and LOCKED in fifth.content.decode()

    response = log_in("otto-operator", PASSWORD)

    assert response.status_code == 429
    page = response.content.decode()
    assert LOCKED in page and "locked for 15 minutes, even with the right password" in page
    assert "_auth_user_id" not in response.client.session
    assert AuditEvent.objects.filter(action="login_locked_out", outcome="refused").exists()
    assert not AuditEvent.objects.filter(action="login").exists()


def test_a_forged_x_forwarded_for_does_not_escape_the_lock_when_no_proxy_is_trusted(
    operator: User,
) -> None:
    fail_five_times(HTTP_X_FORWARDED_FOR="198.51.100.1")

    response = log_in("otto-operator", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.99")

    assert response.status_code == 429 and LOCKED in response.content.decode()


def test_another_user_at_the_same_address_and_the_same_user_elsewhere_still_log_in(
    operator: User, viewer: User
) -> None:
    fail_five_times()

    assert log_in("vera-viewer", PASSWORD).status_code == 302
    assert log_in("otto-operator", PASSWORD, REMOTE_ADDR="192.0.2.40").status_code == 302
    assert log_in("otto-operator", PASSWORD).status_code == 429


def test_a_success_before_the_limit_starts_the_count_again(operator: User) -> None:
    for _ in range(4):
        log_in("otto-operator", "not the password")
    assert log_in("otto-operator", PASSWORD).status_code == 302
    for _ in range(4):
        log_in("otto-operator", "not the password")

    assert log_in("otto-operator", PASSWORD).status_code == 302


def test_behind_a_trusted_proxy_the_client_is_the_address_the_proxy_appended(
    operator: User, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}  # every request arrives from the proxy
    for forged in range(5):
        response = log_in(
            "otto-operator",
            "nope",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{forged}, 192.0.2.7",
            **proxy,
        )
        assert response.status_code == (429 if forged == 4 else 200)

    # The forged leftmost entries changed nothing: 192.0.2.7 is locked, 192.0.2.8 is not.
    locked = log_in("otto-operator", PASSWORD, HTTP_X_FORWARDED_FOR="1.2.3.4, 192.0.2.7", **proxy)
    assert locked.status_code == 429
    other = log_in("otto-operator", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.8", **proxy)
    assert other.status_code == 302
    audited = AuditEvent.objects.filter(action="login_failed").values_list("ip_address", flat=True)
    assert set(audited) == {"192.0.2.7"}


@pytest.mark.parametrize(
    ("proxies", "meta", "expected"),
    [
        (0, {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "127.0.0.1"),
        (1, {"HTTP_X_FORWARDED_FOR": "203.0.113.9, 192.0.2.1"}, "192.0.2.1"),
        (2, {"HTTP_X_FORWARDED_FOR": "203.0.113.9, 192.0.2.1, 10.0.0.3"}, "192.0.2.1"),
        (1, {"HTTP_X_FORWARDED_FOR": "not-an-address"}, "127.0.0.1"),
        (1, {}, "127.0.0.1"),
    ],
)
def test_the_client_address_follows_trusted_proxy_count(
    settings: Any, proxies: int, meta: dict[str, str], expected: str
) -> None:
    settings.TRUSTED_PROXY_COUNT = proxies
    assert client_ip(RequestFactory().get("/", **meta)) == expected
