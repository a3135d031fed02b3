"""Allocation (docs/risk.md, "Allocation"): target shares of the desk's capital per engine or
tag, edited by risk managers with a reason and a history, set against the actual shares on the
fleet page."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from controlplane.audit import AuditEvent
from controlplane.models import Engine
from risk import selectors, services
from risk.models import Allocation, AllocationChange, DeskCapital

pytestmark = pytest.mark.django_db


def _target(actor, scope: str, value: str, pct: str, **fields) -> Allocation:
    allocation = Allocation(scope=scope, scope_value=value, target_pct=Decimal(pct), **fields)
    services.allocation_save(allocation=allocation, reason="desk plan", actor=actor)
    return allocation


def _equity(engine: Engine, equity: str) -> None:
    Engine.objects.filter(pk=engine.pk).update(equity=Decimal(equity))


def test_target_against_actual_by_hand_over_the_desk_capital_and_the_fleet_equity(
    make_engine, risk_manager
):
    alpha = make_engine("alpha", strategy_tags=["momentum"])[0]
    beta = make_engine("beta", strategy_tags=["momentum", "fx"])[0]
    gamma = make_engine("gamma", strategy_tags=["fx"])[0]
    _equity(alpha, "300000")
    _equity(beta, "200000")
    _equity(gamma, "500000")
    _target(risk_manager, "engine", "alpha", "25")
    _target(risk_manager, "engine", "beta", "25")
    _target(risk_manager, "tag", "momentum", "60")

    # No desk capital: shares of the fleet's equity, 1,000,000.
    fleet = selectors.allocation_overview()
    assert (fleet.basis, fleet.capital) == ("fleet equity", Decimal(1000000))
    rows = {r.name: r for r in fleet.engines}
    assert (rows["alpha"].actual_pct, rows["alpha"].difference_pts) == (30, 5)
    assert (rows["beta"].actual_pct, rows["beta"].difference_pts) == (20, -5)
    assert (rows["gamma"].target_pct, rows["gamma"].difference_pts) == (None, None)
    assert fleet.engine_targets_pct == 50
    (momentum,) = fleet.tags
    # alpha + beta: 500,000 of 1,000,000 against 60 %.
    assert (momentum.equity, momentum.actual_pct, momentum.difference_pts) == (500000, 50, -10)

    services.desk_capital_set(
        amount=Decimal(2000000), reason="the fund's mandate", actor=risk_manager
    )
    desk = selectors.allocation_overview()
    assert (desk.basis, desk.capital) == ("desk capital", Decimal(2000000))
    assert {r.name: r.actual_pct for r in desk.engines} == {"alpha": 15, "beta": 10, "gamma": 25}
    assert desk.tags[0].difference_pts == -35


@pytest.mark.parametrize("pct", ["0", "-5", "100.01", "1000"])
def test_a_share_outside_0_to_100_is_refused_naming_the_field(make_engine, risk_manager, pct):
    make_engine("alpha")
    with pytest.raises(ValidationError) as refused:
        _target(risk_manager, "engine", "alpha", pct)
    assert "target_pct" in refused.value.message_dict
    assert not Allocation.objects.exists() and not AllocationChange.objects.exists()


def test_engine_targets_over_100_are_refused_and_tags_may_overlap(make_engine, risk_manager):
    make_engine("alpha")
    make_engine("beta")
    _target(risk_manager, "engine", "alpha", "70")
    with pytest.raises(ValidationError) as refused:
        _target(risk_manager, "engine", "beta", "40")
    assert "at most 30" in refused.value.message_dict["target_pct"][0]
    # Switched off, a target no longer counts; tags are not summed.
    _target(risk_manager, "engine", "beta", "40", enabled=False)
    _target(risk_manager, "tag", "momentum", "80")
    _target(risk_manager, "tag", "fx", "80")
    assert Allocation.objects.count() == 4


def test_an_unknown_engine_or_a_nul_is_refused_by_name(risk_manager):
    for value in ("nobody", "a\x00b", ""):
        with pytest.raises(ValidationError) as refused:
            _target(risk_manager, "engine", value, "10")
        assert "scope_value" in refused.value.message_dict
    with pytest.raises(services.ReasonRequired):
        services.allocation_save(
            allocation=Allocation(scope="tag", scope_value="fx", target_pct=Decimal(5)),
            reason=" ",
            actor=risk_manager,
        )
    with pytest.raises(ValidationError):
        services.desk_capital_set(amount=Decimal(-1), reason="x", actor=risk_manager)
    assert not Allocation.objects.exists() and not DeskCapital.objects.exists()


def test_every_change_is_kept_with_its_reason_and_audited(make_engine, risk_manager):
    make_engine("alpha")
    allocation = _target(risk_manager, "engine", "alpha", "10")
    allocation.target_pct = Decimal(15)
    services.allocation_save(allocation=allocation, reason="more room", actor=risk_manager)
    assert (
        services.allocation_save(allocation=allocation, reason="again", actor=risk_manager) is None
    )
    history = list(allocation.changes.order_by("pk").values_list("change", "changes", "reason"))
    assert history == [
        (
            "created",
            {
                "scope": [None, "engine"],
                "scope_value": [None, "alpha"],
                "target_pct": [None, "10"],
                "enabled": [None, True],
            },
            "desk plan",
        ),
        ("changed", {"target_pct": ["10", "15"]}, "more room"),
    ]
    assert AuditEvent.objects.filter(action="allocation.saved").count() == 2
    assert allocation.version == 2


def _admin_post(user, data: dict) -> int:
    client = Client()
    client.force_login(user)
    response = client.post("/admin/risk/allocation/add/", data)
    if response.status_code == 302 and "/login/" in response.url:
        return 403  # not let into the admin at all
    return response.status_code


def test_risk_managers_set_targets_in_the_admin_and_operators_cannot(
    make_engine, risk_manager, operator
):
    make_engine("alpha")
    data = {
        "scope": "engine",
        "scope_value": "alpha",
        "target_pct": "20",
        "enabled": "on",
        "change_reason": "desk plan",
        "changes-TOTAL_FORMS": "0",
        "changes-INITIAL_FORMS": "0",
    }
    assert _admin_post(operator, data) == 403
    assert not Allocation.objects.exists()
    assert _admin_post(risk_manager, data) == 302
    assert Allocation.objects.get().changes.get().changed_by_label == risk_manager.username
    # Over 100 % in all: the form says so, nothing is saved.
    make_engine("beta")
    over = {**data, "scope_value": "beta", "target_pct": "90"}
    assert _admin_post(risk_manager, over) == 200
    assert Allocation.objects.count() == 1


def test_the_fleet_page_shows_target_against_actual(make_engine, risk_manager, viewer):
    alpha = make_engine("alpha", strategy_tags=["momentum"])[0]
    _equity(alpha, "250000")
    _target(risk_manager, "engine", "alpha", "30")
    _target(risk_manager, "tag", "momentum", "20")
    services.desk_capital_set(amount=Decimal(1000000), reason="mandate", actor=risk_manager)
    client = Client()
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "Shares of the desk capital (1,000,000)" in page
    row = page.split('data-allocation="engine:alpha"')[1].split("</tr>")[0]
    assert 'data-col="target">30 %' in row and 'data-col="actual">25.0 %' in row
    assert "-5.0 pts" in row
    tag = page.split('data-allocation="tag:momentum"')[1].split("</tr>")[0]
    assert "+5.0 pts" in tag
