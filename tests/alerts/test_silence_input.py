"""The silence form's fields: a huge duration or a rule that does not exist is refused by name,
and no silence is stored."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from alerts.models import AlertRule, Silence

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(operator)
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


@pytest.mark.parametrize("minutes", ["1000000000000", str(10**30)])
def test_a_huge_duration_is_refused_naming_it(operator_client, minutes):
    response = operator_client.post("/alerts/silences/", {"minutes": minutes, "reason": "x"})

    assert response.status_code == 302
    assert _messages(response) == [
        "duration: A silence lasts at most 7 days; set a new one after that."
    ]
    assert not Silence.objects.exists()


@pytest.mark.parametrize("rule", ["not-a-number", "999999", "1" * 30])
def test_a_rule_that_does_not_exist_does_not_silence_everything(operator_client, rule):
    AlertRule.objects.create(name="loss", metric="latency_ms", threshold=1)

    response = operator_client.post(
        "/alerts/silences/", {"rule": rule, "minutes": "30", "reason": "x"}
    )

    assert response.status_code == 302
    assert _messages(response)[0].startswith("rule: no such rule")
    assert not Silence.objects.exists()


def test_a_silence_of_a_known_rule_is_stored(operator_client):
    rule = AlertRule.objects.create(name="loss", metric="latency_ms", threshold=1)

    operator_client.post("/alerts/silences/", {"rule": rule.pk, "minutes": "30", "reason": "x"})

    assert Silence.objects.get().rule == rule
