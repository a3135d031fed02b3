"""An operator explains an alert: what caused it, who and when, audited. An empty explanation or a
viewer's is refused and nothing is stored; an explained critical alert no longer holds back the
go-live gate."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from alerts import services
from alerts.models import Alert, Severity
from controlplane.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def alert(make_engine) -> Alert:
    engine, _ = make_engine("alpha")
    return Alert.objects.create(
        engine=engine, severity=Severity.CRITICAL, summary="drawdown 9 %", state="firing"
    )


def login(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_an_operator_explains_an_alert_and_the_audit_log_keeps_it(alert, operator):
    services.alert_explain(alert=alert, actor=operator, text="  the venue halted trading  ")

    alert.refresh_from_db()
    assert alert.explanation == "the venue halted trading"
    assert (alert.explained_by, alert.explained_by_label) == (operator, "otto-operator")
    assert alert.explained_at is not None
    record = AuditEvent.objects.get(action="alert_explain")
    assert record.reason == "the venue halted trading"
    assert record.data["before"] == ""

    services.alert_explain(alert=alert, actor=operator, text="a stale price feed, fixed")
    again = AuditEvent.objects.filter(action="alert_explain").latest("pk")
    assert again.data["before"] == "the venue halted trading"


@pytest.mark.parametrize("text", ["", "   ", "x" * (services.MAX_EXPLANATION + 1)])
def test_an_empty_or_oversized_explanation_is_refused_naming_the_field(alert, operator, text):
    with pytest.raises(ValidationError) as refused:
        services.alert_explain(alert=alert, actor=operator, text=text)
    assert list(refused.value.message_dict) == ["explanation"]
    alert.refresh_from_db()
    assert alert.explanation == "" and alert.explained_at is None
    assert not AuditEvent.objects.filter(action="alert_explain").exists()


def test_a_viewer_may_not_explain(alert, viewer):
    with pytest.raises(PermissionDenied, match="may not explain alerts"):
        services.alert_explain(alert=alert, actor=viewer, text="a guess")
    alert.refresh_from_db()
    assert alert.explanation == ""


def test_the_alerts_page_explains_through_its_form(alert, operator):
    client = login(operator)
    page = client.get("/alerts/?engine=alpha")
    assert f'action="/alerts/{alert.pk}/explain/"' in page.content.decode()

    response = client.post(f"/alerts/{alert.pk}/explain/", {"explanation": "fat finger"})
    assert response.status_code == 302
    assert _messages(response) == ["Explained: drawdown 9 %"]
    alert.refresh_from_db()
    assert alert.explanation == "fat finger"
    assert "fat finger" in client.get("/alerts/?engine=alpha").content.decode()
    assert "fat finger" not in client.get("/alerts/?engine=beta").content.decode()

    response = client.post(f"/alerts/{alert.pk}/explain/", {"explanation": " "})
    assert _messages(response) == ["explanation: Say what caused the alert."]
    alert.refresh_from_db()
    assert alert.explanation == "fat finger"


def test_a_viewer_gets_403_from_the_form_and_sees_no_form(alert, viewer):
    client = login(viewer)
    assert "explain/" not in client.get("/alerts/").content.decode()
    response = client.post(f"/alerts/{alert.pk}/explain/", {"explanation": "a guess"})
    assert response.status_code == 403
    alert.refresh_from_db()
    assert alert.explanation == ""
