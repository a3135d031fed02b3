"""Broker statements: one day of an engine's account as its broker states it, reconciled against
the fill ledger (docs/going-live.md, "Broker statements").

A statement is a CSV file (docs/samples/broker-statement.csv):

    type,date,trade_id,order_id,symbol,side,quantity,price,fee
    trade,2026-12-04,EX-1001,3f9c0a1b2d4e-17,AAPL,buy,100,190.25,1.00
    position,2026-12-04,,,AAPL,,100,,

Every line is read before anything is stored: a statement with one bad line is refused whole,
each bad line named with its number and what is wrong, and nothing of it is kept.

Reconciling: each trade is matched to a fill of the same day (UTC) by ``trade_id`` (the fill_id,
which the SDK advises be the broker's execution id), else by its order and quantity. A trade with
no fill, a fill with no trade, a side, quantity, price or fee that differs, and an end-of-day
position that differs from the ledger's (the sum of the engine's fills up to the day's end) are
each a difference. The day's P&L agrees when the trades' cash flow and fees and the end-of-day
positions agree, both sides being marked at the same prices: the statement's summary beside the
ledger's shows it.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Final

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Sum

from controlplane import events
from controlplane.audit import audit_record
from controlplane.models import BrokerStatement, Engine, Fill, StatementDifference
from engine_sdk import protocol as p

MAX_BYTES: Final = 5 * 1024 * 1024
MAX_LINES: Final = 100_000
# How many bad lines a refusal names; the count says how many more there were.
MAX_ERRORS: Final = 50
COLUMNS: Final = (
    "type",
    "date",
    "trade_id",
    "order_id",
    "symbol",
    "side",
    "quantity",
    "price",
    "fee",
)
REQUIRED: Final = frozenset({"type", "date", "symbol", "quantity"})
_LIMIT: Final = Decimal(10) ** 16
_ZERO: Final = Decimal(0)
# The days a statement may be of: those the ledger's times can hold (the protocol's bounds).
FIRST_DAY: Final = date(1900, 1, 1)
LAST_DAY: Final = date(2999, 12, 31)


class StatementRefused(ValueError):
    """The statement cannot be read; ``errors`` lists (line number, reason), line 1 the header."""

    def __init__(self, errors: list[tuple[int, str]], more: int = 0) -> None:
        self.errors = errors
        self.more = more
        text = "; ".join(f"line {line}: {reason}" for line, reason in errors)
        if more:
            text += f"; and {more} more bad lines"
        super().__init__(f"broker statement refused, nothing stored: {text}")


@dataclass(frozen=True)
class Trade:
    line: int
    trade_id: str
    order_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal


@dataclass(frozen=True)
class Holding:
    line: int
    symbol: str
    quantity: Decimal


@dataclass
class Statement:
    day: date
    trades: list[Trade] = field(default_factory=list)
    positions: list[Holding] = field(default_factory=list)


def _decimal(text: str, name: str, *, positive: bool = False, signed: bool = False) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{name} {text[:40]!r} is not a number") from None
    if not value.is_finite() or abs(value) >= _LIMIT:
        raise ValueError(f"{name} {text[:40]!r} is not a finite number below 1e16")
    if value.as_tuple().exponent < -8:  # type: ignore[operator]
        raise ValueError(f"{name} {text[:40]!r} has more than 8 decimal places")
    if positive and value <= 0:
        raise ValueError(f"{name} must be above 0, got {text[:40]}")
    if not positive and not signed and value < 0:
        raise ValueError(f"{name} must not be negative, got {text[:40]}")
    return value


def _text(row: dict[str, str], name: str, limit: int, *, required: bool) -> str:
    value = (row.get(name) or "").strip()
    if required and not value:
        raise ValueError(f"{name} is missing")
    if len(value) > limit:
        raise ValueError(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character")
    return value


def parse(data: bytes) -> Statement:
    """Read a whole statement; raises StatementRefused naming every bad line (up to MAX_ERRORS)."""
    if len(data) > MAX_BYTES:
        raise StatementRefused([(0, f"the file is larger than {MAX_BYTES // 1024 // 1024} MB")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise StatementRefused([(0, f"the file is not UTF-8 text ({exc.reason})")]) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [name.strip().lower() for name in next(reader)]
    except StopIteration:
        raise StatementRefused([(1, "the file is empty: a header line is needed")]) from None
    except csv.Error as exc:
        raise StatementRefused([(1, f"unreadable CSV: {exc}")]) from None
    unknown = [name for name in header if name not in COLUMNS]
    missing = sorted(REQUIRED - set(header))
    if unknown or missing or len(set(header)) != len(header):
        problems = []
        if unknown:
            problems.append(f"unknown columns {', '.join(map(repr, unknown[:5]))}")
        if missing:
            problems.append(f"missing columns {', '.join(missing)}")
        if len(set(header)) != len(header):
            problems.append("a column appears twice")
        expected = ",".join(COLUMNS)
        raise StatementRefused([(1, f"{'; '.join(problems)} (expected {expected})")])

    errors: list[tuple[int, str]] = []
    more = 0
    trades: list[Trade] = []
    positions: list[Holding] = []
    days: dict[date, int] = {}
    seen_ids: dict[str, int] = {}
    seen_symbols: dict[str, int] = {}
    line = 1
    try:
        for cells in reader:
            line = reader.line_num
            if line > MAX_LINES:
                raise StatementRefused([(line, f"more than {MAX_LINES:,} lines")])
            if not any(cell.strip() for cell in cells):
                continue
            try:
                if len(cells) != len(header):
                    raise ValueError(f"{len(cells)} fields where the header has {len(header)}")
                item = _row(
                    dict(zip(header, cells, strict=True)), line, days, seen_ids, seen_symbols
                )
            except ValueError as exc:
                if len(errors) < MAX_ERRORS:
                    errors.append((line, str(exc)))
                else:
                    more += 1
                continue
            (trades if isinstance(item, Trade) else positions).append(item)  # type: ignore[arg-type]
    except csv.Error as exc:
        errors.append((reader.line_num, f"unreadable CSV: {exc}"))
    if errors:
        raise StatementRefused(errors, more)
    if not days:
        raise StatementRefused([(line, "no trade and no position: an empty statement")])
    return Statement(day=next(iter(days)), trades=trades, positions=positions)


def _row(
    row: dict[str, str],
    line: int,
    days: dict[date, int],
    seen_ids: dict[str, int],
    seen_symbols: dict[str, int],
) -> Trade | Holding:
    kind = _text(row, "type", 16, required=True).lower()
    if kind not in ("trade", "position"):
        raise ValueError(f"type must be trade or position, got {kind[:20]!r}")
    raw_day = _text(row, "date", 10, required=True)
    try:
        day = date.fromisoformat(raw_day)
    except ValueError:
        raise ValueError(f"date {raw_day!r} is not a date (YYYY-MM-DD)") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"date {day} is outside {FIRST_DAY} to {LAST_DAY}")
    if days and day not in days:
        first_day, first_line = next(iter(days.items()))
        raise ValueError(
            f"date {day} differs from {first_day} (line {first_line}): one statement is one day"
        )
    days.setdefault(day, line)
    symbol = _text(row, "symbol", p.MAX_SYMBOL_LENGTH, required=True)
    if kind == "position":
        if symbol in seen_symbols:
            raise ValueError(
                f"a second position for {symbol} (first on line {seen_symbols[symbol]})"
            )
        seen_symbols[symbol] = line
        quantity = _decimal(_text(row, "quantity", 40, required=True), "quantity", signed=True)
        return Holding(line=line, symbol=symbol, quantity=quantity)
    trade_id = _text(row, "trade_id", 64, required=True)
    if trade_id in seen_ids:
        raise ValueError(f"trade_id {trade_id!r} already on line {seen_ids[trade_id]}")
    seen_ids[trade_id] = line
    side = _text(row, "side", 8, required=True).lower()
    if side not in ("buy", "sell"):
        raise ValueError(f"side must be buy or sell, got {side[:20]!r}")
    fee_text = _text(row, "fee", 40, required=False)
    return Trade(
        line=line,
        trade_id=trade_id,
        order_id=_text(row, "order_id", 64, required=False),
        symbol=symbol,
        side=side,
        quantity=_decimal(_text(row, "quantity", 40, required=True), "quantity", positive=True),
        price=_decimal(_text(row, "price", 40, required=True), "price", positive=True),
        fee=_decimal(fee_text, "fee") if fee_text else _ZERO,
    )


# --- reconciling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fill:
    fill_id: str
    order_id: str
    symbol: str
    side: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    multiplier: Decimal


def _day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _ledger_fills(engine: Engine, day: date) -> list[_Fill]:
    start, end = _day_bounds(day)
    rows = (
        Fill.objects.filter(engine=engine, ts__gte=start, ts__lt=end)
        .order_by("ts", "pk")
        .values_list(
            "fill_id",
            "order__client_order_id",
            "instrument__symbol",
            "side",
            "quantity",
            "price",
            "fee",
            "instrument__multiplier",
        )
    )
    return [_Fill(*row[:7], multiplier=row[7] or Decimal(1)) for row in rows]


def _ledger_positions(engine: Engine, day: date) -> dict[str, Decimal]:
    """The engine's position in each symbol at the day's end, from its own fills."""
    _, end = _day_bounds(day)
    fills = Fill.objects.filter(engine=engine, ts__lt=end)
    signed: dict[str, Decimal] = defaultdict(Decimal)
    for symbol, side, total in fills.values_list("instrument__symbol", "side").annotate(
        total=Sum("quantity")
    ):
        signed[symbol] += total if side == "buy" else -total
    return dict(signed)


def _num(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _summary(items: Iterable[Trade | _Fill], multipliers: dict[str, Decimal]) -> dict[str, str]:
    bought = sold = fees = _ZERO
    count = 0
    for item in items:
        notional = item.quantity * item.price * multipliers.get(item.symbol, Decimal(1))
        if item.side == "buy":
            bought += notional
        else:
            sold += notional
        fees += item.fee
        count += 1
    return {
        "trades": str(count),
        "bought": _num(bought),
        "sold": _num(sold),
        "fees": _num(fees),
        "cash_flow": _num(sold - bought - fees),
    }


def reconcile(engine: Engine, statement: Statement) -> tuple[list[StatementDifference], dict, dict]:
    """The differences between ``statement`` and the ledger, and each side's summary."""
    fills = _ledger_fills(engine, statement.day)
    multipliers = {fill.symbol: fill.multiplier for fill in fills}
    by_id = {fill.fill_id: fill for fill in fills}
    unmatched = dict(by_id)
    differences: list[StatementDifference] = []
    pending: list[Trade] = []
    pairs: list[tuple[Trade, _Fill]] = []
    for trade in statement.trades:
        fill = unmatched.pop(trade.trade_id, None)
        if fill is None:
            pending.append(trade)
        else:
            pairs.append((trade, fill))
    for trade in pending:
        # The engine did not name its fill by the broker's id: its order and quantity, then.
        fill = next(
            (
                f
                for f in unmatched.values()
                if trade.order_id
                and f.order_id == trade.order_id
                and f.symbol == trade.symbol
                and f.quantity == trade.quantity
            ),
            None,
        )
        if fill is None:
            differences.append(
                StatementDifference(
                    kind=StatementDifference.Kind.MISSING_IN_LEDGER,
                    line=trade.line,
                    symbol=trade.symbol,
                    trade_id=trade.trade_id,
                    broker_value=f"{trade.side} {_num(trade.quantity)} @ {_num(trade.price)}",
                    detail=(
                        f"line {trade.line}: the broker's trade {trade.trade_id} ({trade.side} "
                        f"{_num(trade.quantity)} {trade.symbol} @ {_num(trade.price)}) has no fill "
                        "in the ledger"
                    )[:300],
                )
            )
            continue
        del unmatched[fill.fill_id]
        pairs.append((trade, fill))
    for trade, fill in pairs:
        for kind, ours, theirs in (
            (StatementDifference.Kind.SIDE, fill.side, trade.side),
            (StatementDifference.Kind.QUANTITY, fill.quantity, trade.quantity),
            (StatementDifference.Kind.PRICE, fill.price, trade.price),
            (StatementDifference.Kind.FEE, fill.fee, trade.fee),
        ):
            if ours != theirs:
                ours_text = ours if isinstance(ours, str) else _num(ours)
                theirs_text = theirs if isinstance(theirs, str) else _num(theirs)
                differences.append(
                    StatementDifference(
                        kind=kind,
                        line=trade.line,
                        symbol=trade.symbol,
                        trade_id=trade.trade_id,
                        ledger_value=ours_text,
                        broker_value=theirs_text,
                        detail=(
                            f"line {trade.line}: trade {trade.trade_id} {kind.label.lower()}: "
                            f"ledger {ours_text}, broker {theirs_text} (fill {fill.fill_id})"
                        )[:300],
                    )
                )
    for fill in unmatched.values():
        differences.append(
            StatementDifference(
                kind=StatementDifference.Kind.MISSING_AT_BROKER,
                symbol=fill.symbol,
                trade_id=fill.fill_id,
                ledger_value=f"{fill.side} {_num(fill.quantity)} @ {_num(fill.price)}",
                detail=(
                    f"the ledger's fill {fill.fill_id} ({fill.side} {_num(fill.quantity)} "
                    f"{fill.symbol} @ {_num(fill.price)}) is not on the statement"
                )[:300],
            )
        )
    ledger_positions = _ledger_positions(engine, statement.day)
    stated = {holding.symbol: holding for holding in statement.positions}
    for symbol in sorted(set(ledger_positions) | set(stated)):
        ours = ledger_positions.get(symbol, _ZERO)
        holding = stated.get(symbol)
        theirs = holding.quantity if holding is not None else _ZERO
        if ours != theirs:
            where = f"line {holding.line}: " if holding is not None else ""
            differences.append(
                StatementDifference(
                    kind=StatementDifference.Kind.POSITION,
                    line=holding.line if holding is not None else None,
                    symbol=symbol,
                    ledger_value=_num(ours),
                    broker_value=_num(theirs),
                    detail=(
                        f"{where}{symbol} at the end of {statement.day}: ledger {_num(ours)}, "
                        f"broker {_num(theirs)}"
                    )[:300],
                )
            )
    return (
        differences,
        _summary(fills, multipliers),
        _summary(statement.trades, multipliers),
    )


def statement_import(
    *,
    engine: Engine,
    data: bytes,
    actor: AbstractBaseUser | None,
    filename: str = "",
    actor_label: str | None = None,
    ip_address: str | None = None,
) -> BrokerStatement:
    """Read, reconcile and store a statement of ``engine``; raises StatementRefused (nothing
    stored) when it cannot be read. The differences are stored with it and announced."""
    statement = parse(data)
    label = actor_label or (actor.get_username() if actor is not None else "system")
    with transaction.atomic():
        differences, ledger, broker = reconcile(engine, statement)
        row = BrokerStatement.objects.create(
            engine=engine,
            statement_date=statement.day,
            filename=filename[:255],
            sha256=hashlib.sha256(data).hexdigest(),
            trades=len(statement.trades),
            positions=len(statement.positions),
            differences_count=len(differences),
            ledger_summary=ledger,
            broker_summary=broker,
            imported_by=actor,
            imported_by_label=label,
        )
        for difference in differences:
            difference.statement = row
        StatementDifference.objects.bulk_create(differences)
        audit_record(
            action="broker_statement_import",
            actor=actor,
            actor_label=label,
            target=row,
            ip_address=ip_address,
            data={
                "engine": engine.name,
                "date": statement.day.isoformat(),
                "trades": len(statement.trades),
                "positions": len(statement.positions),
                "differences": len(differences),
            },
        )
        transaction.on_commit(
            partial(
                events.announce,
                events.statement_reconciled,
                statement_id=row.pk,
                engine_id=engine.pk,
                differences=len(differences),
            )
        )
    return row
