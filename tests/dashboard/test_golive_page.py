"""The go-live page of an engine and the fleet's readiness marks (docs/going-live.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from controlplane import stages
from controlplane.models import StageChange
from golive.models import PromotionCriterion

pytestmark = pytest.mark.django_db


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def only_min_days(stage: str) -> None:
    """The step from ``stage`` gated by its days alone."""
    PromotionCriterion.objects.filter(from_stage=stage).exclude(key="min_days").update(
        enabled=False
    )


def started(engine, days: int) -> None:
    """The engine's current stage began ``days`` ago, as its history says."""
    StageChange.objects.filter(engine=engine).update(at=timezone.now() - timedelta(days=days))


def test_the_page_shows_the_ladder_the_next_steps_criteria_and_the_history(
    make_engine, viewer, risk_manager
):
    engine, _ = make_engine("alpha", mode="paper")
    started(engine, 3)
    stages.stage_set(
        engine=engine,
        to_stage="shadow",
        actor=risk_manager,
        actor_label=risk_manager.username,
        reason="approved although the gates failed",
        override=True,
    )
    response = logged_in(viewer).get("/engines/alpha/go-live/")
    assert response.status_code == 200
    page = response.content.decode()
    assert '<li class="stage-step current" aria-current="step">Shadow</li>' in page
    assert "Next step: Shadow → Small capital" in page
    assert 'id="gate-verdict">not ready' in page
    # Each enabled criterion of the step, with its threshold and a verdict.
    for criterion in PromotionCriterion.objects.filter(from_stage="shadow", enabled=True):
        assert f'data-key="{criterion.key}"' in page
    assert '<tr class="criterion criterion-fail" data-key="min_days">' in page
    # The history: the override in red, with its reason.
    assert '<tr class="override">' in page
    assert "<strong>override:</strong> approved although the gates failed" in page


def test_an_engine_that_passes_every_criterion_is_ready_on_its_page_and_in_the_fleet(
    make_engine, viewer
):
    ready, _ = make_engine("ready-one", mode="paper")
    waiting, _ = make_engine("waiting-one", mode="paper")
    only_min_days("paper")
    started(ready, 20)
    started(waiting, 2)
    client = logged_in(viewer)
    page = client.get("/engines/ready-one/go-live/").content.decode()
    assert 'id="gate-verdict">ready' in page
    assert '<tr class="criterion criterion-pass" data-key="min_days">' in page
    assert client.get("/live/readiness.json").json() == {"ready": {str(ready.pk): "shadow"}}
    # The fleet draws every stage at once and leaves readiness to the page's script.
    fleet = client.get("/").content.decode()
    assert 'data-readiness-url="/live/readiness.json"' in fleet
    assert fleet.count('class="stage-badge stage-paper"') == 2


def test_full_production_is_the_last_stage(make_engine, viewer):
    engine, _ = make_engine("done", mode="live")
    assert engine.stage == "full"
    page = logged_in(viewer).get("/engines/done/go-live/").content.decode()
    assert "done is in full production: the last stage." in page


def test_who_may_not_see_engines_sees_neither_the_page_nor_the_readiness(make_engine, outsider):
    make_engine("alpha", mode="paper")
    client = logged_in(outsider)
    assert client.get("/engines/alpha/go-live/").status_code == 403
    assert client.get("/live/readiness.json").status_code == 403
    assert Client().get("/live/readiness.json").status_code == 302  # to the login page


def test_the_step_into_real_money_shows_the_pre_flight_checks(make_engine, viewer):
    make_engine("shadowy", mode="shadow")
    make_engine("papery", mode="paper")
    client = logged_in(viewer)
    page = client.get("/engines/shadowy/go-live/").content.decode()
    assert "Next step: Shadow → Small capital" in page
    assert '<section class="preflight" id="preflight">' in page
    for key in ("market_data_fresh", "risk_system_active", "kill_switch_drilled", "clock_in_sync"):
        assert f'data-key="{key}"' in page
    assert "no heartbeat recorded its clock yet" in page
    # Paper to shadow sends no real order: no pre-flight.
    assert 'id="preflight"' not in client.get("/engines/papery/go-live/").content.decode()
