"""Stages: where a new engine may start, the history every move writes, and the mode that must
fit the stage (controlplane/stages.py, services.engine_create, models.MODES_OF_STAGE)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from controlplane import services, stages
from controlplane.models import (
    MODES_OF_STAGE,
    REAL_MONEY_STAGES,
    AuditEvent,
    Engine,
    Mode,
    Stage,
    StageChange,
)

pytestmark = pytest.mark.django_db

REFUSAL = (
    "a new engine starts at backtest or paper; shadow and above are reached through the gates "
    "(docs/going-live.md)"
)


def test_every_stage_allows_modes_and_only_the_real_money_stages_allow_live():
    assert set(MODES_OF_STAGE) == set(Stage.values)
    for stage, modes in MODES_OF_STAGE.items():
        assert modes and set(modes) <= set(Mode.values)
        assert (Mode.LIVE in modes) == (stage in REAL_MONEY_STAGES)


def test_a_new_engine_starts_at_paper_by_default_and_its_history_says_so(admin_user):
    engine, _ = services.engine_create(name="alpha", actor=admin_user)
    assert engine.stage == "paper" and engine.mode == "paper"
    (first,) = StageChange.objects.filter(engine=engine)
    assert (first.from_stage, first.to_stage) == ("", "paper")
    assert first.actor == admin_user and first.actor_label == admin_user.username
    assert not first.override
    created = AuditEvent.objects.get(action="engine_create", target_id=str(engine.pk))
    assert created.data["stage"] == "paper"


def test_a_backtest_engine_starts_at_backtest():
    engine, _ = services.engine_create(name="bt", mode="backtest")
    assert engine.stage == "backtest"
    assert StageChange.objects.get(engine=engine).to_stage == "backtest"


@pytest.mark.parametrize("stage", ["shadow", "small_capital", "full"])
def test_a_new_engine_above_paper_is_refused_with_the_reason(stage):
    with pytest.raises(ValidationError) as refused:
        services.engine_create(name="alpha", stage=stage)
    assert refused.value.message_dict == {"stage": [REFUSAL]}
    assert not Engine.objects.exists() and not StageChange.objects.exists()


@pytest.mark.parametrize("mode", ["live", "shadow"])
def test_a_new_engine_in_a_mode_above_paper_is_refused(mode):
    with pytest.raises(ValidationError) as refused:
        services.engine_create(name="alpha", mode=mode)
    (message,) = refused.value.message_dict["mode"]
    assert message == f"an engine at stage paper runs in paper mode, not {mode}: {REFUSAL}"
    assert not Engine.objects.exists()


def test_a_mode_that_does_not_fit_the_chosen_stage_is_refused():
    with pytest.raises(ValidationError, match="stage backtest runs in backtest mode, not paper"):
        services.engine_create(name="alpha", mode="paper", stage="backtest")


def test_the_create_engine_command_takes_a_stage_and_refuses_one_above_paper():
    out = StringIO()
    call_command("create_engine", "bt-1", "--mode", "backtest", "--stage", "backtest", stdout=out)
    assert "stage backtest" in out.getvalue()
    assert Engine.objects.get(name="bt-1").stage == "backtest"
    with pytest.raises(CommandError, match="stage: a new engine starts at backtest or paper"):
        call_command("create_engine", "sh-1", "--stage", "shadow", stdout=StringIO())
    with pytest.raises(CommandError, match="mode: an engine at stage paper runs in paper mode"):
        call_command("create_engine", "lv-1", "--mode", "live", stdout=StringIO())
    assert not Engine.objects.filter(name__in=["sh-1", "lv-1"]).exists()


def test_a_stage_change_writes_the_engine_its_history_and_the_audit(risk_manager):
    engine, _ = services.engine_create(name="alpha")
    change = stages.stage_set(
        engine=engine,
        to_stage="small_capital",
        reason="gates passed",
        actor=risk_manager,
        override=True,
    )
    stored = Engine.objects.get(pk=engine.pk)
    # Promoted to real money: its hello must now say live.
    assert (stored.stage, stored.mode) == ("small_capital", "live")
    assert (engine.stage, engine.mode) == ("small_capital", "live")
    assert (change.from_stage, change.to_stage, change.override) == ("paper", "small_capital", True)
    assert change.actor == risk_manager and change.reason == "gates passed"
    history = list(StageChange.objects.filter(engine=engine).values_list("to_stage", flat=True))
    assert history == ["small_capital", "paper"]
    audit = AuditEvent.objects.get(action="engine_stage", target_id=str(engine.pk))
    assert audit.actor == risk_manager.username and audit.reason == "gates passed"
    assert audit.data == {
        "from": "paper",
        "to": "small_capital",
        "override": True,
        "mode_from": "paper",
        "mode_to": "live",
        # Entering small capital: the capital ramp's first step.
        "capital_pct_from": None,
        "capital_pct_to": 25,
    }


def test_a_move_between_real_money_stages_keeps_the_live_mode():
    engine, _ = services.engine_create(name="alpha")
    stages.stage_set(engine=engine, to_stage="small_capital", reason="r", actor_label="policy")
    stages.stage_set(engine=engine, to_stage="full", reason="r", actor_label="policy")
    audit = AuditEvent.objects.filter(action="engine_stage").order_by("-pk").first()
    assert audit is not None
    assert audit.data == {
        "from": "small_capital",
        "to": "full",
        "override": False,
        "capital_pct_from": 25,
        "capital_pct_to": 100,
    }
    assert Engine.objects.get(pk=engine.pk).mode == "live"


def test_a_stage_change_announces_the_engine_after_the_commit(
    django_capture_on_commit_callbacks,
):
    from controlplane import events

    told: list[list[int]] = []

    def receiver(sender, *, engine_ids, **kwargs):
        told.append(engine_ids)

    engine, _ = services.engine_create(name="alpha")
    events.engines_changed.connect(receiver, dispatch_uid="test-stage-changed")
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            stages.stage_set(engine=engine, to_stage="shadow", reason="r", actor_label="t")
        assert told == []
        for callback in callbacks:
            callback()
    finally:
        events.engines_changed.disconnect(dispatch_uid="test-stage-changed")
    assert [engine.pk] in told


def test_a_stage_change_needs_a_known_stage_and_a_reason():
    engine, _ = services.engine_create(name="alpha")
    with pytest.raises(ValidationError, match="not a stage"):
        stages.stage_set(engine=engine, to_stage="moon", reason="r")
    with pytest.raises(ValidationError, match="needs a reason"):
        stages.stage_set(engine=engine, to_stage="shadow", reason=" ")
    assert StageChange.objects.filter(engine=engine).count() == 1


def test_a_mode_that_does_not_fit_the_stage_is_refused_by_the_engine_itself():
    engine, _ = services.engine_create(name="alpha")
    engine.mode = "live"
    with pytest.raises(ValidationError, match="stage paper runs in paper mode, not live"):
        engine.full_clean()


def test_the_admin_adds_an_engine_at_backtest_or_paper_only(client, admin_user):
    client.force_login(admin_user)
    form = {
        "name": "bt-1",
        "mode": "backtest",
        "broker": "",
        "account": "",
        "strategy_tags": "",
        "description": "",
        "is_active": "on",
    }
    added = client.post("/admin/controlplane/engine/add/", form)
    assert added.status_code == 302
    engine = Engine.objects.get(name="bt-1")
    assert engine.stage == "backtest"
    first = StageChange.objects.get(engine=engine)
    assert (first.from_stage, first.to_stage, first.actor) == ("", "backtest", admin_user)
    refused = client.post(
        "/admin/controlplane/engine/add/", form | {"name": "lv-1", "mode": "live"}
    )
    assert refused.status_code == 200
    assert "a new engine starts at backtest or paper" in refused.content.decode()
    shadow = client.post(
        "/admin/controlplane/engine/add/", form | {"name": "sh-1", "stage": "shadow"}
    )
    assert shadow.status_code == 200
    assert not Engine.objects.filter(name__in=["lv-1", "sh-1"]).exists()
