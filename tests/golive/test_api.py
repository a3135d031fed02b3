"""Promotions through the API: the same services as the go-live page, so the same four eyes,
rights, audit records and refusals, answered as 400, 403, 404 and 409."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.models import AuditEvent, StageChange
from golive import services
from golive.models import PromotionCriterion, PromotionRequest
from tests.controlplane.test_api import post, token_client

pytestmark = pytest.mark.django_db


def pending(engine, requester, reason: str) -> PromotionRequest:
    """A request made earlier (through the service, as the page or the API would)."""
    return services.promotion_request(engine=engine, actor=requester, reason=reason)


def started(engine, days: int) -> None:
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=days))


@pytest.fixture
def paper(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    PromotionCriterion.objects.filter(from_stage="paper").exclude(key="min_days").update(
        enabled=False
    )
    return engine


def test_the_gate_lists_each_criterion_with_threshold_value_and_evidence(paper, viewer):
    started(paper, 3)
    response = token_client(viewer).get("/api/v1/engines/alpha/gate")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["engine"], body["stage"], body["next_stage"], body["ready"]) == (
        "alpha",
        "paper",
        "shadow",
        False,
    )
    assert body["preflight"] is None
    [days] = body["criteria"]
    assert days["key"] == "min_days"
    assert days["threshold"] == ">= 14 days"
    assert days["value"] == pytest.approx(3, abs=0.01)
    assert days["status"] == "fail"
    assert days["evidence"]


def test_an_operator_requests_and_a_risk_manager_approves_through_the_api(
    paper, operator, risk_manager
):
    started(paper, 20)
    status, body = post(
        token_client(operator), "/api/v1/engines/alpha/promotion-requests", {"reason": "clean"}
    )
    assert status == 201, body
    assert (body["status"], body["from_stage"], body["to_stage"], body["requested_by"]) == (
        "pending",
        "paper",
        "shadow",
        "otto-operator",
    )

    listed = token_client(operator).get("/api/v1/engines/alpha/promotion-requests").json()
    assert [r["id"] for r in listed] == [body["id"]]

    status, decided = post(
        token_client(risk_manager),
        f"/api/v1/promotion-requests/{body['id']}/approve",
        {"reason": "fine"},
    )
    assert status == 200, decided
    assert (decided["status"], decided["decided_by"], decided["override"]) == (
        "approved",
        "rita-risk",
        False,
    )
    paper.refresh_from_db()
    assert paper.stage == "shadow"
    actions = AuditEvent.objects.filter(target_type="promotionrequest").order_by("pk")
    assert [a.action for a in actions] == ["promotion_request", "promotion_approve"]


def test_a_failing_gate_is_a_409_naming_the_criterion_and_an_override_needs_a_reason(
    paper, operator, risk_manager
):
    started(paper, 3)
    request = pending(paper, operator, "eager")
    client = token_client(risk_manager)
    path = f"/api/v1/promotion-requests/{request.pk}/approve"

    status, body = post(client, path, {})
    assert status == 409
    assert "Days in paper fails (threshold >= 14 days, measured 3 days" in body["detail"]
    assert AuditEvent.objects.get(action="promotion_refused").outcome == "refused"

    status, body = post(client, path, {"override": True})
    assert status == 400
    assert body["errors"] == {"reason": "an override of the gate needs a written reason"}

    status, body = post(client, path, {"override": True, "reason": "desk head signed off"})
    assert status == 200, body
    assert body["override"] is True
    paper.refresh_from_db()
    assert paper.stage == "shadow"
    assert StageChange.objects.filter(engine=paper).first().override


def test_the_requester_may_not_approve_their_own_request_but_may_cancel_it(paper, risk_manager):
    started(paper, 20)
    client = token_client(risk_manager)
    _, created = post(client, "/api/v1/engines/alpha/promotion-requests", {"reason": "ready"})

    status, body = post(client, f"/api/v1/promotion-requests/{created['id']}/approve", {})
    assert status == 409
    assert "a second person must" in body["detail"]

    status, body = post(client, f"/api/v1/promotion-requests/{created['id']}/cancel", {})
    assert status == 200 and body["status"] == "cancelled"

    status, body = post(client, f"/api/v1/promotion-requests/{created['id']}/cancel", {})
    assert status == 400
    assert body["errors"] == {"request": "this request was already decided"}
    paper.refresh_from_db()
    assert paper.stage == "paper"


@pytest.mark.parametrize("persona", ["viewer", "outsider"])
def test_who_lacks_the_right_gets_403_recorded_and_nothing_stored(paper, persona, request):
    user = request.getfixturevalue(persona)

    status, body = post(
        token_client(user), "/api/v1/engines/alpha/promotion-requests", {"reason": "ready"}
    )

    assert status == 403
    assert "may not request a promotion" in body["detail"]
    assert not PromotionRequest.objects.exists()
    assert AuditEvent.objects.get(action="promotion_refused").outcome == "refused"


def test_an_operator_may_not_approve_or_reject(paper, operator, second_risk_manager):
    request = pending(paper, second_risk_manager, "ready")
    client = token_client(operator)
    for decision in ("approve", "reject"):
        status, body = post(
            client, f"/api/v1/promotion-requests/{request.pk}/{decision}", {"reason": "x"}
        )
        assert status == 403, body
        assert "only risk managers may" in body["detail"]
    request.refresh_from_db()
    assert request.status == "pending"


def test_a_rejection_needs_a_reason_named_as_the_field(paper, operator, risk_manager):
    request = pending(paper, operator, "ready")
    path = f"/api/v1/promotion-requests/{request.pk}/reject"
    status, body = post(token_client(risk_manager), path, {"reason": "   "})
    assert status == 400
    assert body["errors"] == {"reason": "say why the promotion is rejected"}

    status, body = post(token_client(risk_manager), path, {"reason": "too soon"})
    assert status == 200 and body["status"] == "rejected"
    assert body["decision_reason"] == "too soon"


def test_bad_input_is_refused_naming_the_field_and_stores_nothing(paper, operator):
    client = token_client(operator)
    status, body = post(client, "/api/v1/engines/alpha/promotion-requests", {"reason": ""})
    assert status == 400
    assert "reason" in body["errors"]

    status, body = post(
        client, "/api/v1/engines/alpha/promotion-requests", {"reason": "x", "overide": True}
    )
    assert status == 422
    assert "overide" in body["errors"]
    assert not PromotionRequest.objects.exists()


def test_unknown_engines_and_requests_are_404(operator, risk_manager):
    client = token_client(risk_manager)
    assert client.get("/api/v1/engines/nope/gate").status_code == 404
    assert client.get("/api/v1/engines/nope/promotion-requests").status_code == 404
    status, body = post(client, "/api/v1/engines/nope/promotion-requests", {"reason": "x"})
    assert status == 404 and "nope" in body["detail"]
    status, body = post(client, "/api/v1/promotion-requests/999999/approve", {})
    assert status == 404 and "999999" in body["detail"]


def test_the_schema_documents_the_promotion_operations(operator):
    paths = token_client(operator).get("/api/v1/openapi.json").json()["paths"]
    approve = paths["/api/v1/promotion-requests/{request_id}/approve"]["post"]
    assert {"200", "400", "403", "404", "409"} <= set(approve["responses"])
    assert "/api/v1/engines/{name}/gate" in paths
