"""The operators' HTTP API under /api/v1/: tokens and sessions, guards, errors that name fields."""

from __future__ import annotations

import json
import re

import pytest
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from controlplane import services
from controlplane.commands import rights
from controlplane.models import AuditEvent, Command, Engine, ResumeRequest
from controlplane.sqlscript import readable

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet(make_engine):
    return [make_engine(name)[0] for name in ("alpha", "beta")]


def token_client(user) -> Client:
    _, token = services.api_token_create(user=user, name=f"script-{user.api_tokens.count()}")
    return Client(headers={"Authorization": f"Bearer {token}"})


def post(client: Client, path: str, body: dict) -> tuple[int, dict]:
    response = client.post(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


KILL_ALL = {"kind": "kill", "selector": "all", "reason": "stop", "confirm": "KILL ALL"}


def test_a_risk_manager_kills_the_fleet_with_a_personal_token(fleet, risk_manager):
    status, body = post(token_client(risk_manager), "/api/v1/commands", KILL_ALL)

    assert status == 201, body
    assert body["summary"] == "0 of 2 engines halted"
    assert [c["engine"] for c in body["commands"]] == ["alpha", "beta"]
    assert {c["status"] for c in body["commands"]} == {"pending"}
    assert body["commands"][0]["issued_by"] == "rita-risk"
    assert Command.objects.filter(kind="kill").count() == 2


@pytest.mark.parametrize("persona", ["viewer", "operator"])
def test_a_viewer_or_operator_cannot_kill_through_the_api(fleet, persona, request):
    user = request.getfixturevalue(persona)

    status, body = post(token_client(user), "/api/v1/commands", KILL_ALL)

    assert status == 403
    assert "may not kill" in body["detail"]
    assert not Command.objects.exists()
    assert AuditEvent.objects.get(action="command_kill").outcome == "refused"


def test_a_kill_must_be_confirmed_by_typing_what_it_hits(fleet, risk_manager):
    client = token_client(risk_manager)

    status, body = post(client, "/api/v1/commands", {**KILL_ALL, "confirm": "kill all"})
    assert status == 422
    assert body["errors"]["confirm"] == "type KILL ALL exactly to confirm a kill of all"

    one = {"kind": "kill", "selector": "engine:alpha", "reason": "x", "confirm": "KILL ALL"}
    status, body = post(client, "/api/v1/commands", one)
    assert status == 422 and "type alpha exactly" in body["errors"]["confirm"]

    assert not Command.objects.exists()
    status, _ = post(client, "/api/v1/commands", {**one, "confirm": "alpha"})
    assert status == 201


def test_bad_parameters_get_422_naming_the_field(fleet, operator):
    bad = {"kind": "reduce", "selector": "all", "reason": "x", "params": {"target_pct": 120}}

    status, body = post(token_client(operator), "/api/v1/commands", bad)

    assert status == 422
    assert "below 100" in body["errors"]["target_pct"]
    status, body = post(token_client(operator), "/api/v1/commands", {"kind": "explode"})
    assert status == 422
    assert not Command.objects.exists()


def test_no_credentials_get_401_not_a_login_redirect(fleet):
    response = Client().post("/api/v1/commands", KILL_ALL, content_type="application/json")
    assert response.status_code == 401

    bogus = Client(headers={"Authorization": "Bearer cpu_not-a-token"})
    assert bogus.get("/api/v1/engines").status_code == 401


def test_a_browser_session_needs_the_csrf_token_to_post(fleet, risk_manager):
    client = Client(enforce_csrf_checks=True)
    client.force_login(risk_manager)

    status, _ = post(client, "/api/v1/commands", KILL_ALL)
    assert status == 403
    assert not Command.objects.exists()

    client.get("/")  # sets the CSRF cookie, as any page does
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/api/v1/commands",
        json.dumps(KILL_ALL),
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 201


def test_the_batch_shows_its_progress(fleet, risk_manager, viewer):
    _, created = post(token_client(risk_manager), "/api/v1/commands", KILL_ALL)
    Command.objects.filter(engine__name="alpha").update(status="succeeded", state_after="HALTED")

    response = token_client(viewer).get(f"/api/v1/commands/batches/{created['id']}")

    body = response.json()
    assert response.status_code == 200
    assert (body["summary"], body["finished"]) == ("1 of 2 engines halted", False)
    assert body["by_status"] == {"succeeded": 1, "pending": 1}


def test_four_eyes_through_the_api(fleet, operator, risk_manager, second_risk_manager):
    post(token_client(risk_manager), "/api/v1/commands", KILL_ALL)
    requester = token_client(risk_manager)

    status, created = post(requester, "/api/v1/engines/alpha/resume-requests", {"reason": "ok"})
    assert status == 201 and created["requested_by"] == "rita-risk"
    status, body = post(requester, f"/api/v1/resume-requests/{created['id']}/approve", {})
    assert status == 403 and "cannot also approve it" in body["detail"]
    status, body = post(
        token_client(operator), f"/api/v1/resume-requests/{created['id']}/approve", {}
    )
    assert status == 403

    status, body = post(
        token_client(second_risk_manager), f"/api/v1/resume-requests/{created['id']}/approve", {}
    )
    assert status == 200, body
    assert body["kind"] == "resume" and body["params"]["approved_by"] == "rex-risk"
    assert ResumeRequest.objects.get().status == "approved"
    assert Engine.objects.get(name="alpha").desired_state == "ACTIVE"
    assert Engine.objects.get(name="beta").desired_state == "HALTED"


def test_the_engines_list_needs_a_view_permission(fleet, viewer, outsider):
    assert [e["name"] for e in token_client(viewer).get("/api/v1/engines").json()] == [
        "alpha",
        "beta",
    ]
    assert token_client(outsider).get("/api/v1/engines").status_code == 403


def test_the_openapi_schema_and_docs_are_served_without_a_cdn(fleet, viewer):
    client = Client()
    client.force_login(viewer)

    schema = client.get("/api/v1/openapi.json").json()
    docs = client.get("/api/v1/docs").content.decode()

    assert "/api/v1/commands" in schema["paths"]
    assert "/static/ninja/swagger-ui-bundle.js" in docs
    # Every script, style sheet and icon comes from this server. (Not a search for "cdn": the
    # page's random CSRF token spells it now and then.)
    assert re.findall(r'(?:src|href)="([^"]*)"', docs)
    assert all(url.startswith("/") for url in re.findall(r'(?:src|href)="([^"]*)"', docs))


def _statements(queries: CaptureQueriesContext) -> list[str]:
    # The test's own transaction makes the service's atomic block a savepoint: not a round trip
    # a request pays outside the tests.
    return [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]


def test_a_fleet_kill_through_the_api_takes_three_round_trips(make_engine, risk_manager):
    for i in range(20):
        make_engine(f"fleet-{i:02d}")
    client = token_client(risk_manager)
    client.get("/api/v1/engines")  # the token's last use is now recorded: no write in the kill

    with CaptureQueriesContext(connection) as queries:
        status, body = post(client, "/api/v1/commands", KILL_ALL)

    assert status == 201, body
    assert len(body["commands"]) == 20
    # The token with its user's permissions, the engines locked, then every write at once.
    token, lock, script = _statements(queries)
    assert "controlplane_apitoken" in readable(token) and "auth_permission" in readable(token)
    assert "FOR UPDATE" in lock
    for table in ("commandbatch", "command", "engine", "auditevent"):
        assert f"controlplane_{table}" in readable(script)


def test_the_answer_to_a_kill_is_the_batch_as_stored(fleet, risk_manager, viewer):
    status, issued = post(token_client(risk_manager), "/api/v1/commands", KILL_ALL)
    assert status == 201

    stored = token_client(viewer).get(f"/api/v1/commands/batches/{issued['id']}").json()

    assert issued == stored


@pytest.mark.parametrize("persona", ["risk_manager", "operator", "viewer", "outsider"])
def test_a_token_brings_exactly_the_permissions_of_its_user_and_groups(persona, request):
    user = request.getfixturevalue(persona)
    user.user_permissions.add(Permission.objects.get(codename="add_silence"))
    _, token = services.api_token_create(user=user, name="script")

    with CaptureQueriesContext(connection) as queries:
        by_token = services.api_token_user(token)
        prefilled = by_token.get_all_permissions()
        checks = [by_token.has_perm(p) for p in sorted(rights.COMMAND_PERMISSIONS)]
    fresh = User.objects.get(pk=user.pk)

    assert prefilled == ModelBackend().get_all_permissions(fresh)
    assert checks == [fresh.has_perm(p) for p in sorted(rights.COMMAND_PERMISSIONS)]
    assert len(_statements(queries)) == 2  # the token (with the permissions), its last use
