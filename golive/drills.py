"""The kill drill: the kill path proved end to end, without touching real positions.

On an engine that sends no real orders (backtest, paper, shadow) a drill is a real ``kill``
(reason "kill drill: ...") that, once the engine answers it done and HALTED, the drill releases
itself with a resume (``kill_release``). On an engine that trades real money it is the
``kill_drill`` command, which the SDK answers after checking the halt path, trading nothing and
changing no state (``halt_path``). Either way the latencies, issued to acknowledged and issued to
done, are recorded on the ``KillDrill``; the last passed drill is the evidence for "kill switch
tested" (``last_passed``, read by golive.gates and golive.preflight). See docs/going-live.md.

The engines' answers arrive through controlplane.events.command_answered (connected in
golive.apps); a drill still open after DRILL_TIMEOUT fails (``drills_expire``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NoReturn

from channels.db import database_sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from controlplane.audit import audit_record
from controlplane.commands.errors import CommandInvalid, CommandRefused, command_refuse
from controlplane.commands.issuing import command_issue
from controlplane.models import REAL_MONEY_STAGES, Command, CommandKind, Engine, TradingState
from golive.models import KillDrill

log = logging.getLogger(__name__)

DRILL_TIMEOUT = timedelta(minutes=5)
PERMISSION = "controlplane.issue_kill"
_background: set[asyncio.Future[Any]] = set()


class DrillRefused(CommandInvalid):
    """The drill cannot run now (the engine is offline, already halted, in a drill)."""


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start).total_seconds() * 1000))


def kind_for(engine: Engine) -> str:
    """A real kill where no real order can be sent; the halt-path check where one can."""
    if engine.stage in REAL_MONEY_STAGES:
        return KillDrill.Kind.HALT_PATH
    return KillDrill.Kind.KILL_RELEASE


def _refuse(message: str, audit: dict[str, Any]) -> NoReturn:
    audit_record(**audit, outcome="refused", data={"refusal": message})
    raise DrillRefused({"engine": message})


def drill_start(
    *,
    engine: Engine,
    actor: AbstractBaseUser,
    reason: str,
    ip_address: str | None = None,
) -> KillDrill:
    """Start a drill of ``engine``'s kill path. Who may kill may drill (issue_kill); refused
    (audited) for an engine offline, held HALTED by a real kill, or already in a drill."""
    label = actor.get_username()
    reason = (reason or "").strip()
    audit = {
        "action": "kill_drill_start",
        "actor": actor,
        "actor_label": label,
        "ip_address": ip_address,
        "reason": reason,
        "target": engine,
    }
    if not actor.has_perm(PERMISSION):  # type: ignore[attr-defined]
        command_refuse(
            f"{label} may not drill the kill of {engine.name}: that needs the issue_kill "
            "permission",
            **audit,
        )
    if not reason:
        raise CommandInvalid({"reason": "say why: a drill without a reason is refused"})
    drills_expire()
    engine.refresh_from_db()
    kind = kind_for(engine)
    if not engine.is_active:
        _refuse(f"{engine.name} is deactivated", audit)
    if not engine.connected:
        _refuse(f"{engine.name} is not connected: a drill needs the engine on line", audit)
    if kind == KillDrill.Kind.KILL_RELEASE and engine.desired_state == TradingState.HALTED:
        _refuse(
            f"{engine.name} is already HALTED by a kill: a drill would release it, and that "
            "kill is not the drill's to release",
            audit,
        )
    running = KillDrill.objects.filter(engine=engine, status__in=KillDrill.OPEN).first()
    if running is not None:
        _refuse(
            f"a drill of {engine.name} started by {running.actor_label} is still running",
            audit,
        )
    try:
        with transaction.atomic():
            drill = KillDrill.objects.create(
                engine=engine,
                kind=kind,
                stage=engine.stage,
                reason=reason,
                actor=actor,
                actor_label=label,
            )
            if kind == KillDrill.Kind.KILL_RELEASE:
                batch = command_issue(
                    kind=CommandKind.KILL,
                    selector=f"engine:{engine.name}",
                    reason=f"kill drill: {reason}",
                    params={"flatten": True},
                    actor=actor,
                    ip_address=ip_address,
                    # Pressing the drill button on this engine's page is the confirmation.
                    confirmation=engine.name,
                )
            else:
                batch = command_issue(
                    kind=CommandKind.KILL_DRILL,
                    selector=f"engine:{engine.name}",
                    reason=f"kill drill: {reason}",
                    actor=actor,
                    ip_address=ip_address,
                    expires_in=DRILL_TIMEOUT,
                    drill=True,
                )
            command = batch.commands.get()
            drill.command_id, drill.issued_at = command.pk, command.created_at
            drill.save(update_fields=["command_id", "issued_at"])
            audit_record(
                **audit,
                data={"drill": drill.pk, "kind": kind, "command": str(command.pk)},
            )
    except IntegrityError:
        # Another drill of this engine started at the same moment.
        _refuse(f"a drill of {engine.name} is already running", audit)
    return drill


def _finish(drill: KillDrill, status: str, detail: str) -> None:
    drill.status = status
    drill.detail = detail[:4000]
    drill.save()
    audit_record(
        action="kill_drill_outcome",
        actor_label="control plane (kill drill)",
        target=drill.engine,
        outcome=status,
        reason=detail[:2000],
        data={
            "drill": drill.pk,
            "kind": drill.kind,
            "ack_ms": drill.ack_ms,
            "done_ms": drill.done_ms,
            "release_ms": drill.release_ms,
        },
    )


def _took(command: Command) -> tuple[datetime | None, datetime | None]:
    return command.acknowledged_at, command.completed_at


def drill_advance(drill_id: int) -> None:
    """Take the engine's answers to a drill's commands into the drill: its latencies, the
    release of its kill, its outcome. Idempotent: an answer already taken changes nothing."""
    with transaction.atomic():
        drill = (
            KillDrill.objects.select_for_update(of=("self",))
            .select_related("engine", "actor")
            .filter(pk=drill_id, status__in=KillDrill.OPEN)
            .first()
        )
        if drill is None:
            return
        if drill.status == KillDrill.Status.RUNNING:
            _command_done(drill)
        else:
            _release_done(drill)


def _command_done(drill: KillDrill) -> None:
    command = Command.objects.filter(pk=drill.command_id, engine_id=drill.engine_id).first()
    if command is None or command.status in Command.OPEN:
        return
    drill.acknowledged_at, drill.done_at = _took(command)
    drill.ack_ms = _ms(drill.issued_at, drill.acknowledged_at)
    drill.done_ms = _ms(drill.issued_at, drill.done_at)
    said = f"{command.status}" + (f": {command.detail}" if command.detail else "")
    if drill.kind == KillDrill.Kind.HALT_PATH:
        passed = command.status == Command.Status.SUCCEEDED
        status = KillDrill.Status.PASSED if passed else KillDrill.Status.FAILED
        _finish(drill, status, f"kill_drill {said}")
        return
    killed = command.status == Command.Status.SUCCEEDED and (
        command.state_after == TradingState.HALTED
    )
    note = f"kill {said}; engine {command.state_after or 'state not reported'}"
    if not killed:
        note += " (a kill must succeed with the engine HALTED)"
    engine = Engine.objects.get(pk=drill.engine_id)
    if engine.desired_state != TradingState.HALTED:
        _finish(drill, KillDrill.Status.FAILED, f"{note}; nothing to release")
        return
    actor = drill.actor
    if actor is None:
        _finish(drill, KillDrill.Status.FAILED, f"{note}; release not issued: its actor is gone")
        return
    try:
        batch = command_issue(
            kind=CommandKind.RESUME,
            selector=f"engine:{engine.name}",
            reason=f"kill drill: release of its kill ({drill.reason})",
            actor=actor,
            releases_drill_kill=command,
        )
    except (CommandRefused, CommandInvalid) as exc:
        words = exc.messages if isinstance(exc, CommandInvalid) else [str(exc)]
        _finish(
            drill,
            KillDrill.Status.FAILED,
            f"{note}; release refused: {'; '.join(words)}. The engine stays HALTED: a resume "
            "request approved by a second person lifts it",
        )
        return
    drill.release_id = batch.commands.get().pk
    drill.status = KillDrill.Status.RELEASING
    drill.detail = note if killed else f"FAILED: {note}"
    drill.save()


def _release_done(drill: KillDrill) -> None:
    release = Command.objects.filter(pk=drill.release_id, engine_id=drill.engine_id).first()
    if release is None or release.status in Command.OPEN:
        return
    drill.released_at = release.completed_at
    drill.release_ms = _ms(release.created_at, release.completed_at)
    released = release.status == Command.Status.SUCCEEDED and (
        release.state_after == TradingState.ACTIVE
    )
    said = f"release {release.status}" + (f": {release.detail}" if release.detail else "")
    said += f"; engine {release.state_after or 'state not reported'}"
    killed = not drill.detail.startswith("FAILED: ")
    detail = f"{drill.detail.removeprefix('FAILED: ')}; {said}"
    passed = killed and released
    _finish(drill, KillDrill.Status.PASSED if passed else KillDrill.Status.FAILED, detail)


def drills_answered(engine_ids: Iterable[int]) -> None:
    """Engines answered commands: advance their open drills."""
    ids = list(
        KillDrill.objects.filter(
            engine_id__in=list(engine_ids), status__in=KillDrill.OPEN
        ).values_list("pk", flat=True)
    )
    for drill_id in ids:
        try:
            drill_advance(drill_id)
        except Exception:
            log.exception("kill drill %s: the answer could not be taken", drill_id)


def on_command_answered(sender: Any, engine_ids: list[int], **kwargs: Any) -> None:
    """controlplane.events.command_answered: sent on the sockets' event loop, so the database
    work runs in a thread and this returns at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        drills_answered(engine_ids)
        return
    work = database_sync_to_async(drills_answered, thread_sensitive=False)(engine_ids)
    task = loop.create_task(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def drills_expire(now: datetime | None = None) -> int:
    """Drills open longer than DRILL_TIMEOUT fail: the engine never answered in time."""
    now = now or timezone.now()
    stale = list(
        KillDrill.objects.filter(status__in=KillDrill.OPEN, created_at__lt=now - DRILL_TIMEOUT)
    )
    for drill in stale:
        with transaction.atomic():
            locked = KillDrill.objects.select_for_update().filter(
                pk=drill.pk, status__in=KillDrill.OPEN
            )
            if not locked.exists():
                continue
            minutes = DRILL_TIMEOUT.total_seconds() / 60
            what = "its kill" if drill.status == KillDrill.Status.RUNNING else "its release"
            if drill.kind == KillDrill.Kind.HALT_PATH:
                what = "the kill_drill"
            held = (
                "; if the engine obeys the kill later it stays HALTED until a resume request "
                "is approved"
                if drill.kind == KillDrill.Kind.KILL_RELEASE
                else ""
            )
            _finish(drill, KillDrill.Status.FAILED, f"no answer to {what} in {minutes:g} min{held}")
    return len(stale)


def last_passed(engine_ids: list[int]) -> dict[int, KillDrill]:
    """Each engine's last passed drill, by the time its kill (or kill_drill) was done: the one
    evidence of "kill switch tested" (golive.gates, golive.preflight). A plain kill does not
    count: see docs/going-live.md, "The kill drill"."""
    if not engine_ids:
        return {}
    rows = (
        KillDrill.objects.filter(
            engine_id__in=engine_ids, status=KillDrill.Status.PASSED, done_at__isnull=False
        )
        .order_by("engine_id", "-done_at")
        .distinct("engine_id")
    )
    return {drill.engine_id: drill for drill in rows}


def drills_of(engine: Engine, limit: int = 20) -> list[KillDrill]:
    """The engine's drills, newest first (stale ones failed first)."""
    drills_expire()
    return list(KillDrill.objects.filter(engine=engine)[:limit])
