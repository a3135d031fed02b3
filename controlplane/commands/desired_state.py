"""The state each engine should be in: set by the commands issued to it, ended when a timed pause
runs out, and told again to an engine that reports a looser one (the latch)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane import events
from controlplane.audit import audit_record
from controlplane.commands.rights import RIGHT_RANK, right_for
from controlplane.models import Command, CommandKind, Engine, TradingState
from controlplane.sqlscript import Script, text_array

log = logging.getLogger(__name__)

_SET_DESIRED_STATE = f"""
    UPDATE {Engine._meta.db_table}
       SET desired_state = %s, desired_until = %s::timestamptz, desired_changed_at = %s,
           desired_set_by_right = %s
     WHERE id = ANY(%s::bigint[])
"""

# A state held by a stronger right than the one that set it (see _HOLDS_STATE).
_SET_DESIRED_RIGHT = f"""
    UPDATE {Engine._meta.db_table} SET desired_set_by_right = %s WHERE id = ANY(%s::bigint[])
"""

# The kinds that, issued to an engine already in a state, hold it there (and their right with it).
_HOLDS_STATE = {
    TradingState.HALTED: (CommandKind.KILL,),
    TradingState.REDUCING: (CommandKind.REDUCE, CommandKind.FLATTEN),
    TradingState.PAUSED: (CommandKind.PAUSE,),
}


def desired_states_set(
    script: Script, kind: str, params: dict[str, Any], engines: list[Engine], now: datetime
) -> None:
    """Queue on ``script`` the desired state a command of ``kind`` leaves each engine in."""
    # Engines that end in the same desired state are updated by one statement.
    groups: dict[tuple[str, datetime | None, str], list[int]] = {}
    # Engines whose state stays as it is, but held now by a stronger right than before.
    raised: dict[str, list[int]] = {}
    command_right = right_for(kind, params)
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
            and RIGHT_RANK[right] > RIGHT_RANK.get(engine.desired_set_by_right, 0)
        ):
            # A risk manager's flatten of an engine an operator had already reduced leaves it
            # REDUCING, but now as the flatten left it: undoing it needs the flatten's right.
            raised.setdefault(right, []).append(engine.pk)
            engine.desired_set_by_right = right
    for (desired, until, right), ids in groups.items():
        script.add(_SET_DESIRED_STATE, [str(desired), until, now, right, text_array(map(str, ids))])
    for right, ids in raised.items():
        script.add(_SET_DESIRED_RIGHT, [right, text_array(map(str, ids))])


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
                action="pause_end",
                actor_label="control plane (timed pause)",
                target=Engine(pk=pk, name=name),
                reason=f"the pause ran until {until.isoformat()}",
                data={"engine": name, "until": until.isoformat()},
            )
    if ids:
        transaction.on_commit(partial(events.announce, events.engines_changed, engine_ids=ids))
    return ids


LATCH_LABEL = "control plane (latched state)"


def enforce_desired_state(engine: Engine, reported: str) -> uuid.UUID | None:
    """The latch: an engine reporting a looser state than the one it should be in is told again.

    A HALTED engine that says it is anything else gets a kill (its open kill, or a new one when
    the earlier kill was carried out and then lost, say with the engine's disk); a PAUSED one that
    says ACTIVE while the pause lasts gets the pause for the rest of its time. Returns the id of
    the command that does it.
    """
    desired = engine.desired_state
    now = datetime.now(UTC)
    if desired == TradingState.HALTED and reported != TradingState.HALTED:
        kind, params, expires_at = CommandKind.KILL, {"flatten": True}, None
    elif (
        desired == TradingState.PAUSED
        and reported == TradingState.ACTIVE
        and (engine.desired_until is None or engine.desired_until > now)
    ):
        params = {"cancel_open": False}
        if engine.desired_until is not None:
            params["duration"] = max(1, int((engine.desired_until - now).total_seconds()))
        kind, expires_at = CommandKind.PAUSE, engine.desired_until
    else:
        return None
    with transaction.atomic():
        open_command = (
            Command.objects.filter(engine_id=engine.pk, kind=kind, status__in=Command.OPEN)
            .order_by("-created_at")
            .values_list("pk", flat=True)
            .first()
        )
        if open_command is not None:
            return open_command
        command = Command.objects.create(
            engine_id=engine.pk,
            kind=kind,
            params=params,
            expires_at=expires_at,
            reason=f"the engine reported {reported} while the control plane wants it {desired}",
            issued_by_label=LATCH_LABEL,
            # Sent again because the engine just said it is in another state: it is connected.
            engine_connected=True,
        )
        audit_record(
            action=f"command_{kind}",
            actor_label=LATCH_LABEL,
            target=command,
            reason=command.reason,
            data={"engine": engine.name, "reported": reported},
        )
    log.warning(
        "engine %s reported %s, wants %s: sent %s again", engine.name, reported, desired, kind
    )
    return command.pk
