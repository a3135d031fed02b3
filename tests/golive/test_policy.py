"""The promotion policy: defaults, strict validation, history and audit, who may edit it."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from controlplane.models import AuditEvent
from golive import policy, services
from golive.models import PromotionCriterion, PromotionCriterionChange

pytestmark = pytest.mark.django_db


def _criterion(from_stage: str, key: str) -> PromotionCriterion:
    return PromotionCriterion.objects.get(from_stage=from_stage, key=key)


def test_the_defaults_are_there_with_their_history():
    assert {(c.from_stage, c.key) for c in PromotionCriterion.objects.all()} == set(policy.CATALOG)
    assert _criterion("backtest", "baseline_sharpe").threshold == 1
    assert _criterion("backtest", "baseline_max_drawdown_pct").threshold == 15
    assert _criterion("backtest", "baseline_profit_factor").threshold == Decimal("1.3")
    assert _criterion("paper", "min_days").threshold == 14
    assert _criterion("paper", "min_round_trips").threshold == 30
    assert _criterion("paper", "rejection_rate_pct").threshold == 1
    ratio = _criterion("paper", "trade_count_ratio")
    assert (ratio.threshold, ratio.threshold_high) == (Decimal("0.8"), Decimal("1.25"))
    assert _criterion("shadow", "min_days").threshold == 7
    assert _criterion("small_capital", "min_days").threshold == 28
    assert _criterion("small_capital", "kill_drill_days").threshold == 30
    # Created at version 1; the slippage criterion changed once since, by a migration, when it
    # came to measure the market against the model.
    slippage = _criterion("shadow", "slippage_bps")
    assert (slippage.threshold, slippage.version) == (2, 2)
    assert slippage.changes.first().changes == {"threshold": ["5", "2"]}
    assert PromotionCriterionChange.objects.count() == len(policy.CATALOG) + 1
    assert AuditEvent.objects.filter(action="promotion_criterion_create").count() == len(
        policy.CATALOG
    )
    assert str(ratio) == "Paper → Shadow: Trade count / the baseline's"
    assert ratio.threshold_text == "between 0.8 and 1.25"


def test_a_change_needs_a_reason_and_is_kept_with_before_and_after(risk_manager):
    criterion = _criterion("paper", "min_days")
    criterion.threshold = Decimal(21)
    with pytest.raises(services.ReasonRequired):
        services.criterion_save(criterion=criterion, reason="  ", actor=risk_manager)
    change = services.criterion_save(
        criterion=criterion, reason="three weeks after the last incident", actor=risk_manager
    )
    assert change is not None
    assert change.changes == {"threshold": ["14", "21"]}
    assert change.version == 2 and change.changed_by_label == "rita-risk"
    audit = AuditEvent.objects.filter(action="promotion_criterion_change").latest("pk")
    assert audit.reason == "three weeks after the last incident"
    assert audit.data["changes"] == {"threshold": ["14", "21"]}
    assert audit.target_id == str(criterion.pk)
    # Saving it unchanged writes nothing.
    assert services.criterion_save(criterion=criterion, reason="again", actor=risk_manager) is None


@pytest.mark.parametrize(
    ("from_stage", "key", "threshold", "high", "field", "words"),
    [
        ("paper", "min_days", "-1", None, "threshold", "at least 0"),
        ("paper", "min_days", "2.5", None, "threshold", "whole number"),
        ("paper", "rejection_rate_pct", "150", None, "threshold", "at most 100"),
        ("paper", "trade_count_ratio", "0.8", None, "threshold_high", "upper bound"),
        ("paper", "trade_count_ratio", "1.5", "1.2", "threshold_high", "not be below"),
        ("paper", "min_round_trips", "30", "40", "threshold_high", "leave this blank"),
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(
    from_stage, key, threshold, high, field, words
):
    criterion = _criterion(from_stage, key)
    criterion.threshold = Decimal(threshold)
    criterion.threshold_high = Decimal(high) if high is not None else None
    with pytest.raises(ValidationError) as caught:
        services.criterion_save(criterion=criterion, reason="try", actor=None)
    messages = caught.value.message_dict
    assert field in messages and words in " ".join(messages[field])


def _form(criterion: PromotionCriterion, **changes: str) -> dict[str, str]:
    form = {
        "enabled": "on",
        "threshold": str(criterion.threshold),
        "threshold_high": str(criterion.threshold_high or ""),
        "change_reason": "",
        "changes-TOTAL_FORMS": "0",
        "changes-INITIAL_FORMS": "0",
    }
    return {**form, **changes}


def test_a_risk_manager_edits_the_policy_in_the_admin_with_a_reason(risk_manager):
    client = Client()
    client.force_login(risk_manager)
    criterion = _criterion("shadow", "slippage_bps")
    url = f"/admin/golive/promotioncriterion/{criterion.pk}/change/"
    assert client.get("/admin/golive/promotioncriterion/").status_code == 200
    without = client.post(url, _form(criterion, threshold="8", change_reason=" "))
    assert without.status_code == 200
    assert "change_reason" in without.context_data["adminform"].form.errors
    bad = client.post(url, _form(criterion, threshold="-3", change_reason="model v2"))
    assert bad.status_code == 200
    assert "at least 0" in bad.context_data["adminform"].form.errors["threshold"][0]
    done = client.post(url, _form(criterion, threshold="8", change_reason="model v2: 8 bps"))
    assert done.status_code == 302
    criterion.refresh_from_db()
    assert criterion.threshold == 8 and criterion.updated_by == "rita-risk"
    change = criterion.changes.first()
    assert change.reason == "model v2: 8 bps" and change.changes == {"threshold": ["2", "8"]}


def test_an_operator_cannot_edit_the_policy(operator):
    operator.is_staff = True
    operator.save()
    client = Client()
    client.force_login(operator)
    criterion = _criterion("shadow", "slippage_bps")
    url = f"/admin/golive/promotioncriterion/{criterion.pk}/change/"
    response = client.post(url, _form(criterion, threshold="50", change_reason="looser"))
    assert response.status_code == 403
    criterion.refresh_from_db()
    assert criterion.threshold == 2
