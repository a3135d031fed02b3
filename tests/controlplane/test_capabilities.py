"""Capabilities (docs/protocol.md, "Capabilities"): what an engine says in its hello it can
enforce is stored and shown on its page; a command of a kind it does not handle fails unsent,
and a pre-trade limit kind it cannot enforce is flagged, each raising an alert through the
shipped rule, instead of silently "succeeding"; commands may target one strategy."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from alerts.models import Alert, AlertRule
from controlplane.commands import delivery
from controlplane.commands.errors import CommandInvalid
from controlplane.commands.issuing import command_batch_issue
from controlplane.gateway import session
from controlplane.models import Command, Engine, TradingState
from engine_sdk import protocol as p
from risk.models import LimitKind, RiskLimit, Scope
from tests.controlplane.test_api import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def engine(engine_and_token) -> Engine:
    return engine_and_token[0]


@pytest.fixture
def rule() -> AlertRule:
    # The rule alerts/0011 ships (a transactional test before this one may have flushed it).
    rule, _ = AlertRule.objects.get_or_create(
        name="Cannot enforce",
        defaults={"metric": "capability_missing", "severity": "warning", "threshold": 0},
    )
    return rule


@pytest.fixture
def pushed(monkeypatch) -> list[p.Command]:
    """The commands pushed to the engines (on commit)."""
    commands: list[p.Command] = []

    def push(frames: delivery.Frames) -> bool:
        for batch in frames.values():
            for _, text in batch:
                frame = p.decode_server_frame(text)
                assert isinstance(frame, p.Command)
                commands.append(frame)
        return True

    monkeypatch.setattr(delivery, "push", push)
    return commands


def _hello(engine: Engine, caps: p.Capabilities | None) -> list[p.ServerFrame]:
    frame = p.Hello(
        protocol=p.PROTOCOL_VERSION,
        engine_build="b",
        config_hash="c",
        mode="paper",
        broker="sim",
        account="acc",
        trading_state="ACTIVE",
        last_seq=0,
        capabilities=caps,
    )
    return session.hello(engine, frame, None)


def _alerts(engine: Engine) -> list[str]:
    return list(
        Alert.objects.filter(engine=engine, rule__metric="capability_missing").values_list(
            "summary", flat=True
        )
    )


def test_capabilities_are_stored_and_shown_on_the_engine_page(engine, client, operator):
    _hello(engine, p.Capabilities(commands=["pause", "kill"], limit_kinds=["max_order_qty"]))

    engine.refresh_from_db()
    assert engine.capabilities == {"commands": ["pause", "kill"], "limit_kinds": ["max_order_qty"]}
    client.force_login(operator)
    page = client.get(reverse("dashboard:engine", args=[engine.name])).content.decode()
    assert "commands pause, kill" in page and "limit kinds max_order_qty" in page
    assert "Cannot enforce" not in page


def test_an_engine_that_says_nothing_is_taken_to_enforce_everything(engine, client, operator):
    _hello(engine, None)

    engine.refresh_from_db()
    assert engine.capabilities is None
    client.force_login(operator)
    page = client.get(reverse("dashboard:engine", args=[engine.name])).content.decode()
    assert "every command and limit kind is taken as enforced" in page


def test_a_command_the_engine_does_not_handle_fails_unsent_and_raises_an_alert(
    engine, rule, pushed, client, operator, django_capture_on_commit_callbacks
):
    _hello(engine, p.Capabilities(commands=["kill", "flatten"]))

    with django_capture_on_commit_callbacks(execute=True):
        _, (command,) = _issue("pause", engine)

    stored = Command.objects.get(pk=command.pk)
    assert stored.status == Command.Status.FAILED == command.status
    assert "does not handle pause" in stored.detail and stored.completed_at is not None
    assert pushed == []  # nothing went out to the engine
    engine.refresh_from_db()
    assert engine.desired_state == TradingState.ACTIVE  # not latched PAUSED
    assert _alerts(engine) == [
        f"{engine.name} was asked a pause command, which it does not handle: it said in its "
        "hello it cannot enforce it"
    ]
    client.force_login(operator)
    page = client.get(reverse("dashboard:engine", args=[engine.name])).content.decode()
    assert "Cannot enforce: a pause command issued at" in page


def test_a_command_the_engine_handles_is_sent_as_before(
    engine, rule, pushed, django_capture_on_commit_callbacks
):
    _hello(engine, p.Capabilities(commands=["pause", "kill"]))

    with django_capture_on_commit_callbacks(execute=True):
        _, (command,) = _issue("pause", engine)

    assert Command.objects.get(pk=command.pk).status == Command.Status.PENDING
    assert [c.kind for c in pushed] == ["pause"]
    assert not _alerts(engine)


def test_a_kill_is_sent_even_to_an_engine_that_says_it_cannot_kill_and_the_page_flags_it(
    engine, pushed, client, risk_manager, django_capture_on_commit_callbacks
):
    _hello(engine, p.Capabilities(commands=["pause"]))

    with django_capture_on_commit_callbacks(execute=True):
        _, (command,) = command_issue_kill(engine)

    assert Command.objects.get(pk=command.pk).status == Command.Status.PENDING
    assert [c.kind for c in pushed] == ["kill"]
    client.force_login(risk_manager)
    page = client.get(reverse("dashboard:engine", args=[engine.name])).content.decode()
    assert "says it cannot handle kill: kills are still sent to it" in page


def test_a_limit_kind_the_engine_cannot_enforce_is_flagged_and_alerted(
    engine, rule, client, operator, django_capture_on_commit_callbacks
):
    RiskLimit.objects.create(kind=LimitKind.MAX_ORDER_QTY, scope=Scope.GLOBAL, threshold=5)
    RiskLimit.objects.create(kind=LimitKind.PRICE_COLLAR_PCT, scope=Scope.GLOBAL, threshold=5)

    with django_capture_on_commit_callbacks(execute=True):
        (welcome,) = _hello(engine, p.Capabilities(commands=[], limit_kinds=["max_order_qty"]))

    # The limits still go out (the engine may enforce what it can); the gap is told.
    assert isinstance(welcome, p.Welcome)
    assert {limit["kind"] for limit in welcome.limits} == {"max_order_qty", "price_collar_pct"}
    (summary,) = _alerts(engine)
    assert "pre-trade limits it cannot enforce (price_collar_pct)" in summary
    client.force_login(operator)
    page = client.get(reverse("dashboard:engine", args=[engine.name])).content.decode()
    assert "cannot enforce the pre-trade limit kind price_collar_pct, which applies to it" in page
    assert "kind max_order_qty" not in page


def test_a_limit_kind_the_engine_enforces_raises_nothing(
    engine, rule, django_capture_on_commit_callbacks
):
    RiskLimit.objects.create(kind=LimitKind.MAX_ORDER_QTY, scope=Scope.GLOBAL, threshold=5)

    with django_capture_on_commit_callbacks(execute=True):
        _hello(engine, p.Capabilities(limit_kinds=["max_order_qty"]))

    assert not _alerts(engine)


def test_a_command_may_target_one_strategy_leaving_the_engine_state(
    engine, pushed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        _, (command,) = _issue("flatten", engine, params={"strategy_id": "mean-rev"})

    assert Command.objects.get(pk=command.pk).params == {"strategy_id": "mean-rev"}
    (sent,) = pushed
    assert sent.strategy_id == "mean-rev"
    engine.refresh_from_db()
    assert engine.desired_state == TradingState.ACTIVE  # a flatten of all would leave REDUCING


@pytest.mark.parametrize("bad", ["", "x" * 65, "a\x00b", 7, " padded"])
def test_a_bad_strategy_id_is_refused_naming_the_field(engine, bad):
    with pytest.raises(CommandInvalid) as caught:
        _issue("cancel_all", engine, params={"strategy_id": bad})
    assert "strategy_id" in caught.value.message_dict
    assert not Command.objects.filter(engine=engine).exists()


def test_a_pause_takes_no_strategy(engine):
    with pytest.raises(CommandInvalid) as caught:
        _issue("pause", engine, params={"strategy_id": "trend"})
    assert "strategy_id" in caught.value.message_dict


def _issue(kind: str, engine: Engine, params: dict[str, Any] | None = None):
    return command_batch_issue(
        kind=kind,
        selector=f"engine:{engine.name}",
        reason="test",
        params=params,
        actor_label="test",
    )


def command_issue_kill(engine: Engine):
    return command_batch_issue(
        kind="kill", selector=f"engine:{engine.name}", reason="test", actor_label="test"
    )


def test_the_engines_api_shows_the_run_and_capabilities(engine, viewer):
    _hello(engine, p.Capabilities(commands=["kill"], limit_kinds=[]))
    Engine.objects.filter(pk=engine.pk).update(run_id="bt-7")

    (row,) = token_client(viewer).get("/api/v1/engines").json()

    assert row["run_id"] == "bt-7"
    assert row["capabilities"] == {"commands": ["kill"], "limit_kinds": []}
