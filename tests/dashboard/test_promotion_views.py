"""The promotion section of the go-live page: request, approve, reject, cancel (golive.services)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from controlplane.models import AuditEvent, StageChange
from golive import services
from golive.models import PromotionCriterion, PromotionRequest

pytestmark = pytest.mark.django_db

PAGE = "/engines/alpha/go-live/"


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def paper(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    PromotionCriterion.objects.filter(from_stage="paper").exclude(key="min_days").update(
        enabled=False
    )
    return engine


def started(engine, days: int) -> None:
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=days))


def decide(client: Client, request: PromotionRequest, decision: str, **data):
    return client.post(f"/go-live/promotions/{request.pk}/{decision}/", data, follow=True)


def test_an_operator_sees_the_request_form_and_requests(paper, operator):
    client = logged_in(operator)
    page = client.get(PAGE).content.decode()
    assert 'action="/engines/alpha/go-live/promotion/"' in page
    response = client.post("/engines/alpha/go-live/promotion/", {"reason": "ready"}, follow=True)
    assert response.redirect_chain[-1] == (PAGE, 302)
    page = response.content.decode()
    assert "Promotion of alpha to Shadow requested" in page
    request = PromotionRequest.objects.get()
    assert f'data-promotion-request="{request.pk}"' in page
    assert "awaiting a second person" in page  # the requester may cancel, not approve
    assert "Request promotion" not in page


def test_a_viewer_sees_no_form_and_gets_a_403(paper, viewer):
    client = logged_in(viewer)
    assert "Request promotion" not in client.get(PAGE).content.decode()
    response = client.post("/engines/alpha/go-live/promotion/", {"reason": "please"})
    assert response.status_code == 403
    assert not PromotionRequest.objects.exists()
    assert AuditEvent.objects.filter(action="promotion_refused", actor="vera-viewer").exists()


def test_an_operator_may_not_approve(paper, operator, risk_manager):
    request = services.promotion_request(engine=paper, actor=risk_manager, reason="ready")
    client = logged_in(operator)
    page = client.get(PAGE).content.decode()
    assert "awaiting a risk manager" in page
    assert decide(client, request, "approve").status_code == 403
    assert decide(client, request, "reject", reason="no").status_code == 403
    assert decide(client, request, "cancel").status_code == 403
    assert client.post(f"/go-live/promotions/{request.pk}/bless/").status_code == 404
    request.refresh_from_db()
    assert request.status == "pending"


def test_a_risk_manager_approves_a_ready_step(paper, operator, risk_manager):
    started(paper, 20)
    request = services.promotion_request(engine=paper, actor=operator, reason="20 days")
    client = logged_in(risk_manager)
    page = client.get(PAGE).content.decode()
    assert f'action="/go-live/promotions/{request.pk}/approve/"' in page
    assert 'name="override"' not in page  # the gate passes: nothing to override
    page = decide(client, request, "approve", reason="ok").content.decode()
    assert "alpha promoted (Paper → Shadow)." in page
    assert '<li class="stage-step current" aria-current="step">Shadow</li>' in page
    paper.refresh_from_db()
    assert paper.stage == "shadow"


def test_a_failing_gate_is_refused_then_overridden_in_red(paper, operator, risk_manager):
    started(paper, 3)
    request = services.promotion_request(engine=paper, actor=operator, reason="eager")
    client = logged_in(risk_manager)
    assert 'name="override"' in client.get(PAGE).content.decode()
    page = decide(client, request, "approve", reason="fine").content.decode()
    assert "Approval refused: the gate of Paper → Shadow is not passed: Days in paper fails" in page
    page = decide(client, request, "approve", override="on").content.decode()
    assert "reason: an override of the gate needs a written reason" in page
    paper.refresh_from_db()
    assert paper.stage == "paper"
    page = decide(client, request, "approve", override="on", reason="signed off").content.decode()
    assert "over its failing gate: an override" in page
    assert '<tr class="override">' in page
    assert "<strong>override:</strong> signed off (approved by rita-risk over the gate" in page
    paper.refresh_from_db()
    assert paper.stage == "shadow"


def test_reject_and_cancel_from_the_page(paper, operator, risk_manager):
    request = services.promotion_request(engine=paper, actor=operator, reason="ready")
    client = logged_in(risk_manager)
    page = decide(client, request, "reject", reason="too soon").content.decode()
    assert "Promotion of alpha (Paper → Shadow) rejected." in page
    assert "too soon" in page
    again = services.promotion_request(engine=paper, actor=operator, reason="now")
    page = decide(logged_in(operator), again, "cancel").content.decode()
    assert "Promotion of alpha (Paper → Shadow) cancelled." in page
    assert PromotionRequest.objects.filter(status="pending").count() == 0


def test_the_posts_need_the_csrf_token(paper, operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post("/engines/alpha/go-live/promotion/", {"reason": "ready"})
    assert response.status_code == 403
    assert not PromotionRequest.objects.exists()
