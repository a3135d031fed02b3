"""An engine's stage: the control plane's decision on how far it has come towards real money
(docs/going-live.md), written with its history and its audit record.

Whether a move is allowed (the gates, who may override them) is the going-live policy's
question, decided above the core; this module only records a decision and keeps the engine's
registered mode fitting its stage.
"""

from __future__ import annotations

from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from controlplane import events
from controlplane.audit import audit_record
from controlplane.capital import engine_limits_push_robust
from controlplane.commands.delivery import close_live_sockets
from controlplane.models import MODES_OF_STAGE, Engine, Mode, Stage, StageChange


def stage_set(
    *,
    engine: Engine,
    to_stage: str,
    reason: str,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
    override: bool = False,
    capital_pct: int | None = None,
) -> StageChange:
    """Move ``engine`` to ``to_stage``: the engine row (locked), a StageChange and an audit
    record in one transaction; ``engines_changed`` after the commit, and the engine, if it is
    connected, sent a set_limits with its new stage and capital ceiling.

    The share of its target capital the engine may use (``capital_pct``) follows the stage:
    entering small capital, the ramp's first step (``CAPITAL_RAMP_STEPS``); full production,
    100; any other stage, none. At small capital already, it is kept, unless ``capital_pct``
    gives the next (a step of the capital ramp: a change from small capital to small capital,
    audited as ``engine_capital_step``).

    An engine whose registered mode does not fit the new stage is given the stage's own mode
    (``MODES_OF_STAGE``): promoted to small capital, it must say ``hello`` in live mode; put
    back to paper, a live hello is refused (gateway.session.hello), and a socket on which it said
    hello in live mode is closed at once with 4403 (delivery.close_live_sockets).
    """
    if to_stage not in Stage.values:
        raise ValidationError({"stage": f"{to_stage!r} is not a stage: one of {Stage.values}"})
    if not reason.strip():
        raise ValidationError({"reason": "a stage change needs a reason"})
    label = actor_label or (actor.get_username() if actor is not None else "control plane")
    with transaction.atomic():
        locked = Engine.objects.select_for_update().only(
            "pk", "name", "mode", "stage", "capital_pct"
        )
        row = locked.get(pk=engine.pk)
        from_stage = row.stage
        pct = _capital_pct(from_stage, to_stage, row.capital_pct, capital_pct)
        mode = row.mode if row.mode in MODES_OF_STAGE[to_stage] else MODES_OF_STAGE[to_stage][0]
        Engine.objects.filter(pk=row.pk).update(stage=to_stage, mode=mode, capital_pct=pct)
        change = StageChange.objects.create(
            engine_id=row.pk,
            from_stage=from_stage,
            to_stage=to_stage,
            actor=actor,
            actor_label=label,
            reason=reason,
            override=override,
            capital_pct=pct,
        )
        data = {"from": from_stage, "to": to_stage, "override": override}
        if mode != row.mode:
            data |= {"mode_from": row.mode, "mode_to": mode}
        if pct != row.capital_pct:
            data |= {"capital_pct_from": row.capital_pct, "capital_pct_to": pct}
        step = from_stage == to_stage
        audit_record(
            action="engine_capital_step" if step else "engine_stage",
            actor=actor,
            actor_label=label,
            target=row,
            reason=reason,
            data=data,
        )
        transaction.on_commit(partial(events.announce, events.engines_changed, engine_ids=[row.pk]))
        told = f"capital ramp: {pct} %" if step else f"stage {to_stage}"
        transaction.on_commit(partial(engine_limits_push_robust, row, reason=told))
        if row.mode == Mode.LIVE and mode != Mode.LIVE:
            # Demoted out of real orders: a socket still live is closed now, not at its next hello.
            transaction.on_commit(partial(close_live_sockets, row.pk))
    engine.stage, engine.mode, engine.capital_pct = to_stage, mode, pct
    return change


def _capital_pct(
    from_stage: str, to_stage: str, current: int | None, given: int | None
) -> int | None:
    steps: tuple[int, ...] = settings.CAPITAL_RAMP_STEPS
    if given is not None:
        if from_stage != Stage.SMALL_CAPITAL or to_stage != Stage.SMALL_CAPITAL:
            raise ValidationError({"capital_pct": "the capital ramp steps within small capital"})
        if given not in steps:
            raise ValidationError({"capital_pct": f"{given} % is not a ramp step: one of {steps}"})
        if current is not None and given <= current:
            # Two ramp runs at once: the engine row is locked, the second finds the step taken.
            raise ValidationError({"capital_pct": f"the engine is at {current} % already"})
        return given
    if to_stage == Stage.FULL:
        return 100
    if to_stage == Stage.SMALL_CAPITAL:
        return current if from_stage == Stage.SMALL_CAPITAL and current else steps[0]
    return None


def stage_record_first(
    *,
    engine: Engine,
    actor: AbstractBaseUser | None = None,
    actor_label: str | None = None,
    reason: str = "",
) -> StageChange:
    """The first row of a new engine's history: from nothing to the stage it was created at.
    Written in the creation's transaction (its audit record says the stage)."""
    label = actor_label or (actor.get_username() if actor is not None else "system")
    return StageChange.objects.create(
        engine=engine,
        from_stage="",
        to_stage=engine.stage,
        actor=actor,
        actor_label=label,
        reason=reason or "created",
    )
