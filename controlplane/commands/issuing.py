"""Issuing commands: checked (the request, the actor's rights, a kill's typed confirmation),
written as one batch with the desired states they set, then pushed to the engines."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from controlplane import capabilities, events
from controlplane.audit import audit_add, audit_event
from controlplane.commands import delivery, lifecycle
from controlplane.commands.desired_state import desired_states_set
from controlplane.commands.errors import CommandInvalid, command_refuse
from controlplane.commands.params import command_params_clean
from controlplane.commands.rights import permission_for, permission_refusal, resume_outranked
from controlplane.models import (
    Command,
    CommandBatch,
    CommandKind,
    Engine,
    Mode,
    ResumeRequest,
    TradingState,
)
from controlplane.sqlscript import Script, text_array

MAX_EXPIRY_S = 7 * 24 * 3600
KILL_ALL_CONFIRMATION = "KILL ALL"

# What a new command makes obsolete among an engine's still-undelivered commands.
_SUPERSEDES = {
    CommandKind.KILL: (
        CommandKind.PAUSE,
        CommandKind.RESUME,
        CommandKind.REDUCE,
        CommandKind.FLATTEN,
        CommandKind.CANCEL_ALL,
    ),
    CommandKind.RESUME: (CommandKind.PAUSE,),
    CommandKind.PAUSE: (CommandKind.RESUME,),
    CommandKind.SET_LIMITS: (CommandKind.SET_LIMITS,),
}

_EXPIRES = (
    CommandKind.PAUSE,
    CommandKind.REDUCE,
    CommandKind.FLATTEN,
    CommandKind.CANCEL_ALL,
    CommandKind.KILL_DRILL,
)

# What issuing reads of each engine it locks.
_ISSUE_FIELDS = (
    "pk",
    "name",
    "desired_state",
    "desired_until",
    "desired_changed_at",
    "desired_set_by_right",
    "connected",
    # The last event stored when the batch was written: the batch holds the engines' rows locked,
    # so nothing the engine sends after it is counted in (the journal's snapshot of a kill).
    "last_seq",
    "capabilities",
)


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


def kill_confirmation_check(selector: str, confirmation: str | None) -> None:
    """Refuse a person's kill unless they typed what it hits (CommandInvalid on ``confirm``)."""
    expected = kill_confirmation(selector)
    if (confirmation or "").strip() != expected:
        message = f"type {expected} exactly to confirm a kill of {selector}"
        raise CommandInvalid({"confirm": message})


def _actor_label(actor: AbstractBaseUser | None, actor_label: str | None) -> str:
    if actor_label:
        return actor_label
    return actor.get_username() if actor is not None else "system"


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
    confirmation: str | None = None,
    drill: bool = False,
    releases_drill_kill: Command | None = None,
) -> CommandBatch:
    """Issue one command to every engine the selector names, as one batch.

    ``actor`` None is the control plane itself (a risk limit, an alert rule): it passes the
    permission checks and is labelled by ``actor_label``. A person's kill needs
    ``confirmation``: what they typed, the engine's name or KILL ALL (kill_confirmation).
    Delivery is a push to each engine's socket once the transaction commits; the gateway's
    heartbeat check covers a lost push, so issuing never depends on Redis or Celery being up.
    """
    batch, _ = command_batch_issue(
        kind=kind,
        selector=selector,
        reason=reason,
        params=params,
        actor=actor,
        actor_label=actor_label,
        ip_address=ip_address,
        expires_in=expires_in,
        approved_resume=approved_resume,
        confirmation=confirmation,
        drill=drill,
        releases_drill_kill=releases_drill_kill,
    )
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
    confirmation: str | None = None,
    drill: bool = False,
    releases_drill_kill: Command | None = None,
) -> tuple[CommandBatch, list[Command]]:
    """``command_issue``, also returning the batch's commands as they were written (ordered by
    engine id): the API answers with them instead of reading back the rows it has just written,
    which would compete with the push to the engines for the CPU.

    ``drill`` and ``releases_drill_kill`` are for the kill drill's service (golive.drills) only:
    a kill_drill is issued with ``drill``, never from a command form or the API; and a drill's
    own kill is released by a resume with ``releases_drill_kill`` (that kill), which needs no
    second person, and is refused if any other kill came to the engine since.
    """
    if kind == CommandKind.KILL_DRILL and not drill:
        raise CommandInvalid(
            {"kind": "a kill drill is started from the engine's go-live page, not as a command"}
        )
    if releases_drill_kill is not None and kind != CommandKind.RESUME:
        raise CommandInvalid({"kind": "only a resume releases a drill's kill"})
    if kind == CommandKind.KILL and actor is not None:
        # Before anything else, as the kill dialogs check it: a kill mistyped is never issued,
        # nor recorded as refused.
        kill_confirmation_check(selector, confirmation)
    label = _actor_label(actor, actor_label)
    reason = (reason or "").strip()
    audit = {
        "action": f"command_{kind}",
        "actor": actor,
        "actor_label": label,
        "ip_address": ip_address,
        "reason": reason,
    }
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
        permission = permission_for(kind, clean)
        if permission is not None and not actor.has_perm(permission):  # type: ignore[attr-defined]
            refusal = permission_refusal(label, kind, clean, permission)
            command_refuse(refusal, **audit, data={"selector": selector})
    expires_at = None
    if expires_in is not None:
        if kind not in _EXPIRES:
            raise CommandInvalid({"expires_in": f"a {kind} never expires"})
        if not timedelta(0) < expires_in <= timedelta(seconds=MAX_EXPIRY_S):
            raise CommandInvalid({"expires_in": f"expiry must be from 1 to {MAX_EXPIRY_S} s"})
    if releases_drill_kill is not None:
        # The engine lifts a kill only with approved_by: here the drill stands for the second
        # person, as the kill it releases was its own.
        clean = {"approved_by": f"kill drill of {label}", "drill_kill": str(releases_drill_kill.pk)}
    if approved_resume is not None:
        # The engine checks these: a resume out of HALTED without an approver is refused there too.
        clean = {
            "approved_by": label,
            "requested_by": approved_resume.requested_by_label,
            "resume_request": approved_resume.pk,
        }
    engine_query = engines_select(selector)

    with transaction.atomic(), connection.cursor() as cursor:
        # The engine rows are locked so that two batches to the same engine are ordered and its
        # desired state follows the last one.
        engines = list(engine_query.select_for_update().only(*_ISSUE_FIELDS).order_by("pk"))
        if not engines:
            raise CommandInvalid({"selector": f"no active engine matches {selector!r}"})
        refusal = ""
        if releases_drill_kill is not None:
            refusal = _drill_release_refusal(releases_drill_kill, engines)
            if not refusal and actor is not None:
                refusal = resume_outranked(actor, label, engines)
        elif kind == CommandKind.RESUME and approved_resume is None:
            halted = [e.name for e in engines if e.desired_state == TradingState.HALTED]
            if halted:
                verb = "is" if len(halted) == 1 else "are"
                refusal = (
                    f"{', '.join(halted)} {verb} HALTED by a kill: a resume needs a resume "
                    "request approved by a second person"
                )
            elif actor is not None:
                refusal = resume_outranked(actor, label, engines)
        if not refusal:
            now = timezone.now()
            if expires_in is not None:
                expires_at = now + expires_in
            batch = CommandBatch(
                id=uuid.uuid4(),
                kind=kind,
                selector=selector,
                reason=reason,
                issued_by=actor,
                issued_by_label=label,
                created_at=now,
            )
            # Every write of the batch in one round trip: a fleet kill is on the critical path
            # of each engine it stops, and each statement sent on its own cost a round trip.
            script = Script(cursor)
            batch_row = [str(batch.pk), str(kind), selector, reason, getattr(actor, "pk", None)]
            script.add(_INSERT_BATCH, [*batch_row, label, now])
            # Before the batch's own commands go in: the supersede's lookup in the open
            # commands then has none of them to step over.
            _supersede(script, kind, batch, engines, now)
            ids = _commands_insert(
                script,
                batch,
                engines,
                kind=kind,
                params=clean,
                reason=reason,
                actor=actor,
                label=label,
                now=now,
                expires_at=expires_at,
            )
            # An engine that said it does not handle the kind is not sent it, and its desired
            # state is left: the command fails at once instead (controlplane.capabilities).
            unable = [e for e in engines if not capabilities.sent_to(e.capabilities, kind)]
            able = [e for e in engines if e not in unable]
            if "strategy_id" not in clean:
                # A command for one strategy leaves the engine's own state as it is.
                desired_states_set(script, kind, clean, able, now)
            event = audit_event(
                target=batch,
                outcome="ok",
                data={
                    "kind": kind,
                    "params": clean,
                    "selector": selector,
                    "engines": [e.name for e in engines],
                    "expires_at": expires_at.isoformat() if expires_at else None,
                    "not_sent": [e.name for e in unable],
                },
                **audit,
            )
            audit_add(script, event, now)
            script.run()
            failed = _unable_fail(unable, ids, engines, kind, now)
            batch._state.adding = False
            batch._state.db = connection.alias
            frames = delivery.frames_for(
                [
                    (e.pk, command_id)
                    for e, command_id in zip(engines, ids, strict=True)
                    if command_id not in failed
                ],
                kind=kind,
                params=clean,
                reason=reason,
                issued_by=label,
                issued_at=now,
                expires_at=expires_at,
            )
            transaction.on_commit(partial(delivery.push, frames))
            # Connected engines show their new state when they answer, within milliseconds; the
            # screens hear of the others now. (Reading and sending a hundred rows here competes
            # with the push to the engines for the same process.)
            offline = [e.pk for e in engines if not e.connected]
            if offline:
                announce = partial(events.announce, events.engines_changed, engine_ids=offline)
                transaction.on_commit(announce)
            # After the push (on_commit runs in order): whoever listens never delays an engine.
            issued = partial(
                events.announce,
                events.commands_issued,
                batch_id=batch.pk,
                kind=str(kind),
                engine_ids=[e.pk for e in engines],
                last_seqs={e.pk: e.last_seq for e in engines},
                params=clean,
                actor_id=getattr(actor, "pk", None),
                actor_label=label,
            )
            transaction.on_commit(issued)
    if refusal:
        command_refuse(refusal, **audit, data={"selector": selector})
    # Built once the push is out (on commit), not before it: a hundred model instances take a
    # few milliseconds that no engine should wait for.
    commands = []
    for engine, command_id in zip(engines, ids, strict=True):
        command = Command(
            id=command_id,
            engine=engine,
            batch=batch,
            kind=kind,
            params=clean,
            reason=reason,
            issued_by=actor,
            issued_by_label=label,
            status=Command.Status.FAILED if command_id in failed else Command.Status.PENDING,
            detail=failed.get(command_id, ""),
            created_at=now,
            expires_at=expires_at,
            engine_connected=engine.connected,
        )
        command._state.adding = False
        command._state.db = batch._state.db
        commands.append(command)
    return batch, commands


def _unable_fail(
    unable: list[Engine], ids: list[uuid.UUID], engines: list[Engine], kind: str, now: datetime
) -> dict[uuid.UUID, str]:
    """Fail at once the commands of engines that said they do not handle ``kind``, and raise
    an alert for each; returns their details by command id."""
    if not unable:
        return {}
    failed: dict[uuid.UUID, str] = {}
    for engine, command_id in zip(engines, ids, strict=True):
        if engine in unable:
            failed[command_id] = (
                f"not sent: {engine.name} said in its hello that it does not handle {kind} "
                "(its capabilities), so the command cannot be enforced"
            )
    for command_id, detail in failed.items():
        commands = Command.objects.filter(pk=command_id)
        lifecycle.transition(commands, Command.Event.FAIL, detail=detail, completed_at=now)
    for engine in unable:
        capabilities.announce_missing(engine.pk, f"a {kind} command, which it does not handle")
    return failed


def _drill_release_refusal(kill: Command, engines: list[Engine]) -> str:
    """Why a drill's release may not go out, or "": read under the engines' lock, so no kill
    can slip in between the check and the resume."""
    if [e.pk for e in engines] != [kill.engine_id]:
        return "a drill's release goes to the one engine its kill halted"
    (engine,) = engines
    if engine.desired_state != TradingState.HALTED:
        return f"{engine.name} is not HALTED ({engine.desired_state}): nothing to release"
    later = Command.objects.filter(
        engine_id=engine.pk, kind=CommandKind.KILL, created_at__gt=kill.created_at
    ).exclude(pk=kill.pk)
    if later.exists():
        return (
            f"{engine.name} was killed again after the drill's kill: that kill is not the "
            "drill's to release; a resume needs a resume request approved by a second person"
        )
    return ""


_INSERT_BATCH = f"""
    INSERT INTO {CommandBatch._meta.db_table}
        (id, kind, selector, reason, issued_by_id, issued_by_label, created_at)
    VALUES (%s::uuid, %s, %s, %s, %s::integer, %s, %s)
"""

# A command starts pending; from there only the lifecycle moves it (Command.TRANSITIONS).
_INSERT_COMMANDS = f"""
    INSERT INTO {Command._meta.db_table}
        (id, engine_id, batch_id, kind, params, reason, issued_by_id, issued_by_label, status,
         created_at, expires_at, delivery_attempts, engine_connected, result, detail, state_after)
    SELECT c.id, c.engine_id, %s::uuid, %s, %s::jsonb, %s, %s::integer, %s,
           '{Command.Status.PENDING.value}', %s, %s::timestamptz, 0, c.connected, '{{}}', '', ''
      FROM unnest(%s::uuid[], %s::bigint[], %s::boolean[]) AS c(id, engine_id, connected)
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
    command = [str(batch.pk), str(kind), json.dumps(params), reason, getattr(actor, "pk", None)]
    targets = [
        text_array(map(str, ids)),
        text_array(str(e.pk) for e in engines),
        # Read under the engines' row locks: the connection as it stood when the batch went in.
        text_array("t" if e.connected else "f" for e in engines),
    ]
    script.add(_INSERT_COMMANDS, [*command, label, now, expires_at, *targets])
    return ids


def _supersede(
    script: Script, kind: str, batch: CommandBatch, engines: list[Engine], now: datetime
) -> None:
    obsolete = _SUPERSEDES.get(kind)  # type: ignore[call-overload]
    if not obsolete:
        return
    lifecycle.commands_supersede(
        script,
        engine_ids=[e.pk for e in engines],
        kinds=obsolete,
        detail=f"superseded by {kind} (batch {batch.pk}) before it was delivered",
        now=now,
        batch_id=batch.pk,
    )
