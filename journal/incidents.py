"""Incidents: opened by a kill or by hand, with the engines' snapshot at that moment, the rollback
checklist (ticked from the data where the product can see it, else by a named person), the links
to the commands and alerts around it, and a post-mortem without which it does not close.

Writes are the ``incident_*`` and ``postmortem_write`` functions (each audited); reads are the
``incidents_*`` selectors. Rights (controlplane.roles): viewers read, operators open by hand and
tick, risk managers write the post-mortem and close (docs/operations.md, "Incidents").
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Prefetch, Q, QuerySet, Sum
from django.utils import timezone

from alerts.models import Alert
from controlplane.audit import audit_record
from controlplane.gateway.session import STAGE_ACTOR
from controlplane.models import (
    AccountSnapshot,
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    Fill,
    Order,
    Position,
    Stage,
    TradingState,
)
from controlplane.trading_math import DEFAULT_ACCOUNT_CURRENCY, sum_in_account_currency
from golive.models import KillDrill
from journal.models import FollowUp, Incident, IncidentStep, PostMortem, Step

log = logging.getLogger(__name__)

SYSTEM = "control plane (incident checklist)"
# Alerts of the engines this long before an incident opened are linked to it: what led up to it.
ALERTS_BEFORE = timedelta(hours=1)
MONITOR_FOR = timedelta(hours=24)
# What a snapshot keeps of each engine; the rest is counted, so a busy book cannot bloat a row.
SNAPSHOT_ROWS = 200
MAX_ENGINES = 500
MAX_TITLE = 200
MAX_TEXT = 10_000
MAX_NOTE = 500
MAX_FOLLOW_UPS = 50
MAX_FOLLOW_UP = 500
MAX_OWNER = 150

# Steps ticked from the data only; DECIDE is ticked by the data when every position is flat, or
# by a person who decides to hold (or to flatten, before it is done).
DATA_STEPS = (Step.KILL, Step.CANCEL_ORDERS, Step.TEST_ON_PAPER, Step.MONITOR)
PERSON_STEPS = (Step.ASSESS, Step.DECIDE, Step.FIX, Step.RESTART_SMALL)
DECISIONS = ("flatten", "hold")


class IncidentForbidden(Exception):
    """The actor lacks the right (403)."""


class IncidentConflict(Exception):
    """The incident's state refuses it (409): closed, a step already done, no post-mortem."""


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError({field: message})


def _require(actor: AbstractBaseUser, permission: str, what: str) -> None:
    if not actor.has_perm(permission):  # type: ignore[attr-defined]
        raise IncidentForbidden(f"{actor.get_username()} may not {what} ({permission})")


def clean_text(
    value: Any, field: str, *, max_length: int, required: bool = True, one_line: bool = False
) -> str:
    """A text field as stored: a string, stripped, without NUL bytes, within its length."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise _invalid(field, "must be text")
    if "\x00" in value:
        raise _invalid(field, "contains a NUL byte")
    value = value.strip()
    if required and not value:
        raise _invalid(field, "is required")
    if len(value) > max_length:
        raise _invalid(field, f"is {len(value):,} characters long; at most {max_length:,}")
    if one_line and ("\n" in value or "\r" in value):
        raise _invalid(field, "must be one line")
    return value


# --- snapshot -------------------------------------------------------------------------------------


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _unrealized(p: Position) -> Decimal | None:
    if p.last_price is None:
        return None
    return (p.last_price - p.avg_price) * p.quantity * p.instrument.multiplier


def _pnl_totals(
    engine: Engine, held: list[Position], realized: list[tuple[Decimal, str]]
) -> dict[str, Any]:
    """The engine's P&L added up in its account currency at its latest FX rates: the realised
    P&L of every position, the unrealised of those held. Each position's is in its instrument's
    currency; a total that needs a rate the engine never reported is None (unknown), with the
    currencies named, never counted at a rate of 1."""
    account = engine.account_currency or DEFAULT_ACCOUNT_CURRENCY
    rates = engine.fx_rates or {}
    realized_total, unknown = sum_in_account_currency(realized, account, rates)
    open_pnl = [(u, p.instrument.currency) for p in held if (u := _unrealized(p)) is not None]
    unrealized_total, open_unknown = sum_in_account_currency(open_pnl, account, rates)
    return {
        "currency": account,
        "realized_pnl": _money(realized_total),
        "unrealized_pnl": _money(unrealized_total),
        "pnl_unconverted": sorted(set(unknown) | set(open_unknown)),
    }


def _after(as_of: dict[int, int], field: str = "seq") -> Q:
    """The rows each engine stored (``field``: an event's seq, an order's last_seq) after its seq
    in ``as_of``."""
    q = Q(pk__in=[])
    for engine_id, seq in as_of.items():
        q |= Q(engine_id=engine_id, **{f"{field}__gt": seq})
    return q


def snapshot_take(
    engine_ids: list[int], now: datetime, as_of: dict[int, int] | None = None
) -> dict[str, Any]:
    """The engines' states, P&L, positions and working orders, as JSON.

    ``as_of`` (engine id -> the last seq stored when a kill was written, the issuing held the
    rows locked) gives them as the kill found them, not as the engine's first answers to it
    left them: the fills stored since are taken back out of the positions and the orders' filled
    quantities, an order they touched that was made before the kill counts as working, and the
    equity is its last account snapshot up to then. A kill's cancels and fills often arrive
    before the incident has read the tables."""
    as_of = {k: v for k, v in (as_of or {}).items() if k in set(engine_ids)}
    engines = list(Engine.objects.filter(pk__in=engine_ids).order_by("name"))
    later: dict[tuple[int, int], Decimal] = {}  # (engine, instrument) -> signed quantity since
    later_by_order: dict[int, Decimal] = {}
    if as_of:
        for engine_id, instrument_id, order_id, side, quantity in Fill.objects.filter(
            _after(as_of)
        ).values_list("engine_id", "instrument_id", "order_id", "side", "quantity"):
            signed = quantity if side == "buy" else -quantity
            key = (engine_id, instrument_id)
            later[key] = later.get(key, Decimal(0)) + signed
            if order_id is not None:
                later_by_order[order_id] = later_by_order.get(order_id, Decimal(0)) + quantity
    positions: dict[int, list[Position]] = {}
    held_query = Position.objects.filter(engine_id__in=engine_ids)
    if not later:
        held_query = held_query.exclude(quantity=0)
    for position in held_query.select_related("instrument").order_by(
        "engine_id", "instrument__symbol"
    ):
        position.quantity -= later.get((position.engine_id, position.instrument_id), Decimal(0))
        if position.quantity != 0:
            positions.setdefault(position.engine_id, []).append(position)
    # Every position's realised P&L, flat ones included, by its instrument's currency.
    realized: dict[int, list[tuple[Decimal, str]]] = {}
    for engine_id, currency, amount in (
        Position.objects.filter(engine_id__in=engine_ids)
        .values("engine_id", "instrument__currency")
        .annotate(realized=Sum("realized_pnl"))
        .values_list("engine_id", "instrument__currency", "realized")
    ):
        realized.setdefault(engine_id, []).append((amount or Decimal(0), currency))
    orders: dict[int, list[Order]] = {}
    working_then = Q(status__in=Order.WORKING)
    if as_of:
        # Working now and untouched since the kill, or touched since but made before it.
        kill_at = now
        touched = _after(as_of, "last_seq")
        working_then = (working_then & ~touched) | (touched & Q(created_at__lte=kill_at))
    for order in (
        Order.objects.filter(Q(engine_id__in=engine_ids) & working_then)
        .select_related("instrument")
        .order_by("engine_id", "-updated_at")
    ):
        if order.pk in later_by_order or order.status not in Order.WORKING:
            if order.pk in later_by_order:
                order.filled_quantity -= later_by_order[order.pk]
            order.status = "working"  # its status then is not kept: it was open
        orders.setdefault(order.engine_id, []).append(order)
    equity_then: dict[int, tuple[Decimal, Decimal]] = {}
    for engine_id, seq in as_of.items():
        last = (
            AccountSnapshot.objects.filter(engine_id=engine_id, seq__lte=seq)
            .order_by("-seq")
            .values_list("equity", "cash")
            .first()
        )
        if last is not None:
            equity_then[engine_id] = last
    rows = []
    for engine in engines:
        held = positions.get(engine.pk, [])
        working = orders.get(engine.pk, [])
        if engine.pk in equity_then:
            engine.equity, engine.cash = equity_then[engine.pk]
            if engine.session_start_equity:
                engine.day_pnl = engine.equity - engine.session_start_equity
        pnl = _pnl_totals(engine, held, realized.get(engine.pk, []))
        rows.append(
            {
                **pnl,
                "id": engine.pk,
                "name": engine.name,
                "mode": engine.mode,
                "stage": engine.stage,
                "desired_state": engine.desired_state_at(now),
                "reported_state": engine.reported_state,
                "connected": engine.connected,
                "equity": _money(engine.equity),
                "cash": _money(engine.cash),
                "day_pnl": _money(engine.day_pnl),
                "drawdown_pct": _money(engine.drawdown_pct),
                "positions": [
                    {
                        "symbol": p.instrument.symbol,
                        "currency": p.instrument.currency,
                        "quantity": str(p.quantity),
                        "avg_price": str(p.avg_price),
                        "last_price": _money(p.last_price),
                        "realized_pnl": str(p.realized_pnl),
                        "unrealized_pnl": _money(_unrealized(p)),
                    }
                    for p in held[:SNAPSHOT_ROWS]
                ],
                "positions_more": max(len(held) - SNAPSHOT_ROWS, 0),
                "orders": [
                    {
                        "client_order_id": o.client_order_id,
                        "symbol": o.instrument.symbol,
                        "side": o.side,
                        "type": o.order_type,
                        "quantity": str(o.quantity),
                        "filled": str(o.filled_quantity),
                        "limit_price": _money(o.limit_price),
                        "status": o.status,
                    }
                    for o in working[:SNAPSHOT_ROWS]
                ],
                "orders_more": max(len(working) - SNAPSHOT_ROWS, 0),
            }
        )
    return {"taken_at": now.isoformat(), "engines": rows}


# --- opening --------------------------------------------------------------------------------------


def trigger_of(actor_id: int | None, label: str) -> str:
    """Who or what latched a kill, from the batch's issuer (controlplane.commands.issuing)."""
    if actor_id is not None:
        return Incident.Trigger.PERSON
    if label.startswith("alert rule "):
        return Incident.Trigger.ALERT_RULE
    if label.startswith(("limit #", "risk limits")):
        return Incident.Trigger.LIMIT
    if label == STAGE_ACTOR or label.startswith("red line"):
        return Incident.Trigger.RED_LINE
    return Incident.Trigger.CONTROL_PLANE


def _snapshot_consistent(
    engine_ids: list[int], at: datetime, as_of: dict[int, int] | None
) -> dict[str, Any]:
    """``snapshot_take`` with every read in one snapshot of the database (a read-only repeatable
    read transaction): a batch of the engine committed between two reads (its fills read before
    it, its positions after) would otherwise show a book that never was. Inside a transaction
    already (tests), its own snapshot rules."""
    if connection.in_atomic_block:
        return snapshot_take(engine_ids, at, as_of)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return snapshot_take(engine_ids, at, as_of)


def _open(
    *,
    title: str,
    reason: str,
    trigger: str,
    engine_ids: list[int],
    actor: AbstractBaseUser | None,
    actor_label: str,
    kill_batch: CommandBatch | None = None,
    source_alert: Alert | None = None,
    ip_address: str | None = None,
    as_of: dict[int, int] | None = None,
) -> Incident:
    now = timezone.now()
    snapshot = _snapshot_consistent(engine_ids, kill_batch.created_at if kill_batch else now, as_of)
    with transaction.atomic():
        incident = Incident.objects.create(
            title=title[:MAX_TITLE],
            reason=reason,
            trigger=trigger,
            opened_at=now,
            opened_by=actor,
            opened_by_label=actor_label[:150],
            kill_batch=kill_batch,
            source_alert=source_alert,
            snapshot=snapshot,
        )
        incident.engines.set(engine_ids)
        IncidentStep.objects.bulk_create(
            IncidentStep(incident=incident, key=key, position=position)
            for position, key in enumerate(Step.values, start=1)
        )
        if kill_batch is not None:
            incident.commands.set(kill_batch.commands.all())
        around = Alert.objects.filter(engine_id__in=engine_ids).filter(
            Q(started_at__gte=now - ALERTS_BEFORE) | Q(state__in=Alert.OPEN)
        )
        alerts = set(around.values_list("pk", flat=True))
        if source_alert is not None:
            alerts.add(source_alert.pk)
        incident.alerts.set(alerts)
        names = [e["name"] for e in incident.snapshot["engines"]]
        audit_record(
            action="incident_open",
            actor=actor,
            actor_label=actor_label,
            target=incident,
            reason=reason[:2000],
            ip_address=ip_address,
            data={
                "trigger": trigger,
                "engines": names,
                "kill_batch": str(kill_batch.pk) if kill_batch else None,
                "alert": source_alert.pk if source_alert else None,
            },
        )
    return incident


def incident_open_by_hand(
    *,
    actor: AbstractBaseUser,
    title: Any,
    reason: Any,
    engine_names: Any = None,
    alert_id: Any = None,
    ip_address: str | None = None,
) -> Incident:
    """Open an incident from one or more engines, or from an alert (its engine, if any)."""
    _require(actor, "journal.open_incident", "open an incident")
    title = clean_text(title, "title", max_length=MAX_TITLE, one_line=True)
    reason = clean_text(reason, "reason", max_length=MAX_TEXT)
    if engine_names is None:
        engine_names = []
    if not isinstance(engine_names, list) or not all(isinstance(n, str) for n in engine_names):
        raise _invalid("engines", "must be a list of engine names")
    if len(engine_names) > MAX_ENGINES:
        raise _invalid("engines", f"at most {MAX_ENGINES} engines")
    if any("\x00" in n for n in engine_names):
        raise _invalid("engines", "an engine name contains a NUL byte")
    alert = None
    if alert_id not in (None, ""):
        if isinstance(alert_id, bool) or not isinstance(alert_id, int | str):
            raise _invalid("alert", "must be an alert's id")
        try:
            alert = Alert.objects.filter(pk=int(alert_id)).first()
        except (ValueError, OverflowError):
            raise _invalid("alert", "must be an alert's id") from None
        if alert is None:
            raise _invalid("alert", f"no alert has the id {alert_id}")
    engines = list(Engine.objects.filter(name__in=engine_names).values_list("pk", "name"))
    unknown = sorted(set(engine_names) - {name for _, name in engines})
    if unknown:
        raise _invalid("engines", f"no engine is named {', '.join(unknown)}")
    engine_ids = [pk for pk, _ in engines]
    if alert is not None and alert.engine_id is not None and alert.engine_id not in engine_ids:
        engine_ids.append(alert.engine_id)
    if not engine_ids:
        raise _invalid("engines", "name at least one engine, or an alert of an engine")
    return _open(
        title=title,
        reason=reason,
        trigger=Incident.Trigger.BY_HAND,
        engine_ids=engine_ids,
        actor=actor,
        actor_label=actor.get_username(),
        source_alert=alert,
        ip_address=ip_address,
    )


def incidents_open_for(engine_ids: list[int]) -> QuerySet[Incident]:
    return Incident.objects.filter(state=Incident.State.OPEN, engines__in=engine_ids).distinct()


def on_commands_issued(
    sender: Any,
    *,
    batch_id: Any,
    kind: str,
    engine_ids: list[int],
    params: dict[str, Any],
    actor_id: int | None,
    actor_label: str,
    last_seqs: dict[int, int] | None = None,
    **kwargs: Any,
) -> None:
    """controlplane.events.commands_issued: a kill opens an incident (unless a drill's, or its
    engines are all in open incidents already); whatever is issued to an open incident's engines
    is linked to it; a kill's lift is recorded on it."""
    commands = list(Command.objects.filter(batch_id=batch_id).only("pk", "engine_id"))
    is_drill = KillDrill.objects.filter(command_id__in=[c.pk for c in commands]).exists()
    if kind == CommandKind.KILL and not is_drill:
        covered = set(
            Incident.engines.through.objects.filter(
                incident__state=Incident.State.OPEN, engine_id__in=engine_ids
            ).values_list("engine_id", flat=True)
        )
        if not set(engine_ids) <= covered:
            batch = CommandBatch.objects.get(pk=batch_id)
            trigger = trigger_of(actor_id, actor_label)
            names = list(
                Engine.objects.filter(pk__in=engine_ids)
                .order_by("name")
                .values_list("name", flat=True)
            )
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            _open(
                title=f"Kill of {shown}",
                reason=batch.reason,
                trigger=trigger,
                engine_ids=engine_ids,
                actor=batch.issued_by,
                actor_label=actor_label,
                kill_batch=batch,
                as_of=last_seqs,
            )
    for incident in incidents_open_for(engine_ids):
        mine = [
            c for c in commands if c.engine_id in set(incident.engines.values_list("pk", flat=True))
        ]
        incident.commands.add(*mine)
        if kind == CommandKind.RESUME and params.get("approved_by"):
            _lift_link(incident, mine, params)
        incident_steps_evaluate(incident)


def _lift_link(incident: Incident, commands: list[Command], params: dict[str, Any]) -> None:
    """A resume approved by a second person lifted the kill on some of its engines."""
    now = timezone.now()
    halted = incident.engines.filter(desired_state=TradingState.HALTED).exists()
    if not halted and incident.lifted_at is None:
        Incident.objects.filter(pk=incident.pk, lifted_at__isnull=True).update(lifted_at=now)
        incident.lifted_at = now
    audit_record(
        action="incident_kill_lifted",
        actor_label=str(params.get("approved_by", ""))[:150] or SYSTEM,
        target=incident,
        data={
            "commands": [str(c.pk) for c in commands],
            "requested_by": params.get("requested_by"),
            "all_engines_lifted": not halted,
        },
    )


def on_alert_changed(sender: Any, *, alert_id: int, **kwargs: Any) -> None:
    """alerts.events.alert_changed: an alert of an open incident's engine joins it."""
    alert = Alert.objects.filter(pk=alert_id).only("pk", "engine_id", "started_at").first()
    if alert is None or alert.engine_id is None:
        return
    for incident in incidents_open_for([alert.engine_id]):
        if alert.started_at >= incident.opened_at - ALERTS_BEFORE:
            incident.alerts.add(alert)


# --- the checklist from the data ------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    done: bool
    note: str


def _names(engines: list[Engine]) -> str:
    return ", ".join(e.name for e in engines)


def step_verdicts(incident: Incident, now: datetime) -> dict[str, Verdict]:
    """What the data says of the steps the product can verify, now."""
    engines = list(incident.engines.order_by("name"))
    ids = [e.pk for e in engines]
    verdicts: dict[str, Verdict] = {}
    steps = {s.key: s for s in incident.steps.all()}
    halted = [e for e in engines if e.reported_state == TradingState.HALTED]
    confirmed = set(
        incident.commands.filter(
            kind=CommandKind.KILL, state_after=TradingState.HALTED
        ).values_list("engine_id", flat=True)
    )
    stopped = [e for e in engines if e in halted or e.pk in confirmed]
    verdicts[Step.KILL] = Verdict(
        len(stopped) == len(engines) or incident.lifted_at is not None,
        f"HALTED: {_names(stopped)}" if stopped else "no engine has confirmed HALTED yet",
    )
    working = Order.objects.filter(engine_id__in=ids, status__in=Order.WORKING).count()
    verdicts[Step.CANCEL_ORDERS] = Verdict(
        working == 0,
        f"no working order on {_names(engines)}" if not working else f"{working} orders working",
    )
    held = Position.objects.filter(engine_id__in=ids).exclude(quantity=0).count()
    verdicts[Step.DECIDE] = Verdict(
        held == 0,
        f"flat: no open position on {_names(engines)}" if not held else f"{held} positions held",
    )
    on_paper = [e for e in engines if e.stage == Stage.PAPER]
    active = [e for e in on_paper if e.desired_state == TradingState.ACTIVE]
    verdicts[Step.TEST_ON_PAPER] = Verdict(
        incident.lifted_at is not None and len(active) == len(engines),
        f"back on paper and trading: {_names(active)}" if active else "not back on paper yet",
    )
    restart = steps.get(Step.RESTART_SMALL)
    restarted_at = restart.done_at if restart is not None else None
    verdicts[Step.MONITOR] = Verdict(
        restarted_at is not None and now - restarted_at >= MONITOR_FOR,
        f"24 hours since the restart at {restarted_at:%Y-%m-%d %H:%M} UTC"
        if restarted_at
        else "starts when the restart with small capital is ticked",
    )
    return verdicts


def incident_steps_evaluate(incident: Incident, now: datetime | None = None) -> list[str]:
    """Tick the steps the data now shows done; returns their keys. A tick is a fact: a step
    once done stays done, and each is claimed by a conditional update (one audit line)."""
    if incident.state != Incident.State.OPEN:
        return []
    now = now or timezone.now()
    ticked = []
    for key, verdict in step_verdicts(incident, now).items():
        if not verdict.done:
            continue
        claimed = IncidentStep.objects.filter(
            incident=incident, key=key, done_at__isnull=True
        ).update(done_at=now, by_data=True, done_by_label=SYSTEM, note=verdict.note[:MAX_NOTE])
        if claimed == 1:
            ticked.append(key)
            audit_record(
                action="incident_step_done",
                actor_label=SYSTEM,
                target=incident,
                data={"step": key, "by": "data", "note": verdict.note[:MAX_NOTE]},
            )
    return ticked


def incidents_evaluate(engine_ids: list[int] | None = None) -> int:
    """Evaluate every open incident (of these engines); how many steps were ticked."""
    incidents = (
        incidents_open_for(engine_ids)
        if engine_ids is not None
        else Incident.objects.filter(state=Incident.State.OPEN)
    )
    return sum(len(incident_steps_evaluate(incident)) for incident in incidents)


_background: set[asyncio.Task[Any]] = set()


def on_command_answered(sender: Any, *, engine_ids: list[int], **kwargs: Any) -> None:
    """controlplane.events.command_answered: sent on the sockets' event loop, so the database
    work runs in a thread and this returns at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        incidents_evaluate(engine_ids)
        return
    work = sync_to_async(_evaluate_logged, thread_sensitive=False)(list(engine_ids))
    task = loop.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _evaluate_logged(engine_ids: list[int]) -> None:
    from django.db import close_old_connections

    try:
        incidents_evaluate(engine_ids)
    except Exception:
        log.exception("incident checklist of engines %s", engine_ids)
    finally:
        close_old_connections()


def on_batch_stored(sender: Any, *, engine_id: int, result: Any, **kwargs: Any) -> None:
    """controlplane.events.batch_stored: a HALTED engine's batch (its cancels and flattening
    after a kill) may tick its incident's steps. A trading engine's batches cost nothing here."""
    engine = getattr(result, "engine", None)
    if engine is None or engine.desired_state != TradingState.HALTED:
        return
    incidents_evaluate([engine_id])


# --- by a person ----------------------------------------------------------------------------------


def _locked_open(incident: Incident) -> Incident:
    locked = Incident.objects.select_for_update().get(pk=incident.pk)
    if locked.state != Incident.State.OPEN:
        raise IncidentConflict(f"incident #{incident.pk} is closed")
    return locked


def incident_step_tick(
    *,
    incident: Incident,
    key: Any,
    actor: AbstractBaseUser,
    note: Any = "",
    decision: Any = None,
    ip_address: str | None = None,
) -> IncidentStep:
    """A named person ticks a step the product cannot verify, at this time."""
    _require(actor, "journal.tick_incident", "tick an incident's checklist")
    if not isinstance(key, str) or key not in Step.values:
        raise _invalid("step", f"must be one of {', '.join(Step.values)}")
    note = clean_text(note, "note", max_length=MAX_NOTE, required=False)
    if key in DATA_STEPS:
        raise IncidentConflict(
            f"'{Step(key).label}' is ticked from the data when it shows it done, not by hand"
        )
    if key == Step.DECIDE:
        if decision not in DECISIONS:
            raise _invalid("decision", "say flatten or hold")
        note = f"{decision}: {note}" if note else str(decision)
    label = actor.get_username()
    now = timezone.now()
    with transaction.atomic():
        locked = _locked_open(incident)
        claimed = IncidentStep.objects.filter(
            incident=locked, key=key, done_at__isnull=True
        ).update(done_at=now, by_data=False, done_by=actor, done_by_label=label, note=note)
        if claimed != 1:
            step = IncidentStep.objects.get(incident=locked, key=key)
            raise IncidentConflict(
                f"'{step.get_key_display()}' was already ticked by {step.done_by_label}"
            )
        audit_record(
            action="incident_step_done",
            actor=actor,
            target=locked,
            ip_address=ip_address,
            reason=note,
            data={"step": key, "by": "person"},
        )
    return IncidentStep.objects.get(incident=incident, key=key)


def postmortem_write(
    *,
    incident: Incident,
    actor: AbstractBaseUser,
    cause: Any,
    what_went_wrong: Any,
    failed_assumptions: Any,
    improvements: Any,
    follow_ups: Any,
    ip_address: str | None = None,
) -> PostMortem:
    """Write (or rewrite) the incident's post-mortem, with its follow-up items and owners."""
    _require(actor, "journal.change_postmortem", "write a post-mortem")
    if not isinstance(cause, str) or cause not in PostMortem.Cause.values:
        raise _invalid("cause", "must be strategy, execution or market")
    texts = {
        name: clean_text(value, name, max_length=MAX_TEXT)
        for name, value in (
            ("what_went_wrong", what_went_wrong),
            ("failed_assumptions", failed_assumptions),
            ("improvements", improvements),
        )
    }
    if not isinstance(follow_ups, list):
        raise _invalid("follow_ups", "must be a list of items with their owners")
    if len(follow_ups) > MAX_FOLLOW_UPS:
        raise _invalid("follow_ups", f"at most {MAX_FOLLOW_UPS} items")
    items: list[tuple[str, str]] = []
    for index, entry in enumerate(follow_ups):
        if not isinstance(entry, dict):
            raise _invalid(f"follow_ups[{index}]", "must have an item and an owner")
        item = clean_text(entry.get("item"), f"follow_ups[{index}].item", max_length=MAX_FOLLOW_UP)
        owner = clean_text(
            entry.get("owner"), f"follow_ups[{index}].owner", max_length=MAX_OWNER, one_line=True
        )
        items.append((item, owner))
    if not items:
        raise _invalid("follow_ups", "name at least one follow-up item with its owner")
    label = actor.get_username()
    with transaction.atomic():
        locked = _locked_open(incident)
        existed = PostMortem.objects.filter(incident=locked).exists()
        postmortem, _ = PostMortem.objects.update_or_create(
            incident=locked,
            defaults={
                "cause": cause,
                **texts,
                "written_by": actor,
                "written_by_label": label,
                "updated_at": timezone.now(),
            },
        )
        postmortem.follow_ups.all().delete()
        FollowUp.objects.bulk_create(
            FollowUp(postmortem=postmortem, position=i, item=item, owner=owner)
            for i, (item, owner) in enumerate(items, start=1)
        )
        audit_record(
            action="incident_postmortem_update" if existed else "incident_postmortem_write",
            actor=actor,
            target=locked,
            ip_address=ip_address,
            data={
                "cause": cause,
                **texts,
                "follow_ups": [{"item": i, "owner": o} for i, o in items],
            },
        )
    return postmortem


def incident_close(
    *, incident: Incident, actor: AbstractBaseUser, ip_address: str | None = None
) -> Incident:
    """Close the incident: only with its post-mortem written."""
    _require(actor, "journal.close_incident", "close an incident")
    label = actor.get_username()
    with transaction.atomic():
        locked = _locked_open(incident)
        postmortem = PostMortem.objects.filter(incident=locked).first()
        if postmortem is None or not postmortem.follow_ups.exists():
            raise IncidentConflict(
                "an incident closes only with its post-mortem: what went wrong, which "
                "assumptions failed, what will be improved, and follow-up items with owners"
            )
        now = timezone.now()
        Incident.objects.filter(pk=locked.pk, state=Incident.State.OPEN).update(
            state=Incident.State.CLOSED, closed_at=now, closed_by=actor, closed_by_label=label
        )
        open_steps = list(locked.steps.filter(done_at__isnull=True).values_list("key", flat=True))
        audit_record(
            action="incident_close",
            actor=actor,
            target=locked,
            ip_address=ip_address,
            data={"open_steps": open_steps},
        )
    return Incident.objects.get(pk=incident.pk)


# --- selectors ------------------------------------------------------------------------------------


def incidents_list(*, state: str | None = None, limit: int = 200) -> list[Incident]:
    incidents = Incident.objects.prefetch_related(
        Prefetch("engines", queryset=Engine.objects.only("pk", "name").order_by("name")),
        "steps",
    ).defer("snapshot")
    if state:
        incidents = incidents.filter(state=state)
    rows = list(incidents.order_by("-opened_at")[:limit])
    for incident in rows:
        steps = incident.steps.all()
        incident.steps_done = sum(1 for s in steps if s.done_at)  # type: ignore[attr-defined]
        incident.steps_total = len(steps)  # type: ignore[attr-defined]
    return rows


def incident_get(incident_id: int) -> Incident | None:
    return (
        Incident.objects.filter(pk=incident_id)
        .select_related("postmortem", "kill_batch", "source_alert")
        .prefetch_related(
            Prefetch("engines", queryset=Engine.objects.order_by("name")),
            "steps",
            "postmortem__follow_ups",
            Prefetch(
                "commands", queryset=Command.objects.select_related("engine").order_by("created_at")
            ),
            Prefetch("alerts", queryset=Alert.objects.select_related("engine", "rule")),
        )
        .first()
    )


def incident_open_of(engine: Engine) -> Incident | None:
    """The engine's open incident, newest first: where a lift of its kill is recorded."""
    return incidents_open_for([engine.pk]).order_by("-opened_at").first()
