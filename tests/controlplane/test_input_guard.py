"""NUL bytes are refused at the edge, naming the field; the admin's date drill-down at the end of
the calendar is a bad parameter, not a server error."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from controlplane.models import AuditEvent, Command

pytestmark = pytest.mark.django_db


@pytest.fixture
def risk_client(risk_manager) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(risk_manager)
    return client


def test_a_nul_in_a_query_parameter_is_a_400_naming_it(risk_client, engine_and_token):
    response = risk_client.get("/api/v1/commands", {"engine": "al\x00pha", "limit": "5"})

    assert response.status_code == 400
    assert response.json()["errors"] == {"engine": "contains a NUL byte"}
    assert risk_client.get("/", {"tag": "\x00"}).status_code == 400


def test_a_nul_in_a_form_field_is_a_400_and_nothing_is_recorded(viewer, engine_and_token):
    client = Client(raise_request_exception=False)
    client.force_login(viewer)
    before = AuditEvent.objects.count()

    response = client.post("/commands/", {"kind": "kill", "selector": "all", "reason": "oops\x00"})

    assert response.status_code == 400
    assert response.json()["errors"] == {"reason": "contains a NUL byte"}
    assert AuditEvent.objects.count() == before


def test_a_nul_deep_in_a_json_body_is_named_by_its_path(risk_client, engine_and_token):
    body = {
        "kind": "flatten",
        "selector": "all",
        "reason": "x",
        "params": {"symbols": ["AAPL", "MS\x00FT"]},
    }
    response = risk_client.post(
        "/api/v1/commands", json.dumps(body), content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["errors"] == {"params.symbols[1]": "contains a NUL byte"}
    assert not Command.objects.exists()


def test_a_path_with_a_nul_names_nothing(risk_client, engine_and_token):
    response = risk_client.post(
        "/api/v1/engines/al%00pha/resume-requests",
        json.dumps({"reason": "x"}),
        content_type="application/json",
    )
    assert response.status_code == 404


def test_an_upload_through_a_form_still_reaches_the_api_body(risk_client, engine_and_token):
    # The guard reads a multipart form's fields; the API must still be able to read the body
    # (it answers that it is not JSON) rather than fail.
    response = risk_client.post("/api/v1/commands", {"reason": "x"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        {"ts__year": "9999", "ts__month": "12", "ts__day": "31"},
        {"ts__year": "9999"},
        {"ts__year": "9999", "ts__month": "12"},
    ],
)
def test_the_admin_date_drill_down_past_9999_is_a_bad_parameter(admin_user, query):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)

    for url in ("/admin/controlplane/fill/", "/admin/controlplane/auditevent/"):
        response = client.get(url, query)
        assert response.status_code == 302, url
        assert response["Location"].endswith("?e=1")


def test_the_schedules_date_drill_down_past_9999_is_a_bad_parameter(admin_user):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    query = {"start_time__year": "9999", "start_time__month": "12", "start_time__day": "31"}

    response = client.get("/admin/django_celery_beat/periodictask/", query)

    assert response.status_code == 302 and response["Location"].endswith("?e=1")


def test_a_refusal_for_an_unknown_kind_is_recorded_under_a_known_action(viewer):
    client = Client(raise_request_exception=False)
    client.force_login(viewer)

    response = client.post("/commands/", {"kind": "k" * 500, "selector": "all", "reason": "x"})

    assert response.status_code == 403
    assert AuditEvent.objects.get(outcome="refused").action == "command"
