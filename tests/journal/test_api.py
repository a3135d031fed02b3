"""Incidents and emergency contacts through the API: the same services as the pages, so the same
rights, audit records and refusals, answered as 400, 403, 404, 409 and 422."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from controlplane.models import AuditEvent, Engine
from journal.models import EmergencyContact, Incident, PostMortem
from tests.controlplane.test_api import post, token_client
from tests.journal.conftest import answer_kill, book, flattened

pytestmark = pytest.mark.django_db

POSTMORTEM = {
    "cause": "strategy",
    "what_went_wrong": "The signal kept buying into a halted name.",
    "failed_assumptions": "That a halted instrument sends no quotes.",
    "improvements": "Skip instruments whose exchange status is halted.",
    "follow_ups": [
        {"item": "Exchange status feed", "owner": "otto-operator"},
        {"item": "Backtest the halted-name filter", "owner": "rita-risk"},
    ],
}
CONTACT = {
    "name": "Dana Duty",
    "role": "Head of trading",
    "phone": "+44 20 7946 0000",
    "email": "dana@example.com",
    "escalation_order": 1,
}


@pytest.fixture
def alpha(make_engine: Any) -> Engine:
    engine, _ = make_engine("alpha", mode="paper")
    return engine


def put(client: Client, path: str, body: Any) -> tuple[int, dict]:
    response = client.put(path, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


def test_the_whole_incident_through_the_api(alpha, risk_manager, operator, viewer, kill):
    seq = book(alpha)
    batch = kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    flattened(alpha, seq=seq)
    answer_kill(alpha, batch)

    listed = token_client(viewer).get("/api/v1/incidents?state=open")
    assert listed.status_code == 200, listed.content
    [row] = listed.json()
    assert (row["id"], row["engines"], row["steps_done"], row["steps_total"]) == (
        incident.pk,
        ["alpha"],
        3,
        8,
    )
    read = token_client(viewer).get(f"/api/v1/incidents/{incident.pk}").json()
    assert read["snapshot"]["engines"][0]["positions"][0]["symbol"] == "AAPL"
    assert read["kill_batch"] == str(batch.pk)
    assert {s["key"]: s["by"] for s in read["steps"] if s["done"]} == {
        "kill": "data",
        "cancel_orders": "data",
        "decide": "data",
    }

    url = f"/api/v1/incidents/{incident.pk}"
    status, body = post(token_client(operator), f"{url}/steps/assess", {"note": "one position"})
    assert status == 200, body
    assert [s["done_by"] for s in body["steps"] if s["key"] == "assess"] == ["otto-operator"]
    status, body = post(token_client(risk_manager), f"{url}/close", {})
    assert status == 409 and "post-mortem" in body["detail"]
    status, body = put(token_client(risk_manager), f"{url}/postmortem", POSTMORTEM)
    assert status == 200, body
    assert body["postmortem"]["follow_ups"][1]["owner"] == "rita-risk"
    status, body = post(token_client(risk_manager), f"{url}/close", {})
    assert status == 200, body
    assert (body["state"], body["closed_by"]) == ("closed", "rita-risk")
    actions = list(
        AuditEvent.objects.filter(target_type="incident").values_list("action", flat=True)
    )
    assert actions.count("incident_step_done") == 4
    assert {"incident_open", "incident_postmortem_write", "incident_close"} <= set(actions)


def test_an_operator_opens_an_incident_by_hand_and_a_viewer_may_not(alpha, operator, viewer):
    body = {"title": "Fills look odd", "reason": "prices 2 % off", "engines": ["alpha"]}
    status, answer = post(token_client(viewer), "/api/v1/incidents", body)
    assert status == 403, answer
    status, answer = post(token_client(operator), "/api/v1/incidents", body)
    assert status == 201, answer
    assert answer["trigger"] == "by_hand" and answer["opened_by"] == "otto-operator"


@pytest.mark.parametrize(
    ("user", "method", "path", "body"),
    [
        ("viewer", "post", "/steps/assess", {}),
        ("operator", "put", "/postmortem", POSTMORTEM),
        ("operator", "post", "/close", {}),
        ("outsider", "post", "/steps/assess", {}),
    ],
)
def test_a_user_without_the_right_gets_403_and_nothing_changes(
    request, alpha, risk_manager, kill, user, method, path, body
):
    book(alpha)
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    client = token_client(request.getfixturevalue(user))
    url = f"/api/v1/incidents/{incident.pk}{path}"
    status, answer = post(client, url, body) if method == "post" else put(client, url, body)
    assert status == 403, answer
    assert not incident.steps.filter(done_at__isnull=False, by_data=False).exists()
    assert not PostMortem.objects.exists()
    assert Incident.objects.get().state == "open"


def test_an_outsider_cannot_read_incidents_or_contacts(alpha, outsider):
    assert token_client(outsider).get("/api/v1/incidents").status_code == 403
    assert token_client(outsider).get("/api/v1/contacts").status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"title": "a\u0000b", "reason": "r", "engines": ["alpha"]}, 400, "title"),
        ({"title": "t" * 201, "reason": "r", "engines": ["alpha"]}, 422, "title"),
        ({"title": 7, "reason": "r", "engines": ["alpha"]}, 422, "title"),
        ({"title": "t", "reason": "r", "engines": "alpha"}, 422, "engines"),
        ({"title": "t", "reason": "r", "engines": ["alpha"], "extra": 1}, 422, "extra"),
        ({"title": "t", "reason": "r", "alert": "x"}, 422, "alert"),
        ({"title": "t", "reason": "", "engines": ["alpha"]}, 400, "reason"),
        ({"title": "t", "reason": "r", "engines": ["ghost"]}, 400, "engines"),
    ],
)
def test_hostile_input_to_open_is_refused_by_field(alpha, operator, body, status, field):
    got, answer = post(token_client(operator), "/api/v1/incidents", body)
    assert got == status, answer
    assert field in answer.get("errors", {}) or field in answer["detail"], answer
    assert not Incident.objects.exists()


def test_bad_ticks_and_post_mortems_are_refused(alpha, risk_manager, operator, kill):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    url = f"/api/v1/incidents/{incident.pk}"
    status, body = post(token_client(operator), f"{url}/steps/cancel_orders", {})
    assert status == 409 and "from the data" in body["detail"]
    status, body = post(token_client(operator), f"{url}/steps/bogus", {})
    assert status == 400 and "step" in body["errors"]
    status, body = post(token_client(operator), f"{url}/steps/decide", {"decision": "pray"})
    assert status == 422 and "decision" in body["errors"]
    status, body = put(token_client(risk_manager), f"{url}/postmortem", POSTMORTEM | {"cause": 1})
    assert status == 422 and "cause" in body["errors"]
    no_owner = POSTMORTEM | {"follow_ups": [{"item": "x", "owner": " "}]}
    status, body = put(token_client(risk_manager), f"{url}/postmortem", no_owner)
    assert status == 400 and "follow_ups[0].owner" in body["errors"]
    status, body = put(
        token_client(risk_manager), f"{url}/postmortem", POSTMORTEM | {"improvements": "a\u0000"}
    )
    assert status == 400, body
    assert token_client(operator).get("/api/v1/incidents/999999").status_code == 404
    status, body = post(token_client(operator), "/api/v1/incidents/999999/steps/fix", {})
    assert status == 404


def test_contacts_are_written_by_risk_managers_and_audited(risk_manager, operator, viewer):
    status, body = post(token_client(operator), "/api/v1/contacts", CONTACT)
    assert status == 403, body
    status, created = post(token_client(risk_manager), "/api/v1/contacts", CONTACT)
    assert status == 201, created
    status, body = post(token_client(risk_manager), "/api/v1/contacts", CONTACT)
    assert status == 400 and "escalation_order" in body["errors"], body
    status, body = post(
        token_client(risk_manager), "/api/v1/contacts", CONTACT | {"phone": "call me"}
    )
    assert status == 400 and "phone" in body["errors"]
    status, body = post(
        token_client(risk_manager), "/api/v1/contacts", CONTACT | {"email": "not-an-address"}
    )
    assert status == 400 and "email" in body["errors"]
    status, body = post(
        token_client(risk_manager), "/api/v1/contacts", CONTACT | {"escalation_order": 0}
    )
    assert status == 422 and "escalation_order" in body["errors"]

    path = f"/api/v1/contacts/{created['id']}"
    status, body = put(token_client(operator), path, CONTACT | {"role": "CTO"})
    assert status == 403
    status, body = put(token_client(risk_manager), path, CONTACT | {"role": "CTO"})
    assert status == 200 and body["role"] == "CTO"
    assert [c["name"] for c in token_client(viewer).get("/api/v1/contacts").json()] == ["Dana Duty"]
    assert token_client(operator).delete(path).status_code == 403
    assert token_client(risk_manager).delete(path).status_code == 204
    assert not EmergencyContact.objects.exists()
    actions = list(
        AuditEvent.objects.filter(target_type="emergencycontact")
        .order_by("ts")
        .values_list("action", flat=True)
    )
    assert actions == ["contact_create", "contact_update", "contact_delete"]
    [update] = AuditEvent.objects.filter(action="contact_update")
    assert (update.data["before"]["role"], update.data["after"]["role"]) == (
        "Head of trading",
        "CTO",
    )


def test_the_openapi_schema_has_every_incident_and_contact_operation(viewer):
    schema = token_client(viewer).get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/api/v1/incidents"]) == {"get", "post"}
    assert set(paths["/api/v1/incidents/{incident_id}"]) == {"get"}
    assert set(paths["/api/v1/incidents/{incident_id}/steps/{step}"]) == {"post"}
    assert set(paths["/api/v1/incidents/{incident_id}/postmortem"]) == {"put"}
    assert set(paths["/api/v1/incidents/{incident_id}/close"]) == {"post"}
    assert set(paths["/api/v1/contacts"]) == {"get", "post"}
    assert set(paths["/api/v1/contacts/{contact_id}"]) == {"put", "delete"}
    close = paths["/api/v1/incidents/{incident_id}/close"]["post"]
    assert {"403", "404", "409"} <= set(close["responses"])
