"""Post-trade limits evaluated as the gateway stores each batch: what the batch stored decides
whether there is anything to evaluate, and the evaluation reads the engine row the batch left."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection

from controlplane import sqlscript
from controlplane.gateway import batches, decoding
from controlplane.models import Command, Engine, Instrument
from risk import evaluation, services
from risk.models import LimitState, RiskEvent, RiskLimit
from tests.gateway import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    evaluation.forget_cached_limits()
    yield
    evaluation.forget_cached_limits()


def save(actor, **fields) -> RiskLimit:
    limit = RiskLimit(**fields)
    services.limit_save(limit=limit, reason="desk policy", actor=actor)
    evaluation.forget_cached_limits()  # this process would see it within a second
    return limit


@pytest.fixture
def send(monkeypatch):
    """Store a frame through the gateway; return the statements the risk evaluation ran, but
    the limits' revision check (once a second at most)."""
    seen: list[str] = []

    def note(execute, sql, params, many, context):
        if "risk_risklimitchange" not in sql:
            seen.append(sql)
        return execute(sql, params, many, context)

    original = evaluation.evaluate_engine

    def evaluate_engine(*args, **kwargs):
        with connection.execute_wrapper(note):
            return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_engine", evaluate_engine)

    def send(engine: Engine, *events) -> list[str]:
        seen.clear()
        frames, result = batches.events(engine.pk, decoding.decode_frame(f.events_frame(*events)))
        assert result is not None and not result.errors, frames
        return list(seen)

    return send


def test_an_account_batch_that_breaches_a_daily_loss_kills_once(make_engine, risk_manager, send):
    engine = make_engine("alpha")[0]
    limit = save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000), action="kill")

    send(engine, f.account(1, "100000"))
    send(engine, f.account(2, "98500"))  # 1,500 down on the day: 150 %
    statements = send(engine, f.account(3, "98000"))

    kill = Command.objects.get(engine=engine, kind="kill")
    assert kill.issued_by_label == f"limit #{limit.pk} max_daily_loss"
    assert Engine.objects.get(pk=engine.pk).desired_state == "HALTED"
    assert list(RiskEvent.objects.values_list("kind", flat=True)) == ["breach"]
    state = LimitState.objects.get(engine=engine, limit=limit)
    assert state.level == "breached" and state.value == Decimal(2000)
    # Neither the engine row nor the positions are read again: the limit's state is, and moved.
    assert len(statements) == 2
    assert all("risk_limitstate" in sqlscript.readable(sql) for sql in statements)


def test_a_batch_of_metrics_and_logs_is_not_evaluated_again(make_engine, risk_manager, send):
    engine = make_engine("alpha")[0]
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000))
    send(engine, f.account(1, "100000"), f.account(2, "99500"))

    assert send(engine, f.metric(3), f.log(4), f.position(5, "0"), f.state(6, "ACTIVE")) == []
    assert send(engine, f.account(7, "99400")) != []  # equity moved: evaluated


def test_a_batch_of_metrics_is_evaluated_when_the_limits_changed_since(
    make_engine, risk_manager, send
):
    engine = make_engine("alpha")[0]
    save(risk_manager, kind="max_daily_loss", threshold=Decimal(1000))
    send(engine, f.account(1, "100000"), f.account(2, "99500"))
    assert send(engine, f.metric(3)) == []

    save(risk_manager, kind="max_daily_loss", threshold=Decimal(400), action="pause")
    send(engine, f.metric(4))

    assert Command.objects.filter(engine=engine, kind="pause").count() == 1
    assert RiskEvent.objects.filter(kind="breach").count() == 1


def test_exposure_limits_read_the_positions_the_batch_left(make_engine, risk_manager, send):
    engine = make_engine("alpha")[0]
    Instrument.objects.create(symbol="XOM", sector="energy")
    save(
        risk_manager,
        kind="max_sector_pct",
        threshold=Decimal(30),
        scope="sector",
        scope_value="energy",
    )

    send(
        engine,
        f.account(1, "10000"),
        f.order(2, "o-1", symbol="XOM", qty="40"),
        f.fill(3, "f-1", "o-1", symbol="XOM", qty="40", price="100"),
    )

    (breach,) = RiskEvent.objects.filter(engine=engine)
    assert breach.kind == "breach" and "sector energy" in breach.message
    assert float(breach.value) == pytest.approx(40.0)  # 4,000 of 10,000
