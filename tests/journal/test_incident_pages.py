"""The incidents and contacts pages, server-rendered: who sees what, and the refusals."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client

from controlplane.models import Engine
from journal.models import Incident
from tests.journal.conftest import fx_book

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(make_engine: Any) -> Engine:
    engine, _ = make_engine("alpha", mode="paper")
    return engine


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_pages_render_for_a_viewer(alpha, risk_manager, viewer, kill):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    client = _client(viewer)
    listed = client.get("/incidents/")
    assert listed.status_code == 200
    assert b"Kill of alpha" in listed.content
    detail = client.get(f"/incidents/{incident.pk}/")
    assert detail.status_code == 200
    assert b"Rollback checklist" in detail.content
    assert b"postmortem-form" not in detail.content
    assert client.get("/contacts/").status_code == 200
    assert client.get("/incidents/999999/").status_code == 404


def test_an_outsider_is_refused_the_pages_and_the_writes(alpha, risk_manager, outsider, kill):
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    client = _client(outsider)
    assert client.get("/incidents/").status_code == 403
    assert client.get("/contacts/").status_code == 403
    opened = client.post("/incidents/open/", {"title": "t", "reason": "r", "engines": ["alpha"]})
    assert opened.status_code == 403
    assert client.post(f"/incidents/{incident.pk}/steps/fix/").status_code == 403
    assert client.post(f"/incidents/{incident.pk}/close/").status_code == 403
    added = client.post(
        "/contacts/add/",
        {
            "name": "x",
            "role": "y",
            "phone": "+1 212 555 0100",
            "email": "x@example.com",
            "escalation_order": "1",
        },
    )
    assert added.status_code == 403
    assert Incident.objects.count() == 1


def test_an_operator_opens_an_incident_from_the_page(alpha, operator):
    client = _client(operator)
    page = client.get("/incidents/?engine=alpha")
    assert b'<option value="alpha" selected>' in page.content
    response = client.post(
        "/incidents/open/",
        {"title": "Odd fills", "reason": "fills 2 % off", "engines": ["alpha"]},
    )
    incident = Incident.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/incidents/{incident.pk}/"
    assert incident.opened_by_label == "otto-operator"


def test_the_snapshot_shows_the_pnl_in_the_account_currency_and_names_a_missing_rate(
    alpha, risk_manager, viewer, kill
):
    fx_book(alpha, {"EUR": "1.1"})
    kill(alpha, actor=risk_manager)
    incident = Incident.objects.get()
    page = _client(viewer).get(f"/incidents/{incident.pk}/").content.decode()
    assert re.search(r"Realized P&amp;L \(USD\)</dt><dd class=\"num pos\">\+9\.90<", page)
    assert re.search(r"Unrealized P&amp;L \(USD\)</dt><dd class=\"num zero\">unknown<", page)
    assert "<dt>No FX rate</dt><dd>JPY</dd>" in page
