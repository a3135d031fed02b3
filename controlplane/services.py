"""Writes of the engines domain. Views, consumers, tasks and commands call these, nothing else."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any, NoReturn

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from controlplane import delivery, events
from controlplane.audit import audit_add, audit_event, audit_record
from controlplane.models import (
    ApiToken,
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    Mode,
    ResumeRequest,
    TradingState,
    hash_token,
    new_engine_token,
)
from controlplane.sqlscript import Script, text_array

log = logging.getLogger(__name__)


def engine_assign_token(*, engine: Engine) -> str:
    """Give the engine a fresh token and return it: the only time it exists in clear text."""
    token = new_engine_token()
    engine.set_token(token)
    return token


@transaction.atomic
def engine_create(
    *,
    name: str,
    mode: str = Mode.PAPER,
    broker: str = "",
    account: str = "",
    strategy_tags: list[str] | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
) -> tuple[Engine, str]:
    engine = Engine(
        name=name, mode=mode, broker=broker, account=account, strategy_tags=strategy_tags or []
    )
    token = engine_assign_token(engine=engine)
    engine.full_clean()
    engine.save()
    audit_record(
        action="engine_create",
        actor=actor,
        actor_label=actor_label,
        target=engine,
        data={"mode": mode, "broker": broker},
    )
    return engine, token


@transaction.atomic
def engine_rotate_token(
    *, engine: Engine, actor: AbstractBaseUser | None = None, actor_label: str | None = None
) -> str:
    token = engine_assign_token(engine=engine)
    engine.save(update_fields=["token_hash", "token_hint"])
    audit_record(action="engine_rotate_token", actor=actor, actor_label=actor_label, target=engine)
    return token


@transaction.atomic
def engine_deactivate(
    *, engine: Engine, actor: AbstractBaseUser | None = None, actor_label: str | None = None
) -> None:
    """Refuse the engine's token from now on, and close its open sockets once that is committed.

    Its data stays; reactivating it (is_active) lets the same token in again.
    """
    engine.is_active = False
    engine.save(update_fields=["is_active"])
    audit_record(action="engine_deactivate", actor=actor, actor_label=actor_label, target=engine)
    transaction.on_commit(partial(delivery.close_sockets, engine.pk))


# --- commands -------------------------------------------------------------------------------------

MAX_PAUSE_S = 7 * 24 * 3600
MAX_EXPIRY_S = 7 * 24 * 3600
KILL_ALL_CONFIRMATION = "KILL ALL"


class CommandRefused(PermissionDenied):
    """The actor may not do this. The message says what was refused and why, fit for the UI."""


class CommandInvalid(ValidationError):
    """The request itself is wrong (unknown kind, bad parameter, no engine selected)."""


# The permission each kind needs. Flattening every symbol, by a flatten or by a reduce to 0 %,
# needs issue_kill (see _permission_for).
_PERMISSION = {
    CommandKind.PAUSE: "controlplane.issue_pause",
    CommandKind.RESUME: "controlplane.issue_pause",
    CommandKind.REDUCE: "controlplane.issue_reduce",
    CommandKind.CANCEL_ALL: "controlplane.issue_reduce",
    CommandKind.FLATTEN: "controlplane.issue_reduce",
    CommandKind.KILL: "controlplane.issue_kill",
}

# What a new command makes obsolete among an engine's still-undelivered commands.
# Whoever has none of these may issue no command at all.
COMMAND_PERMISSIONS = frozenset(_PERMISSION.values())

_SUPERSEDES = {
    CommandKind.KILL: (
        CommandKind.PAUSE, CommandKind.RESUME, CommandKind.REDUCE, CommandKind.FLATTEN,
        CommandKind.CANCEL_ALL,
    ),
    CommandKind.RESUME: (CommandKind.PAUSE,),
    CommandKind.PAUSE: (CommandKind.RESUME,),
    CommandKind.SET_LIMITS: (CommandKind.SET_LIMITS,),
}  # fmt: skip

_EXPIRES = (CommandKind.PAUSE, CommandKind.REDUCE, CommandKind.FLATTEN, CommandKind.CANCEL_ALL)


# What issuing reads of each engine it locks.
_ISSUE_FIELDS = ("pk", "name", "desired_state", "desired_until", "desired_changed_at",
                 "desired_set_by_right", "connected")  # fmt: skip


def _flattens_everything(kind: str, params: dict[str, Any]) -> bool:
    """A flatten of every symbol: a flatten, or a reduce to keep 0 %, naming no symbols."""
    if params.get("symbols"):
        return False
    return kind == CommandKind.FLATTEN or (
        kind == CommandKind.REDUCE and params.get("target_pct") == 0
    )


def _permission_for(kind: str, params: dict[str, Any]) -> str | None:
    if _flattens_everything(kind, params):
        # Flattening everything is a kill without the halt, whichever command spells it.
        return "controlplane.issue_kill"
    return _PERMISSION.get(kind)  # type: ignore[call-overload]


# How strong each right is, to keep the strongest of the commands that set or hold a state.
_RIGHT_RANK = {"": 0, "issue_pause": 1, "issue_reduce": 2, "issue_kill": 3}


def _right_for(kind: str, params: dict[str, Any]) -> str:
    """The codename of the right a command needs, recorded on the engines whose state it sets."""
    permission = _permission_for(kind, params)
    return permission.split(".")[1] if permission else ""


def _command_label(kind: str, params: dict[str, Any]) -> str:
    if _flattens_everything(kind, params):
        return "a flatten of every position" if kind == CommandKind.FLATTEN else (
            "a reduce to 0 % (a flatten of every position)"
        )  # fmt: skip
    return f"a {kind}"


def _symbols(params: dict[str, Any], errors: dict[str, str]) -> list[str] | None:
    symbols = params.get("symbols")
    if symbols is None:
        return None
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(isinstance(s, str) and s.strip() and len(s) <= 32 for s in symbols)
    ):
        errors["symbols"] = "symbols must be a non-empty list of instrument symbols"
        return None
    return sorted({s.strip() for s in symbols})


def command_params_clean(kind: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate a command's parameters; the error names each bad field."""
    params = dict(params or {})
    errors: dict[str, str] = {}
    allowed = {
        CommandKind.PAUSE: {"duration", "cancel_open"},
        CommandKind.RESUME: set(),
        CommandKind.REDUCE: {"target_pct", "symbols"},
        CommandKind.FLATTEN: {"symbols"},
        CommandKind.CANCEL_ALL: {"symbols"},
        CommandKind.KILL: {"flatten"},
        CommandKind.SET_LIMITS: {"limits_version", "limits"},
    }
    if kind not in allowed:
        choices = ", ".join(CommandKind.values)
        raise CommandInvalid({"kind": f"unknown command {kind!r}; one of {choices}"})
    unknown = sorted(set(params) - allowed[kind])  # type: ignore[index]
    for name in unknown:
        errors[name] = f"{kind} takes no parameter {name!r}"
    clean: dict[str, Any] = {}
    if kind == CommandKind.PAUSE:
        duration = params.get("duration")
        if duration is not None:
            if isinstance(duration, bool) or not isinstance(duration, int | float):
                errors["duration"] = "duration is a number of seconds"
            elif not 0 < duration <= MAX_PAUSE_S:
                errors["duration"] = f"duration must be from 1 to {MAX_PAUSE_S} seconds"
            else:
                clean["duration"] = int(duration) if float(duration).is_integer() else duration
        cancel_open = params.get("cancel_open", False)
        if not isinstance(cancel_open, bool):
            errors["cancel_open"] = "cancel_open must be true or false"
        clean["cancel_open"] = bool(cancel_open)
    elif kind == CommandKind.REDUCE:
        target = params.get("target_pct")
        if target is None:
            errors["target_pct"] = "reduce needs target_pct: the % of each position to keep"
        elif isinstance(target, bool) or not isinstance(target, int | float):
            errors["target_pct"] = "target_pct must be a number from 0 to 100"
        elif not 0 <= target < 100:
            errors["target_pct"] = "target_pct must be at least 0 and below 100"
        else:
            clean["target_pct"] = target
    elif kind == CommandKind.KILL:
        flatten = params.get("flatten", True)
        if not isinstance(flatten, bool):
            errors["flatten"] = "flatten must be true or false"
        clean["flatten"] = flatten is not False
    elif kind == CommandKind.SET_LIMITS:
        version = params.get("limits_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            errors["limits_version"] = "limits_version must be a whole number"
        if not isinstance(params.get("limits"), list):
            errors["limits"] = "limits must be a list"
        clean = {"limits_version": version, "limits": params.get("limits")}
    if kind in (CommandKind.REDUCE, CommandKind.FLATTEN, CommandKind.CANCEL_ALL):
        symbols = _symbols(params, errors)
        if symbols is not None:
            clean["symbols"] = symbols
    if errors:
        raise CommandInvalid(errors)
    return clean


def engines_select(selector: str) -> QuerySet[Engine]:
    """Engines named by a selector: ``all``, ``live``, ``tag:<tag>``, ``engine:<name>``."""
    engines = Engine.objects.filter(is_active=True)
    if selector == "all":
        return engines
    if selector == "live":
        return engines.filter(mode=Mode.LIVE)
    prefix, _, value = selector.partition(":")
    if prefix == "tag" and value:
        return engines.filter(strategy_tags__contains=[value])
    if prefix == "engine" and value:
        return engines.filter(name=value)
    raise CommandInvalid(
        {"selector": f"unknown selector {selector!r}: use all, live, tag:<tag> or engine:<name>"}
    )


def kill_confirmation(selector: str) -> str:
    """What the person must type to confirm a kill: the engine's name, or KILL ALL."""
    prefix, _, value = selector.partition(":")
    return value if prefix == "engine" else KILL_ALL_CONFIRMATION


def _actor_label(actor: AbstractBaseUser | None, actor_label: str | None) -> str:
    if actor_label:
        return actor_label
    return actor.get_username() if actor is not None else "system"


def command_refuse(
    message: str,
    *,
    action: str,
    actor: AbstractBaseUser | None,
    actor_label: str | None,
    reason: str,
    ip_address: str | None,
    target: Any = None,
    data: dict[str, Any] | None = None,
) -> NoReturn:
    """Record the refusal in the audit log, then raise CommandRefused (a 403) with ``message``."""
    # Written before raising and outside any transaction of the caller's that would roll it back.
    audit_record(
        action=action, actor=actor, actor_label=actor_label, target=target, reason=reason,
        outcome="refused", data={"refusal": message, **(data or {})}, ip_address=ip_address,
    )  # fmt: skip
    raise CommandRefused(message)


def command_issue(
    *,
    kind: str,
    selector: str,
    reason: str,
    params: dict[str, Any] | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
    ip_address: str | None = None,
    expires_in: timedelta | None = None,
    approved_resume: ResumeRequest | None = None,
) -> CommandBatch:
    """Issue one command to every engine the selector names, as one batch.

    ``actor`` None is the control plane itself (a risk limit, an alert rule): it passes the
    permission checks and is labelled by ``actor_label``. Delivery is a push to each engine's
    socket once the transaction commits; the gateway's heartbeat check covers a lost push, so
    issuing never depends on Redis or Celery being up.
    """
    batch, _ = command_batch_issue(
        kind=kind, selector=selector, reason=reason, params=params, actor=actor,
        actor_label=actor_label, ip_address=ip_address, expires_in=expires_in,
        approved_resume=approved_resume,
    )  # fmt: skip
    return batch


def command_batch_issue(
    *,
    kind: str,
    selector: str,
    reason: str,
    params: dict[str, Any] | None = None,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
    ip_address: str | None = None,
    expires_in: timedelta | None = None,
    approved_resume: ResumeRequest | None = None,
) -> tuple[CommandBatch, list[Command]]:
    """``command_issue``, also returning the batch's commands as they were written (ordered by
    engine id): the API answers with them instead of reading back the rows it has just written,
    which would compete with the push to the engines for the CPU."""
    label = _actor_label(actor, actor_label)
    reason = (reason or "").strip()
    audit = {"action": f"command_{kind}", "actor": actor, "actor_label": label,
             "ip_address": ip_address, "reason": reason}  # fmt: skip
    if not reason:
        raise CommandInvalid({"reason": "say why: a command without a reason is refused"})
    clean = command_params_clean(kind, params)
    if actor is not None:
        if kind == CommandKind.SET_LIMITS:
            command_refuse(
                "set_limits is sent by the control plane when limits change; edit the limits in "
                "the admin instead",
                **audit,
                data={"selector": selector},
            )
        permission = _permission_for(kind, clean)
        if permission is not None and not actor.has_perm(permission):  # type: ignore[attr-defined]
            what = kind
            if _flattens_everything(kind, clean):
                what = "flatten every position" + (" (a reduce to 0 %)" if kind == "reduce" else "")
            command_refuse(f"{label} may not {what}: that needs the {permission.split('.')[1]} "
                    f"permission", **audit, data={"selector": selector})  # fmt: skip
    expires_at = None
    if expires_in is not None:
        if kind not in _EXPIRES:
            raise CommandInvalid({"expires_in": f"a {kind} never expires"})
        if not timedelta(0) < expires_in <= timedelta(seconds=MAX_EXPIRY_S):
            raise CommandInvalid({"expires_in": f"expiry must be from 1 to {MAX_EXPIRY_S} s"})
    if approved_resume is not None:
        # The engine checks these: a resume out of HALTED without an approver is refused there too.
        clean = {"approved_by": label, "requested_by": approved_resume.requested_by_label,
                 "resume_request": approved_resume.pk}  # fmt: skip
    engine_query = engines_select(selector)

    with transaction.atomic(), connection.cursor() as cursor:
        # The engine rows are locked so that two batches to the same engine are ordered and its
        # desired state follows the last one.
        engines = list(engine_query.select_for_update().only(*_ISSUE_FIELDS).order_by("pk"))
        if not engines:
            raise CommandInvalid({"selector": f"no active engine matches {selector!r}"})
        refusal = ""
        if kind == CommandKind.RESUME and approved_resume is None:
            halted = [e.name for e in engines if e.desired_state == TradingState.HALTED]
            if halted:
                refusal = (f"{', '.join(halted)} {'is' if len(halted) == 1 else 'are'} HALTED by "
                           "a kill: a resume needs a resume request approved by a second "
                           "person")  # fmt: skip
            elif actor is not None:
                refusal = _resume_outranked(actor, label, engines)
        if not refusal:
            now = timezone.now()
            if expires_in is not None:
                expires_at = now + expires_in
            batch = CommandBatch(
                id=uuid.uuid4(), kind=kind, selector=selector, reason=reason, issued_by=actor,
                issued_by_label=label, created_at=now,
            )  # fmt: skip
            # Every write of the batch in one round trip: a fleet kill is on the critical path
            # of each engine it stops, and each statement sent on its own cost a round trip.
            script = Script(cursor)
            script.add(_INSERT_BATCH, [str(batch.pk), str(kind), selector, reason,
                                       getattr(actor, "pk", None), label, now])  # fmt: skip
            # Before the batch's own commands go in: the supersede's lookup in the open
            # commands then has none of them to step over.
            _supersede(script, kind, batch, engines, now)
            ids = _commands_insert(
                script, batch, engines, kind=kind, params=clean, reason=reason, actor=actor,
                label=label, now=now, expires_at=expires_at,
            )  # fmt: skip
            _set_desired_states(script, kind, clean, engines, now)
            event = audit_event(
                target=batch, outcome="ok",
                data={"kind": kind, "params": clean, "selector": selector,
                      "engines": [e.name for e in engines],
                      "expires_at": expires_at.isoformat() if expires_at else None},
                **audit,
            )  # fmt: skip
            audit_add(script, event, now)
            script.run()
            batch._state.adding = False
            batch._state.db = connection.alias
            frames = delivery.frames_for(
                [(e.pk, command_id) for e, command_id in zip(engines, ids, strict=True)],
                kind=kind, params=clean, reason=reason, issued_by=label, issued_at=now,
                expires_at=expires_at,
            )  # fmt: skip
            transaction.on_commit(partial(delivery.push, frames))
            # Connected engines show their new state when they answer, within milliseconds; the
            # screens hear of the others now. (Reading and sending a hundred rows here competes
            # with the push to the engines for the same process.)
            offline = [e.pk for e in engines if not e.connected]
            if offline:
                transaction.on_commit(partial(_publish_rows, offline))
    if refusal:
        command_refuse(refusal, **audit, data={"selector": selector})
    # Built once the push is out (on commit), not before it: a hundred model instances take a
    # few milliseconds that no engine should wait for.
    commands = []
    for engine, command_id in zip(engines, ids, strict=True):
        command = Command(
            id=command_id, engine=engine, batch=batch, kind=kind, params=clean, reason=reason,
            issued_by=actor, issued_by_label=label, status=Command.Status.PENDING,
            created_at=now, expires_at=expires_at,
        )  # fmt: skip
        command._state.adding = False
        command._state.db = batch._state.db
        commands.append(command)
    return batch, commands


_INSERT_BATCH = """
    INSERT INTO controlplane_commandbatch
        (id, kind, selector, reason, issued_by_id, issued_by_label, created_at)
    VALUES (%s::uuid, %s, %s, %s, %s::integer, %s, %s)
"""

_INSERT_COMMANDS = f"""
    INSERT INTO controlplane_command
        (id, engine_id, batch_id, kind, params, reason, issued_by_id, issued_by_label, status,
         created_at, expires_at, delivery_attempts, result, detail, state_after)
    SELECT c.id, c.engine_id, %s::uuid, %s, %s::jsonb, %s, %s::integer, %s,
           '{Command.Status.PENDING.value}', %s, %s::timestamptz, 0, '{{}}', '', ''
      FROM unnest(%s::uuid[], %s::bigint[]) AS c(id, engine_id)
"""

# Not prepared: the command table grows all day, and this lookup's plan must see how big it is.
_SUPERSEDE = f"""
    UPDATE controlplane_command
       SET status = '{Command.Status.SUPERSEDED.value}', completed_at = %s, detail = %s
     WHERE engine_id = ANY(%s::bigint[]) AND kind = ANY(%s::text[])
       AND status = '{Command.Status.PENDING.value}' AND created_at <= %s
       AND batch_id IS DISTINCT FROM %s::uuid
"""

_SET_DESIRED_STATE = """
    UPDATE controlplane_engine
       SET desired_state = %s, desired_until = %s::timestamptz, desired_changed_at = %s,
           desired_set_by_right = %s
     WHERE id = ANY(%s::bigint[])
"""

# A state held by a stronger right than the one that set it (see _HOLDS_STATE).
_SET_DESIRED_RIGHT = """
    UPDATE controlplane_engine SET desired_set_by_right = %s WHERE id = ANY(%s::bigint[])
"""


def _commands_insert(
    script: Script,
    batch: CommandBatch,
    engines: list[Engine],
    *,
    kind: str,
    params: dict[str, Any],
    reason: str,
    actor: AbstractBaseUser | None,
    label: str,
    now: datetime,
    expires_at: datetime | None,
) -> list[uuid.UUID]:
    """The batch's commands in one statement; returns their ids, in the order of ``engines``.

    A fleet kill is on the critical path of every engine it stops: building and saving a hundred
    model instances took longer than everything else the transaction does (bench/).
    """
    ids = [uuid.uuid4() for _ in engines]
    script.add(
        _INSERT_COMMANDS,
        [str(batch.pk), str(kind), json.dumps(params), reason, getattr(actor, "pk", None), label,
         now, expires_at, text_array(map(str, ids)), text_array(str(e.pk) for e in engines)],
    )  # fmt: skip
    return ids


def _publish_rows(engine_ids: list[int]) -> None:
    """The new desired states on the operators' screens at once, not when the engines answer."""
    events.announce(events.engines_changed, engine_ids=engine_ids)


def _supersede(
    script: Script, kind: str, batch: CommandBatch, engines: list[Engine], now: datetime
) -> None:
    obsolete = _SUPERSEDES.get(kind)  # type: ignore[call-overload]
    if not obsolete:
        return
    # One statement for the whole batch: a fleet kill must not pay a round trip per engine.
    script.add(
        _SUPERSEDE,
        [now, f"superseded by {kind} (batch {batch.pk}) before it was delivered",
         text_array(str(e.pk) for e in engines), text_array(obsolete), now, str(batch.pk)],
        prepare=False,
    )  # fmt: skip


def _set_desired_states(
    script: Script, kind: str, params: dict[str, Any], engines: list[Engine], now: datetime
) -> None:
    # Engines that end in the same desired state are updated by one statement.
    groups: dict[tuple[str, datetime | None, str], list[int]] = {}
    # Engines whose state stays as it is, but held now by a stronger right than before.
    raised: dict[str, list[int]] = {}
    command_right = _right_for(kind, params)
    for engine in engines:
        desired, until = engine.desired_state, engine.desired_until
        if kind == CommandKind.KILL:
            desired, until = TradingState.HALTED, None
        elif kind == CommandKind.RESUME:
            desired, until = TradingState.ACTIVE, None
        elif kind == CommandKind.PAUSE and desired in (TradingState.ACTIVE, TradingState.PAUSED):
            duration = params.get("duration")
            desired = TradingState.PAUSED
            until = now + timedelta(seconds=duration) if duration else None
        elif kind in (CommandKind.REDUCE, CommandKind.FLATTEN) and desired != TradingState.HALTED:
            desired, until = TradingState.REDUCING, None
        # The state is set by this command, with its right; a resume sets one that needs none.
        right = "" if kind == CommandKind.RESUME else command_right
        if (desired, until) != (engine.desired_state, engine.desired_until):
            groups.setdefault((desired, until, right), []).append(engine.pk)
            engine.desired_state, engine.desired_until = desired, until
            engine.desired_set_by_right = right
        elif (
            kind in _HOLDS_STATE.get(desired, ())  # type: ignore[call-overload]
            and _RIGHT_RANK[right] > _RIGHT_RANK.get(engine.desired_set_by_right, 0)
        ):
            # A risk manager's flatten of an engine an operator had already reduced leaves it
            # REDUCING, but now as the flatten left it: undoing it needs the flatten's right.
            raised.setdefault(right, []).append(engine.pk)
            engine.desired_set_by_right = right
    for (desired, until, right), ids in groups.items():
        script.add(_SET_DESIRED_STATE, [str(desired), until, now, right, text_array(map(str, ids))])
    for right, ids in raised.items():
        script.add(_SET_DESIRED_RIGHT, [right, text_array(map(str, ids))])


# The kinds that, issued to an engine already in a state, hold it there (and their right with it).
_HOLDS_STATE = {
    TradingState.HALTED: (CommandKind.KILL,),
    TradingState.REDUCING: (CommandKind.REDUCE, CommandKind.FLATTEN),
    TradingState.PAUSED: (CommandKind.PAUSE,),
}


def _resume_outranked(actor: AbstractBaseUser, label: str, engines: list[Engine]) -> str:
    """Why ``actor`` may not resume these engines, or "": a state set by a right the actor lacks
    (a risk manager's flatten) is not undone by a lower one (an operator's resume)."""
    refusals = []
    for engine in engines:
        right = engine.desired_set_by_right
        if not right or actor.has_perm(f"controlplane.{right}"):  # type: ignore[attr-defined]
            continue
        refusals.append(
            f"{engine.name} is {engine.desired_state}, set by {_state_setter(engine, right)}: "
            f"resuming it needs the {right} permission, which {label} does not have"
        )
    return "; ".join(refusals)


def _state_setter(engine: Engine, right: str) -> str:
    """The latest command that needed ``right`` since the engine's state changed, as words."""
    commands = Command.objects.filter(engine_id=engine.pk).order_by("-created_at")
    if engine.desired_changed_at is not None:
        commands = commands.filter(created_at__gte=engine.desired_changed_at)
    for kind, params, issued_by in commands.values_list("kind", "params", "issued_by_label")[:50]:
        if _right_for(kind, params) == right:
            return f"{_command_label(kind, params)} of {issued_by}"
    return f"a command needing {right}"


# --- resume after a kill: four-eyes ---------------------------------------------------------------


def resume_request_create(
    *,
    engine: Engine,
    reason: str,
    actor: AbstractBaseUser,
    ip_address: str | None = None,
) -> ResumeRequest:
    """Ask for a HALTED engine to be resumed; a second person approves or rejects."""
    reason = (reason or "").strip()
    label = actor.get_username()
    audit = {"action": "resume_request", "actor": actor, "ip_address": ip_address,
             "reason": reason, "target": engine, "actor_label": label}  # fmt: skip
    if not reason:
        raise CommandInvalid({"reason": "say why the engine may trade again"})
    if not actor.has_perm("controlplane.issue_pause"):  # type: ignore[attr-defined]
        command_refuse(f"{label} may not ask for a resume", **audit)
    with transaction.atomic():
        locked = Engine.objects.select_for_update().get(pk=engine.pk)
        if locked.desired_state != TradingState.HALTED:
            raise CommandInvalid(
                {"engine": f"{engine.name} is not HALTED ({locked.desired_state}); resume it "
                           "directly"}
            )  # fmt: skip
        existing = ResumeRequest.objects.filter(engine=engine, status="open").first()
        if existing is not None:
            raise CommandInvalid(
                {"engine": f"a resume of {engine.name} was already asked for by "
                           f"{existing.requested_by_label}; it awaits approval"}
            )  # fmt: skip
        request = ResumeRequest.objects.create(
            engine=engine, reason=reason, requested_by=actor, requested_by_label=label
        )
        audit_record(**audit | {"target": request}, data={"engine": engine.name})
    return request


def resume_request_approve(
    *,
    resume_request: ResumeRequest,
    actor: AbstractBaseUser,
    reason: str = "",
    ip_address: str | None = None,
) -> Command:
    """The second person's approval: issues the resume that lifts the kill."""
    label = actor.get_username()
    audit = {"action": "resume_approve", "actor": actor, "actor_label": label,
             "ip_address": ip_address, "reason": reason, "target": resume_request}  # fmt: skip
    if not actor.has_perm("controlplane.approve_resume"):  # type: ignore[attr-defined]
        command_refuse(
            f"{label} may not approve a resume after a kill: only risk managers may", **audit
        )
    if resume_request.requested_by_id == actor.pk:
        command_refuse(
            f"{label} asked for this resume and cannot also approve it: a second person must",
            **audit,
        )
    if _latched_by(resume_request.engine, actor):
        command_refuse(
            f"{label} issued the kill that halted {resume_request.engine.name} and cannot also "
            "approve its release: another risk manager must",
            **audit,
        )
    now = timezone.now()
    with transaction.atomic():
        # Claimed with a conditional update: two approvers clicking at once make one resume.
        claimed = ResumeRequest.objects.filter(pk=resume_request.pk, status="open").update(
            status=ResumeRequest.Status.APPROVED, decided_by=actor, decided_by_label=label,
            decided_at=now, decision_reason=reason,
        )  # fmt: skip
        if claimed != 1:
            raise CommandInvalid({"resume_request": "this request was already decided"})
        resume_request.refresh_from_db()
        batch = command_issue(
            kind=CommandKind.RESUME,
            selector=f"engine:{resume_request.engine.name}",
            reason=f"{resume_request.reason} (asked by {resume_request.requested_by_label}, "
                   f"approved by {label})",
            actor=actor,
            ip_address=ip_address,
            approved_resume=resume_request,
        )  # fmt: skip
        command = batch.commands.get()
        ResumeRequest.objects.filter(pk=resume_request.pk).update(command=command)
        audit_record(**audit, data={"engine": resume_request.engine.name,
                                    "requested_by": resume_request.requested_by_label,
                                    "command": str(command.pk)})  # fmt: skip
    return command


def kills_latched_by(actor: AbstractBaseUser, engine_ids: list[int]) -> set[int]:
    """Which of these engines ``actor`` holds HALTED by a kill: the kill that latched it, or one
    issued since (it held the latch too). Their release needs someone else's approval."""
    return set(
        Command.objects.filter(
            engine_id__in=engine_ids, kind=CommandKind.KILL, issued_by=actor,
            engine__desired_state=TradingState.HALTED,
            created_at__gte=Coalesce("engine__desired_changed_at", "created_at"),
        ).values_list("engine_id", flat=True)
    )  # fmt: skip


def _latched_by(engine: Engine, actor: AbstractBaseUser) -> bool:
    return engine.pk in kills_latched_by(actor, [engine.pk])


def resume_request_reject(
    *,
    resume_request: ResumeRequest,
    actor: AbstractBaseUser,
    reason: str,
    ip_address: str | None = None,
) -> ResumeRequest:
    """A risk manager turns a request down, or its requester withdraws it."""
    label = actor.get_username()
    withdraw = resume_request.requested_by_id == actor.pk
    action = "resume_withdraw" if withdraw else "resume_reject"
    audit = {"action": action, "actor": actor, "actor_label": label, "ip_address": ip_address,
             "reason": reason, "target": resume_request}  # fmt: skip
    if not withdraw and not actor.has_perm("controlplane.approve_resume"):  # type: ignore[attr-defined]
        command_refuse(f"{label} may not reject a resume request: only risk managers may", **audit)
    status = ResumeRequest.Status.WITHDRAWN if withdraw else ResumeRequest.Status.REJECTED
    with transaction.atomic():
        claimed = ResumeRequest.objects.filter(pk=resume_request.pk, status="open").update(
            status=status, decided_by=actor, decided_by_label=label, decided_at=timezone.now(),
            decision_reason=reason,
        )  # fmt: skip
        if claimed != 1:
            raise CommandInvalid({"resume_request": "this request was already decided"})
        audit_record(**audit, data={"engine": resume_request.engine.name})
    resume_request.refresh_from_db()
    return resume_request


# --- personal API tokens --------------------------------------------------------------------------


@transaction.atomic
def api_token_create(
    *, user: AbstractBaseUser, name: str, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A token for scripts acting as ``user``; returned in clear text this once only."""
    token = ApiToken.new_token()
    api_token = ApiToken(user=user, name=name, expires_at=expires_at)
    api_token.set_token(token)
    api_token.full_clean()
    api_token.save()
    audit_record(action="api_token_create", actor=user, target=api_token, data={"name": name})
    return api_token, token


@cache
def _token_user_sql() -> tuple[str, list[str]]:
    """The token, its user's row and the user's permissions (their own and their groups', named
    as ModelBackend names them) in one statement, and the user's field names in its order."""
    user_model = get_user_model()
    meta = user_model._meta
    fields = meta.concrete_fields
    columns = ", ".join(f"u.{connection.ops.quote_name(f.column)}" for f in fields)
    pk = meta.pk.column  # type: ignore[union-attr]
    own = user_model.user_permissions.through._meta.db_table  # type: ignore[attr-defined]
    groups = user_model.groups.through._meta.db_table  # type: ignore[attr-defined]
    sql = f"""
        SELECT t.id, t.expires_at, t.last_used_at,
               ARRAY(SELECT ct.app_label || '.' || p.codename
                       FROM auth_permission p
                       JOIN django_content_type ct ON ct.id = p.content_type_id
                      WHERE p.id IN (SELECT permission_id FROM {own} WHERE user_id = u.{pk})
                         OR p.id IN (SELECT gp.permission_id FROM auth_group_permissions gp
                                       JOIN {groups} ug ON ug.group_id = gp.group_id
                                      WHERE ug.user_id = u.{pk})),
               {columns}
          FROM controlplane_apitoken t
          JOIN {meta.db_table} u ON u.{pk} = t.user_id
         WHERE t.token_hash = %s
    """
    return sql, [f.attname for f in fields]


def api_token_user(token: str | None) -> AbstractBaseUser | None:
    """The active user a personal API token belongs to, or None.

    Every API call starts here, a kill among them: one prepared statement, without the ORM's
    query building, which took longer than the database did.
    """
    if not token or not token.startswith(ApiToken.PREFIX) or len(token) > 200:
        return None
    sql, attnames = _token_user_sql()
    with connection.cursor() as cursor:
        script = Script(cursor)
        script.add(sql, [hash_token(token)], fetch="token")
        rows = script.run()["token"]
    if not rows:
        return None
    token_id, expires_at, last_used_at, permissions, *values = rows[0]
    user = get_user_model().from_db(connection.alias, attnames, values)
    now = timezone.now()
    if not user.is_active:
        return None
    if not user.is_superuser:  # (has_perm asks no backend for a superuser)
        # ModelBackend's own cache of the user's permissions, filled by the query that found
        # the token: the request's permission checks then cost no round trip of their own.
        user._perm_cache = set(permissions)  # type: ignore[attr-defined]
    if expires_at is not None and expires_at <= now:
        return None
    if last_used_at is None or now - last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token_id).update(last_used_at=now)
    return user


def commands_expire(*, now: datetime | None = None) -> int:
    """Undelivered or unacknowledged commands past their expiry become ``expired``."""
    now = now or timezone.now()
    return Command.objects.filter(
        status__in=[Command.Status.PENDING, Command.Status.DELIVERED], expires_at__lte=now
    ).update(status=Command.Status.EXPIRED, completed_at=now, detail="expired before delivery")


def timed_pauses_end(*, now: datetime | None = None, engine_id: int | None = None) -> list[int]:
    """Timed pauses whose end has passed: the stored desired state goes back to ACTIVE.

    Each is a conditional update (still PAUSED, still with that end): a pause or a kill issued
    in the meantime is left alone, and two runs at once end each pause once. Returns the engines'
    ids. Called by a periodic task and by each hello; until it runs, readers take such a pause
    as over (Engine.desired_state_at).
    """
    now = now or timezone.now()
    ended = Engine.objects.filter(
        desired_state=TradingState.PAUSED, desired_until__isnull=False, desired_until__lte=now
    )
    if engine_id is not None:
        ended = ended.filter(pk=engine_id)
    ids = []
    for pk, name, until in ended.values_list("pk", "name", "desired_until"):
        claimed = Engine.objects.filter(
            pk=pk, desired_state=TradingState.PAUSED, desired_until=until
        ).update(desired_state=TradingState.ACTIVE, desired_until=None, desired_changed_at=now)
        if claimed:
            ids.append(pk)
            log.info("engine %s: timed pause ended at %s; desired state ACTIVE", name, until)
            # A change of the desired state like any other: in the audit log, by nobody.
            audit_record(
                action="pause_end", actor_label="control plane (timed pause)",
                target=Engine(pk=pk, name=name), reason=f"the pause ran until {until.isoformat()}",
                data={"engine": name, "until": until.isoformat()},
            )  # fmt: skip
    if ids:
        transaction.on_commit(partial(_publish_rows, ids))
    return ids
