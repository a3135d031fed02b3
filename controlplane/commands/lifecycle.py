"""A command's status moves, each by a named event of Command.TRANSITIONS.

Nothing else writes a command's status (issuing inserts it ``pending``). The ORM's filters and the
SQL's conditions are built here from the table, so a move the table does not have changes
nothing, whichever path asks for it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, F, QuerySet, Value, When
from django.utils import timezone

from controlplane.audit import audit_add, audit_event
from controlplane.models import Command, CommandKind, Engine
from controlplane.sqlscript import Script, json_text, text_array
from engine_sdk import protocol as p

Event = Command.Event

_WORD = re.compile(r"[a-z_]+")


def _quoted(value: str) -> str:
    # The table's statuses and events are our own words; checked all the same, as they are
    # written into SQL text (the statements are built once, at import).
    text = str(value)
    if not _WORD.fullmatch(text):
        raise ValueError(f"not a status or event: {text!r}")
    return f"'{text}'"


def _moves(events: Iterable[str]) -> list[tuple[str, str, str]]:
    """(status, event, new status) of each move of ``events`` in the table."""
    wanted = set(events)
    return [(s, e, t) for (s, e), t in Command.TRANSITIONS.items() if e in wanted]


def transition_sql(*events: str, status: str = "status", event: str = "") -> tuple[str, str]:
    """The SQL of moving rows by the table: (the condition a row must meet to move, the SQL of the
    status it moves to). ``status`` is the SQL of the row's status; with several events, ``event``
    is the SQL of the event each row takes."""
    moves = _moves(events)
    targets = {t for _, _, t in moves}
    if len(events) == 1:
        condition = f"{status} IN ({', '.join(_quoted(s) for s, _, _ in moves)})"
        whens = [f"WHEN {status} = {_quoted(s)} THEN {_quoted(t)}" for s, _, t in moves]
    else:
        pairs = ", ".join(f"({_quoted(e)}, {_quoted(s)})" for s, e, _ in moves)
        condition = f"({event}, {status}) IN ({pairs})"
        whens = [
            f"WHEN {event} = {_quoted(e)} AND {status} = {_quoted(s)} THEN {_quoted(t)}"
            for s, e, t in moves
        ]
    target = _quoted(targets.pop()) if len(targets) == 1 else f"CASE {' '.join(whens)} END"
    return condition, target


def transition(commands: QuerySet[Command], event: str, **fields: Any) -> int:
    """Move the commands ``event`` moves (the others are left as they are), setting ``fields``
    too; returns how many moved."""
    moves = _moves([event])
    new_status = Case(*(When(status=s, then=Value(t)) for s, _, t in moves))
    return commands.filter(status__in=[s for s, _, _ in moves]).update(status=new_status, **fields)


# --- expiry -----------------------------------------------------------------------------------


def commands_expire(*, now: datetime | None = None, engine_id: int | None = None) -> int:
    """Commands past their expiry that the engine has not acknowledged become ``expired``; of
    one engine, or of all. The gateway runs it before it hands an engine its commands, a periodic
    task for the engines that are offline. Returns how many."""
    now = now or timezone.now()
    commands = Command.objects.filter(expires_at__lte=now)
    if engine_id is not None:
        commands = commands.filter(engine_id=engine_id)
    return transition(commands, Event.EXPIRE, completed_at=now, detail="expired before delivery")


# --- supersede and replace --------------------------------------------------------------------

_SUPERSEDE_WHERE, _SUPERSEDED = transition_sql(Event.SUPERSEDE)

# Not prepared: the command table grows all day, and this lookup's plan must see how big it is.
SUPERSEDE = f"""
    UPDATE {Command._meta.db_table}
       SET status = {_SUPERSEDED}, completed_at = %s, detail = %s
     WHERE engine_id = ANY(%s::bigint[]) AND kind = ANY(%s::text[])
       AND {_SUPERSEDE_WHERE} AND created_at <= %s
       AND batch_id IS DISTINCT FROM %s::uuid
"""


def commands_supersede(
    script: Script,
    *,
    engine_ids: Iterable[int],
    kinds: Iterable[str],
    detail: str,
    now: datetime,
    batch_id: uuid.UUID,
) -> None:
    """Queue on ``script`` the supersede of these engines' commands of ``kinds`` issued up to
    ``now`` by other batches: one statement for a whole batch, which a fleet kill pays once."""
    script.add(
        SUPERSEDE,
        [now, detail, text_array(map(str, engine_ids)), text_array(kinds), now, str(batch_id)],
        prepare=False,
    )


def limits_replace(*, engine_id: int, now: datetime) -> int:
    """The welcome carries the current limits: the engine's unacknowledged set_limits are
    obsolete."""
    commands = Command.objects.filter(engine_id=engine_id, kind=CommandKind.SET_LIMITS)
    detail = "superseded by the limits sent in the welcome"
    return transition(commands, Event.REPLACE, completed_at=now, detail=detail)


# --- delivery ---------------------------------------------------------------------------------


def commands_deliver(commands: list[Command], *, now: datetime) -> None:
    """These commands' frames are on their way to the engine: each attempt is counted, and the
    undelivered ones become ``delivered``."""
    if not commands:
        return
    ids = [c.pk for c in commands]
    Command.objects.filter(pk__in=ids).update(delivery_attempts=F("delivery_attempts") + 1)
    transition(Command.objects.filter(pk__in=ids), Event.DELIVER, delivered_at=now)


_DELIVER_WHERE, _DELIVERED = transition_sql(Event.DELIVER, status="c.status")

# The engine may have acknowledged already; then only the attempt is counted.
_MARK_DELIVERED = f"""
    WITH l AS (
        SELECT c.id FROM {Command._meta.db_table} c
          JOIN unnest(%(engines)s::bigint[], %(ids)s::uuid[]) AS d(engine_id, id)
            ON c.id = d.id AND c.engine_id = d.engine_id
         ORDER BY c.id FOR UPDATE OF c
    )
    UPDATE {Command._meta.db_table} AS c
       SET status = CASE WHEN {_DELIVER_WHERE} THEN {_DELIVERED} ELSE c.status END,
           delivered_at = CASE WHEN {_DELIVER_WHERE} THEN %(now)s ELSE c.delivered_at END,
           delivery_attempts = c.delivery_attempts + 1
      FROM l WHERE c.id = l.id
"""


def mark_delivered(delivered: list[tuple[int, uuid.UUID]]) -> None:
    """Pushes reached these engines' sockets: (engine id, command id) pairs, in one statement.

    The engine id is matched too, so a command is only ever marked for the engine it belongs to.
    The rows are locked in id order, as command_answers locks them.
    """
    if not delivered:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            _MARK_DELIVERED,
            {
                "now": datetime.now(UTC),
                "engines": [engine_id for engine_id, _ in delivered],
                "ids": [command_id for _, command_id in delivered],
            },
        )


# --- the engines' answers ---------------------------------------------------------------------

# A set_limits takes the engine's revision with the result that will move it.
_LIMITS_OPEN, _ = transition_sql(Event.SUCCEED, status="c.status")
_ACK_WHERE, _ACKNOWLEDGED = transition_sql(Event.ACKNOWLEDGE, status="c.status")
_RESULT_WHERE, _RESULTED = transition_sql(
    *sorted(set(Command.RESULT_EVENTS.values())), status="c.status", event="r.event"
)

# Each statement locks its rows in id order, as issuing does (engine rows first, then
# commands): two transactions that take several of the same rows then queue instead of
# deadlocking.
_ANSWER_ENGINES = f"""
    WITH d AS (
        SELECT * FROM json_to_recordset(%s::json)
            AS d(engine_id bigint, state text, limits_command uuid, limits_version integer)
    ), l AS (
        SELECT e.id FROM {Engine._meta.db_table} e JOIN d ON d.engine_id = e.id
        ORDER BY e.id FOR UPDATE OF e
    )
    UPDATE {Engine._meta.db_table} AS e
       SET reported_state = COALESCE(d.state, e.reported_state),
           limits_version = COALESCE((
               SELECT d.limits_version FROM {Command._meta.db_table} c
                WHERE c.id = d.limits_command AND c.engine_id = e.id
                  AND c.kind = '{CommandKind.SET_LIMITS}' AND {_LIMITS_OPEN}
           ), e.limits_version)
      FROM l, d
     WHERE e.id = l.id AND d.engine_id = e.id"""
# An engine can only touch its own commands; a repeated or late ack never moves a command
# backwards. A push acknowledged before it was marked delivered gets its delivered_at too.
_ANSWER_ACKS = f"""
    WITH l AS (
        SELECT c.id FROM {Command._meta.db_table} c
          JOIN unnest(%s::bigint[], %s::uuid[]) AS a(engine_id, id)
            ON c.id = a.id AND c.engine_id = a.engine_id
         WHERE {_ACK_WHERE}
         ORDER BY c.id FOR UPDATE OF c
    )
    UPDATE {Command._meta.db_table} AS c
       SET status = {_ACKNOWLEDGED}, acknowledged_at = %s,
           delivered_at = COALESCE(c.delivered_at, %s)
      FROM l WHERE c.id = l.id"""
# Only an open command takes a result: a repeated one changes nothing (and is not audited).
_ANSWER_RESULTS = f"""
    WITH r AS (
        SELECT * FROM json_to_recordset(%s::json) AS r(engine_id bigint, id uuid, event text,
            result jsonb, detail text, state_after text)
    ), l AS (
        SELECT c.id FROM {Command._meta.db_table} c
          JOIN r ON c.id = r.id AND c.engine_id = r.engine_id
         WHERE {_RESULT_WHERE}
         ORDER BY c.id FOR UPDATE OF c
    )
    UPDATE {Command._meta.db_table} AS c
       SET status = {_RESULTED}, completed_at = %s,
           acknowledged_at = COALESCE(c.acknowledged_at, %s),
           delivered_at = COALESCE(c.delivered_at, %s), result = r.result, detail = r.detail,
           state_after = r.state_after
      FROM l, r
     WHERE c.id = l.id AND r.id = c.id AND r.engine_id = c.engine_id
    RETURNING c.id, c.engine_id, c.kind, c.batch_id, c.status,
              (SELECT e.name FROM {Engine._meta.db_table} e WHERE e.id = c.engine_id)"""

Answer = tuple[int, p.CommandAck | p.CommandResult]


def command_answers(answers: list[Answer]) -> None:
    """Store engines' command_acks and command_results, (engine id, frame) in arrival order, in
    one transaction and two round trips whatever their number.

    A fleet kill brings a hundred acks and a hundred results within milliseconds; stored one
    transaction each, they cost the web process more than the kill's own push, on the same CPU.
    A result audits its command and records the engine's reported state (and, for set_limits,
    the revision it now enforces). Raises on a database failure (nothing is then stored).
    """
    # Keyed by (engine, command): an answer naming another engine's command (which the
    # statements ignore) must not take the place of that engine's own answer in the batch.
    acks: set[tuple[int, uuid.UUID]] = set()
    results: dict[tuple[int, uuid.UUID], p.CommandResult] = {}
    engines: dict[int, dict[str, Any]] = {}
    for engine_id, frame in answers:
        if isinstance(frame, p.CommandAck):
            acks.add((engine_id, frame.command_id))
            continue
        results.setdefault((engine_id, frame.command_id), frame)  # the first one counts
        version = frame.data.get("limits_version")
        limits = frame.status == "succeeded" and isinstance(version, int)
        if frame.trading_state is None and not limits:
            continue
        update = engines.setdefault(engine_id, {"engine_id": engine_id})
        if frame.trading_state is not None:
            update["state"] = frame.trading_state  # the last one wins
        if limits:
            update["limits_command"], update["limits_version"] = frame.command_id, version
    now = datetime.now(UTC)
    with transaction.atomic(), connection.cursor() as cursor:
        script = Script(cursor)
        if engines:
            engine_rows = json_text([engines[k] for k in sorted(engines)])
            script.add(_ANSWER_ENGINES, [engine_rows], prepare=False)
        if acks:
            engine_ids = text_array(str(engine_id) for engine_id, _ in acks)
            command_ids = text_array(str(command_id) for _, command_id in acks)
            script.add(_ANSWER_ACKS, [engine_ids, command_ids, now, now], prepare=False)
        if results:
            result_rows = json_text(
                [
                    {
                        "engine_id": engine_id,
                        "id": command_id,
                        "event": Command.RESULT_EVENTS[frame.status],
                        "result": frame.data,
                        "detail": frame.detail,
                        "state_after": frame.trading_state or "",
                    }
                    for (engine_id, command_id), frame in results.items()
                ]
            )
            script.add(
                _ANSWER_RESULTS, [result_rows, now, now, now], fetch="results", prepare=False
            )
        completed = script.run().get("results", ())
        for command_id, engine_id, kind, batch_id, status, engine_name in completed:
            frame = results[engine_id, command_id]
            command = Command(id=command_id, engine_id=engine_id, kind=kind, status=status)
            event = audit_event(
                action=f"command_{kind}_result",
                actor_label=f"engine:{engine_name}",
                target=command,
                outcome=frame.status,
                reason=frame.detail[:2000],
                data={
                    "data": frame.data,
                    "trading_state": frame.trading_state,
                    "batch": str(batch_id) if batch_id else None,
                },
            )
            audit_add(script, event, now)
        script.run()
