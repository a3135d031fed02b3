"""Every page needs a login, and no state-changing URL yields to an anonymous user or a viewer."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

# /metrics is for Prometheus: a bearer token, no login (tests/alerts/test_metrics.py).
# /favicon.ico redirects to the static icon, which the login page shows too.
PUBLIC = {
    "/healthz",
    "/readyz",
    "/login/",
    "/admin/login/",
    "/metrics",
    "/favicon.ico",
    # The protocol's schema: engine developers read it before they hold a token.
    "/api/v1/protocol.schema.json",
}


def _walk(patterns, prefix: str = ""):
    for p in patterns:
        route = str(p.pattern)
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + route)
        elif isinstance(p, URLPattern):
            yield prefix + route


def _concrete(route: str) -> str:
    # Fill path converters and regex groups with plausible values: the URL must resolve so the
    # access check is what answers, not a 404 for a malformed path.
    route = re.sub(r"\(\?P<\w+>[^)]*\)", "1", route)  # regex groups first: they contain <name>
    route = re.sub(r"<(?:int:)?\w*(?:id|pk)>", "1", route)
    route = re.sub(r"<path:\w+>", "x", route)
    route = re.sub(r"<uuid:\w+>", "00000000-0000-0000-0000-000000000001", route)
    route = re.sub(r"<[\w:]+>", "x", route)
    route = re.sub(r"\(\?:([^|)]*)[^)]*\)", r"\1", route)  # (?:a|b): the first alternative
    route = route.replace("^", "").replace("$", "").replace("\\", "")
    return "/" + route


def all_urls() -> list[str]:
    urls = sorted({_concrete(r) for r in _walk(get_resolver().url_patterns)})
    return [u for u in urls if u not in PUBLIC]


def test_the_url_walk_finds_the_state_changing_urls():
    urls = all_urls()
    assert "/admin/controlplane/engine/add/" in urls
    assert "/logout/" in urls
    assert len(urls) > 50


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["get", "post"])
def test_anonymous_users_are_refused_every_non_public_url(client, method):
    refused = []
    for url in all_urls():
        response = getattr(client, method)(url)
        location = response.headers.get("Location", "")
        if response.status_code in (301, 302) and "login" in location:
            continue
        if response.status_code in (401, 403, 404, 405):
            continue
        refused.append((url, response.status_code))
    assert refused == [], "these URLs answered an anonymous user"


@pytest.mark.django_db
def test_a_viewer_is_refused_every_state_changing_url(client, viewer, engine_and_token):
    client.force_login(viewer)
    allowed = []
    for url in all_urls():
        # Logging out, and a person's own preferences (the weekly report subscription), are the
        # viewer's to change.
        if url in ("/logout/", "/admin/logout/", "/reports/settings/"):
            continue
        response = client.post(url, data={"name": "x", "reason": "x", "confirm": "x"})
        # A login redirect, forbidden, not found, method not allowed: all refuse.
        if response.status_code in (302,) and "login" in response.headers.get("Location", ""):
            continue
        if response.status_code in (400, 401, 403, 404, 405):
            continue
        allowed.append((url, response.status_code))
    assert allowed == [], "a viewer could change state through these URLs"
    from controlplane.models import Engine

    assert Engine.objects.count() == 1


@pytest.mark.django_db
def test_the_login_page_logs_a_user_in_and_audits_it(client, operator):
    from controlplane.models import AuditEvent
    from tests.conftest import PASSWORD

    page = client.get("/login/")
    assert page.status_code == 200
    assert b'name="password"' in page.content
    response = client.post("/login/", {"username": operator.username, "password": PASSWORD})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert AuditEvent.objects.filter(action="login", actor=operator.username).count() == 1


@pytest.mark.django_db
def test_a_wrong_password_is_refused_with_a_message_and_audited(client, operator):
    from controlplane.models import AuditEvent

    response = client.post("/login/", {"username": operator.username, "password": "nope"})
    assert response.status_code == 200
    assert b"did not match" in response.content
    assert AuditEvent.objects.filter(action="login_failed", outcome="refused").count() == 1
    assert client.get("/").status_code == 302


@pytest.mark.django_db
def test_role_groups_carry_the_permissions_of_the_design(
    viewer, operator, risk_manager, admin_user
):
    assert viewer.has_perm("controlplane.view_engine")
    assert not viewer.has_perm("controlplane.issue_pause")
    assert operator.has_perm("controlplane.issue_pause")
    assert operator.has_perm("controlplane.issue_reduce")
    assert not operator.has_perm("controlplane.issue_kill")
    assert not operator.has_perm("controlplane.approve_resume")
    assert risk_manager.has_perm("controlplane.issue_kill")
    assert risk_manager.has_perm("controlplane.approve_resume")
    assert not risk_manager.has_perm("auth.change_user")
    assert admin_user.has_perm("auth.change_user")
