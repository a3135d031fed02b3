"""Promotions: an operator requests an engine's next stage, a second person with the risk right
approves; a failing gate refuses the approval unless a risk manager overrides it in writing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from controlplane.models import AuditEvent, StageChange
from golive import services
from golive.models import PromotionCriterion, PromotionRequest

pytestmark = pytest.mark.django_db


def only_min_days(stage: str) -> None:
    PromotionCriterion.objects.filter(from_stage=stage).exclude(key="min_days").update(
        enabled=False
    )


def started(engine, days: int) -> None:
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=days))


def actions(**filters) -> list[tuple[str, str]]:
    rows = AuditEvent.objects.filter(target_type="promotionrequest", **filters).order_by("pk")
    return [(row.action, row.outcome) for row in rows]


@pytest.fixture
def paper(make_engine):
    engine, _ = make_engine("alpha", mode="paper")
    only_min_days("paper")
    return engine


def test_an_operator_requests_and_a_risk_manager_approves_a_passing_gate(
    paper, operator, risk_manager
):
    started(paper, 20)
    request = services.promotion_request(engine=paper, actor=operator, reason="20 days clean")
    assert (request.status, request.from_stage, request.to_stage) == ("pending", "paper", "shadow")
    assert request.requested_by_label == "otto-operator"

    services.promotion_approve(request=request, actor=risk_manager, reason="looks good")
    request.refresh_from_db()
    paper.refresh_from_db()
    assert paper.stage == "shadow"
    assert paper.mode == "shadow"
    assert (request.status, request.decided_by_label, request.override) == (
        "approved",
        "rita-risk",
        False,
    )
    change = StageChange.objects.filter(engine=paper).first()
    assert (change.to_stage, change.override, change.actor_label) == ("shadow", False, "rita-risk")
    assert "requested by otto-operator: 20 days clean" in change.reason
    assert actions() == [("promotion_request", "ok"), ("promotion_approve", "ok")]


def test_the_requester_cannot_approve_their_own_request(paper, risk_manager):
    started(paper, 20)
    request = services.promotion_request(engine=paper, actor=risk_manager, reason="ready")
    with pytest.raises(services.PromotionRefused, match="a second person must"):
        services.promotion_approve(request=request, actor=risk_manager)
    paper.refresh_from_db()
    assert paper.stage == "paper"
    with pytest.raises(services.PromotionRefused, match="cancel it"):
        services.promotion_reject(request=request, actor=risk_manager, reason="no")
    assert PromotionRequest.objects.get().status == "pending"
    assert actions() == [
        ("promotion_request", "ok"),
        ("promotion_refused", "refused"),
        ("promotion_refused", "refused"),
    ]


def test_a_failing_gate_refuses_the_approval_naming_the_criterion(paper, operator, risk_manager):
    started(paper, 3)
    request = services.promotion_request(engine=paper, actor=operator, reason="eager")
    with pytest.raises(services.PromotionRefused) as refused:
        services.promotion_approve(request=request, actor=risk_manager, reason="fine")
    message = str(refused.value)
    assert "Paper → Shadow is not passed" in message
    assert "Days in paper fails (threshold >= 14 days, measured 3 days" in message
    paper.refresh_from_db()
    assert paper.stage == "paper"
    request.refresh_from_db()
    assert request.status == "pending"
    refusal = AuditEvent.objects.get(action="promotion_refused")
    assert refusal.outcome == "refused"
    assert refusal.data["failed"] == ["min_days"]
    assert "Days in paper" in refusal.data["refusal"]


def test_an_unknown_criterion_refuses_too(make_engine, operator, risk_manager):
    engine, _ = make_engine("beta", mode="paper")
    PromotionCriterion.objects.filter(from_stage="paper").exclude(
        key__in=["min_days", "rejection_rate_pct"]
    ).update(enabled=False)
    started(engine, 20)
    request = services.promotion_request(engine=engine, actor=operator, reason="ready")
    with pytest.raises(services.PromotionRefused, match="is not known"):
        services.promotion_approve(request=request, actor=risk_manager)


def test_a_risk_manager_overrides_the_failing_gate_with_a_written_reason(
    paper, operator, risk_manager
):
    started(paper, 3)
    request = services.promotion_request(engine=paper, actor=operator, reason="eager")
    with pytest.raises(ValidationError, match="written reason"):
        services.promotion_approve(request=request, actor=risk_manager, override=True)
    services.promotion_approve(
        request=request, actor=risk_manager, reason="desk head signed off", override=True
    )
    paper.refresh_from_db()
    request.refresh_from_db()
    assert paper.stage == "shadow"
    assert (request.status, request.override, request.decision_reason) == (
        "approved",
        True,
        "desk head signed off",
    )
    change = StageChange.objects.filter(engine=paper).first()
    assert change.override is True
    assert change.reason.startswith("desk head signed off")
    override = AuditEvent.objects.get(action="promotion_override")
    assert override.reason == "desk head signed off"
    assert override.data["failed"] == ["min_days"]
    assert AuditEvent.objects.get(action="engine_stage", data__to="shadow").data["override"]


def test_an_override_of_a_passing_gate_is_a_plain_approval(paper, operator, risk_manager):
    started(paper, 20)
    request = services.promotion_request(engine=paper, actor=operator, reason="ready")
    services.promotion_approve(request=request, actor=risk_manager, override=True)
    request.refresh_from_db()
    assert request.override is False
    assert StageChange.objects.filter(engine=paper).first().override is False


def test_reject_and_cancel(paper, operator, risk_manager):
    request = services.promotion_request(engine=paper, actor=operator, reason="ready")
    with pytest.raises(ValidationError, match="why"):
        services.promotion_reject(request=request, actor=risk_manager, reason=" ")
    services.promotion_reject(request=request, actor=risk_manager, reason="too soon")
    request.refresh_from_db()
    assert (request.status, request.decision_reason) == ("rejected", "too soon")

    again = services.promotion_request(engine=paper, actor=operator, reason="now?")
    with pytest.raises(PermissionDenied, match="only its requester"):
        services.promotion_cancel(request=again, actor=risk_manager)
    services.promotion_cancel(request=again, actor=operator)
    again.refresh_from_db()
    assert again.status == "cancelled"
    with pytest.raises(ValidationError, match="already decided"):
        services.promotion_cancel(request=again, actor=operator)
    assert ("promotion_reject", "ok") in actions()
    assert ("promotion_cancel", "ok") in actions()
    paper.refresh_from_db()
    assert paper.stage == "paper"


def test_one_pending_request_per_engine_and_none_at_full(make_engine, paper, operator):
    services.promotion_request(engine=paper, actor=operator, reason="ready")
    with pytest.raises(ValidationError, match="already requested by otto-operator"):
        services.promotion_request(engine=paper, actor=operator, reason="again")
    with pytest.raises(ValidationError, match="say why"):
        services.promotion_request(engine=paper, actor=operator, reason="")
    live, _ = make_engine("gamma", mode="live")
    with pytest.raises(ValidationError, match="full production"):
        services.promotion_request(engine=live, actor=operator, reason="more")


def test_rights_a_viewer_cannot_request_an_operator_cannot_approve(
    paper, viewer, operator, second_risk_manager
):
    with pytest.raises(services.PromotionForbidden, match="may not request"):
        services.promotion_request(engine=paper, actor=viewer, reason="please")
    request = services.promotion_request(engine=paper, actor=operator, reason="ready")
    with pytest.raises(services.PromotionForbidden, match="only risk managers"):
        services.promotion_approve(request=request, actor=operator)
    with pytest.raises(services.PromotionForbidden, match="only risk managers"):
        services.promotion_reject(request=request, actor=viewer, reason="no")
    refusals = AuditEvent.objects.filter(action="promotion_refused", outcome="refused")
    assert refusals.count() == 3


def test_an_approval_after_the_stage_moved_is_refused(paper, operator, risk_manager):
    from controlplane import stages

    started(paper, 20)
    request = services.promotion_request(engine=paper, actor=operator, reason="ready")
    stages.stage_set(engine=paper, to_stage="backtest", reason="test: moved back")
    with pytest.raises(services.PromotionRefused, match="no longer at Paper"):
        services.promotion_approve(request=request, actor=risk_manager)
    paper.refresh_from_db()
    assert paper.stage == "backtest"


def test_a_step_into_real_money_waits_for_the_pre_flight_checks_even_with_an_override(
    make_engine, operator, risk_manager
):
    shadow, _ = make_engine("sigma", mode="shadow")
    only_min_days("shadow")
    started(shadow, 10)
    request = services.promotion_request(engine=shadow, actor=operator, reason="clean shadow")
    with pytest.raises(services.PromotionRefused) as refused:
        services.promotion_approve(request=request, actor=risk_manager, reason="go", override=True)
    message = str(refused.value)
    assert "the pre-flight checks before real money do not pass" in message
    assert "Kill switch drilled" in message and "no kill drill passed in 30 days" in message
    shadow.refresh_from_db()
    assert (shadow.stage, shadow.mode) == ("shadow", "shadow")
    assert actions()[-1] == ("promotion_refused", "refused")
    refusal = AuditEvent.objects.filter(action="promotion_refused").last()
    assert "kill_switch_drilled" in refusal.data["preflight"]
