"""Helpers of the journal's tests: engines with a book, kills issued as the app issues them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from controlplane import events
from controlplane.commands import issuing
from controlplane.gateway import session
from controlplane.ingest.store import ingest_events
from controlplane.models import CommandBatch, Engine, Position
from engine_sdk import protocol as p
from tests.gateway import factories as f


def book(engine: Engine, *, seq: int = 1, symbol: str = "AAPL", working: bool = True) -> int:
    """A long position of 100 and, if ``working``, a resting limit order; returns the next seq."""
    now = datetime.now(UTC)
    rows: list[Any] = [
        p.AccountEvent(seq=seq, ts=now, equity=Decimal("100500"), cash=Decimal("80000")),
        p.OrderEvent(
            seq=seq + 1,
            ts=now,
            client_order_id=f"{symbol}-buy",
            symbol=symbol,
            side="buy",
            order_type="market",
            quantity=Decimal(100),
            status="filled",
        ),
        p.FillEvent(
            seq=seq + 2,
            ts=now,
            fill_id=f"{symbol}-f1",
            client_order_id=f"{symbol}-buy",
            symbol=symbol,
            side="buy",
            quantity=Decimal(100),
            price=Decimal("200"),
        ),
    ]
    if working:
        rows.append(
            p.OrderEvent(
                seq=seq + 3,
                ts=now,
                client_order_id=f"{symbol}-rest",
                symbol=symbol,
                side="sell",
                order_type="limit",
                quantity=Decimal(50),
                limit_price=Decimal("210"),
                status="accepted",
            )
        )
    ingest_events(engine_id=engine.pk, events=rows)
    return seq + len(rows)


def flattened(engine: Engine, *, seq: int, symbol: str = "AAPL") -> None:
    """What the engine reports after a kill with flatten: its order cancelled, its position sold."""
    now = datetime.now(UTC)
    ingest_events(
        engine_id=engine.pk,
        events=[
            p.OrderEvent(
                seq=seq,
                ts=now,
                client_order_id=f"{symbol}-rest",
                symbol=symbol,
                side="sell",
                order_type="limit",
                quantity=Decimal(50),
                limit_price=Decimal("210"),
                status="cancelled",
            ),
            p.OrderEvent(
                seq=seq + 1,
                ts=now,
                client_order_id=f"{symbol}-flat",
                symbol=symbol,
                side="sell",
                order_type="market",
                quantity=Decimal(100),
                status="filled",
            ),
            p.FillEvent(
                seq=seq + 2,
                ts=now,
                fill_id=f"{symbol}-f2",
                client_order_id=f"{symbol}-flat",
                symbol=symbol,
                side="sell",
                quantity=Decimal(100),
                price=Decimal("199"),
            ),
        ],
    )


def answer_kill(engine: Engine, batch: CommandBatch) -> None:
    """The engine confirms the kill: HALTED. Announced as the socket announces answers."""
    command = batch.commands.get(engine=engine)
    session.record(engine.pk, p.CommandAck(command_id=command.pk))
    session.record(
        engine.pk,
        p.CommandResult(command_id=command.pk, status="succeeded", trading_state="HALTED"),
    )
    events.announce(
        events.command_answered,
        engine_ids=[engine.pk],
        answers=[(engine.pk, command.pk, "succeeded")],
    )


@pytest.fixture
def kill(
    django_capture_on_commit_callbacks: Any,
) -> Callable[..., CommandBatch]:
    """Issue a kill as the app does, running what follows its commit (the incident's opening)."""

    def issue(engine: Engine, actor: Any = None, label: str | None = None) -> CommandBatch:
        with django_capture_on_commit_callbacks(execute=True):
            return issuing.command_issue(
                kind="kill",
                selector=f"engine:{engine.name}",
                reason="daily loss beyond the limit",
                params={"flatten": True},
                actor=actor,
                actor_label=label,
                confirmation=engine.name if actor is not None else None,
            )

    return issue


def fx_book(engine: Engine, rates: dict[str, str]) -> None:
    """A dollar account: a closed euro trade (+10 euros, less a 1.1 dollar fee: +9 euros), an
    open yen position (+100 yen on 10 shares) and an open dollar one (+2 on 1)."""
    ingest_events(
        engine_id=engine.pk,
        events=[
            f.account_fx(1, "100000", rates),
            f.instrument(2, "SX5E", currency="EUR"),
            f.instrument(3, "7203.T", currency="JPY"),
            f.order(4, "e-1", symbol="SX5E", qty="1"),
            f.fill(5, "e-1", "e-1", symbol="SX5E", qty="1", price="100"),
            f.order(6, "e-2", symbol="SX5E", side="sell", qty="1"),
            f.fill(7, "e-2", "e-2", symbol="SX5E", side="sell", qty="1", price="110", fee="1.1"),
            f.order(8, "j-1", symbol="7203.T", qty="10"),
            f.fill(9, "j-1", "j-1", symbol="7203.T", qty="10", price="3000"),
            f.order(10, "a-1", symbol="AAPL", qty="1"),
            f.fill(11, "a-1", "a-1", symbol="AAPL", qty="1", price="200"),
        ],
    )
    Position.objects.filter(engine=engine, instrument__symbol="7203.T").update(last_price=3100)
    Position.objects.filter(engine=engine, instrument__symbol="AAPL").update(last_price=202)
    engine.refresh_from_db()
