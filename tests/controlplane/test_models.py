from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import IntegrityError, InternalError, ProgrammingError, transaction
from django.db.models import ProtectedError, RestrictedError

from controlplane.models import AuditEvent, Engine, Fill, Instrument, Order

NOW = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)


@pytest.fixture
def order(engine_and_token):
    engine, _ = engine_and_token
    instrument = Instrument.objects.create(symbol="AAPL", sector="Technology")
    return Order.objects.create(
        engine=engine,
        client_order_id="o-1",
        instrument=instrument,
        side="buy",
        order_type="limit",
        quantity=Decimal("100"),
        limit_price=Decimal("190.5"),
        status="accepted",
        created_at=NOW,
        updated_at=NOW,
        last_seq=1,
    )


def _fill(order: Order, fill_id: str, **overrides) -> Fill:
    values = dict(
        engine=order.engine,
        fill_id=fill_id,
        order=order,
        instrument=order.instrument,
        side="buy",
        quantity=Decimal("10"),
        price=Decimal("190.25"),
        ts=NOW,
        seq=2,
    )
    values.update(overrides)
    return Fill.objects.create(**values)


def test_the_database_refuses_a_second_fill_with_the_same_engine_and_fill_id(order):
    _fill(order, "f-1")
    with pytest.raises(IntegrityError, match="fill_unique_id"), transaction.atomic():
        _fill(order, "f-1", seq=3)
    assert Fill.objects.filter(fill_id="f-1").count() == 1


def _order_of(engine: Engine, like: Order) -> Order:
    """An order of ``engine`` with ``like``'s client order id and instrument."""
    return Order.objects.create(
        engine=engine,
        client_order_id=like.client_order_id,
        instrument=like.instrument,
        side="buy",
        order_type="market",
        quantity=Decimal("5"),
        status="accepted",
        created_at=NOW,
        updated_at=NOW,
        last_seq=1,
    )


def test_the_same_fill_id_is_allowed_for_another_engine(order, make_engine):
    other, _ = make_engine("beta")
    _fill(order, "f-1")
    other_order = _order_of(other, order)
    _fill(other_order, "f-1")
    assert Fill.objects.filter(fill_id="f-1").count() == 2


@pytest.mark.parametrize("field", ["quantity", "price"])
def test_the_database_refuses_a_fill_with_a_non_positive_quantity_or_price(order, field):
    with pytest.raises(IntegrityError), transaction.atomic():
        _fill(order, "f-bad", **{field: Decimal("-1")})
    assert not Fill.objects.exists()


def test_money_and_quantities_come_back_as_exact_decimals(order):
    fill = _fill(order, "f-1", price=Decimal("0.10000001"), quantity=Decimal("3.33333333"))
    fill.refresh_from_db()
    assert fill.price == Decimal("0.10000001")
    assert fill.quantity * 3 == Decimal("9.99999999")
    assert fill.ts.tzinfo is not None


def test_an_audit_event_cannot_be_updated(db):
    event = AuditEvent.objects.create(actor="alice", action="kill", reason="runaway")
    with (
        pytest.raises((InternalError, ProgrammingError), match="append-only"),
        transaction.atomic(),
    ):
        AuditEvent.objects.filter(pk=event.pk).update(reason="nothing happened")
    event.reason = "edited through the ORM"
    with (
        pytest.raises((InternalError, ProgrammingError), match="append-only"),
        transaction.atomic(),
    ):
        event.save()
    assert AuditEvent.objects.get(pk=event.pk).reason == "runaway"


def test_an_audit_event_cannot_be_deleted(db):
    event = AuditEvent.objects.create(actor="alice", action="kill", reason="runaway")
    with (
        pytest.raises((InternalError, ProgrammingError), match="append-only"),
        transaction.atomic(),
    ):
        event.delete()
    with (
        pytest.raises((InternalError, ProgrammingError), match="append-only"),
        transaction.atomic(),
    ):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_a_kill_command_cannot_carry_an_expiry(engine_and_token):
    from controlplane.models import Command

    engine, _ = engine_and_token
    with pytest.raises(IntegrityError, match="command_kill_never_expires"), transaction.atomic():
        Command.objects.create(
            engine=engine, kind="kill", reason="test", issued_by_label="t", expires_at=NOW
        )


def test_deleting_an_instrument_with_orders_or_fills_is_refused_and_deletes_nothing(order):
    # The database has neither foreign keys nor indexes for these relations (migrations 0005,
    # 0008): Django's PROTECT check is what keeps the ledger whole.
    _fill(order, "f-1")
    with pytest.raises(ProtectedError), transaction.atomic():
        order.instrument.delete()
    assert Instrument.objects.filter(pk=order.instrument_id).exists()
    assert Order.objects.count() == 1 and Fill.objects.count() == 1


def test_deleting_an_engine_deletes_its_orders_and_fills_and_no_one_elses(order, make_engine):
    other, _ = make_engine("beta")
    other_order = _order_of(other, order)
    _fill(order, "f-1")
    _fill(other_order, "f-1")
    order.engine.delete()
    assert list(Order.objects.values_list("engine_id", flat=True)) == [other.pk]
    assert list(Fill.objects.values_list("engine_id", flat=True)) == [other.pk]


def test_an_order_with_fills_cannot_be_deleted_on_its_own(order):
    _fill(order, "f-1")
    with pytest.raises(RestrictedError), transaction.atomic():
        order.delete()
    assert Order.objects.count() == 1 and Fill.objects.count() == 1
