"""Reads of the engines domain, shared by views, the API and consumers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, DecimalField, ExpressionWrapper, F, Q, QuerySet, Sum
from django.db.models.functions import Abs, Coalesce

from controlplane.models import (
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    Position,
    ResumeRequest,
    TradingState,
)
from controlplane.trading_math import in_account_currency


def engine_list(*, mode: str | None = None, tag: str | None = None) -> QuerySet[Engine]:
    engines = Engine.objects.filter(is_active=True)
    if mode:
        engines = engines.filter(mode=mode)
    if tag:
        engines = engines.filter(strategy_tags__contains=[tag])
    return engines.order_by("name")


def engine_positions(*, engine: Engine) -> QuerySet[Position]:
    return engine.positions.select_related("instrument").order_by("instrument__symbol")


# What each kind achieves, for "7 of 8 engines halted": the word, and the test of a command.
_ACHIEVED: dict[str, tuple[str, Callable[[Command], bool]]] = {
    CommandKind.KILL: ("halted", lambda c: c.state_after == TradingState.HALTED),
    CommandKind.PAUSE: ("paused", lambda c: c.status in _DONE),
    CommandKind.RESUME: ("resumed", lambda c: c.state_after == TradingState.ACTIVE),
    CommandKind.REDUCE: ("reduced", lambda c: c.status == Command.Status.SUCCEEDED),
    CommandKind.FLATTEN: ("flattened", lambda c: c.status == Command.Status.SUCCEEDED),
    CommandKind.CANCEL_ALL: ("cancelled", lambda c: c.status == Command.Status.SUCCEEDED),
    CommandKind.SET_LIMITS: ("updated", lambda c: c.status == Command.Status.SUCCEEDED),
    CommandKind.KILL_DRILL: ("drilled", lambda c: c.status == Command.Status.SUCCEEDED),
}
_DONE = (Command.Status.SUCCEEDED, Command.Status.PARTIAL)


@dataclass(frozen=True)
class BatchProgress:
    total: int
    achieved: int
    verb: str
    by_status: dict[str, int]
    open: int
    incomplete: list[str]  # "engine-3: 2 orders still working"

    @property
    def summary(self) -> str:
        noun = "engine" if self.total == 1 else "engines"
        return f"{self.achieved} of {self.total} {noun} {self.verb}"

    @property
    def finished(self) -> bool:
        return self.open == 0


def batch_progress(batch: CommandBatch, commands: list[Command] | None = None) -> BatchProgress:
    if commands is None:
        commands = list(batch.commands.select_related("engine").order_by("engine__name"))
    verb, test = _ACHIEVED[batch.kind]
    by_status: dict[str, int] = {}
    for command in commands:
        by_status[command.status] = by_status.get(command.status, 0) + 1
    return BatchProgress(
        total=len(commands),
        achieved=sum(1 for c in commands if test(c)),
        verb=verb,
        by_status=by_status,
        open=sum(1 for c in commands if c.status in Command.OPEN),
        incomplete=[
            f"{c.engine.name}: {c.shortfall}"
            for c in commands
            if c.status in (Command.Status.PARTIAL, Command.Status.FAILED)
        ],
    )


def command_list(
    *, engine: Engine | None = None, status: str | None = None, limit: int = 100
) -> QuerySet[Command]:
    commands = Command.objects.select_related("engine", "batch")
    if engine is not None:
        commands = commands.filter(engine=engine)
    if status:
        commands = commands.filter(status=status)
    return commands.order_by("-created_at")[:limit]


def resume_requests_open() -> QuerySet[ResumeRequest]:
    return ResumeRequest.objects.filter(status=ResumeRequest.Status.OPEN).select_related("engine")


def position_figures(engines: list[Engine]) -> dict[int, dict[str, Any]]:
    """Each engine's open positions, mismatches and gross exposure in its account currency
    (|quantity| x price x multiplier, converted at its latest FX rates: docs/risk.md)."""
    exposure = ExpressionWrapper(
        Abs(F("quantity"))
        * Coalesce(F("last_price"), F("avg_price"))
        * F("instrument__multiplier"),
        output_field=DecimalField(max_digits=48, decimal_places=14),
    )
    by_id = {engine.pk: engine for engine in engines}
    figures: dict[int, dict[str, Any]] = {}
    rows = (
        Position.objects.filter(engine_id__in=list(by_id))
        .values("engine_id", "instrument__currency")
        .annotate(
            open=Count("pk", filter=~Q(quantity=0)),
            gross=Sum(exposure),
            mismatches=Count("pk", filter=Q(mismatch_since__isnull=False)),
        )
    )
    for row in rows:
        engine = by_id[row["engine_id"]]
        into = figures.setdefault(
            engine.pk, {"open": 0, "gross": Decimal(0), "mismatches": 0, "unconverted": []}
        )
        into["open"] += row["open"]
        into["mismatches"] += row["mismatches"]
        currency = row["instrument__currency"]
        gross = in_account_currency(
            row["gross"] or Decimal(0), currency, engine.account_currency, engine.fx_rates or {}
        )
        if gross is None:
            if row["open"]:
                into["unconverted"].append(currency)
        else:
            into["gross"] += gross
    return figures
