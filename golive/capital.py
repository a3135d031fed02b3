"""An engine's capital: the target a risk manager sets, and the ramp that lets a small-capital
engine use more of it step by step (docs/going-live.md, "The capital ramp").

The ramp: entering small capital, an engine may hold the first share of its target capital
(``CAPITAL_RAMP_STEPS``, 25 % by default); every ``CAPITAL_RAMP_STEP_DAYS`` since its last
capital change, it steps up to the next share (50 %, then 100 %) if its gates still pass: no
criterion of its next step's gate fails, except those that only time can pass (the policy's
``accrues``: days in the stage), and every pre-flight check passes. A criterion not yet known
does not hold a step back; one that fails does. Each step is a StageChange from small capital to
small capital with its share, its audit record, and a set_limits to the engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from controlplane.audit import audit_record
from controlplane.capital import engine_limits_push_robust
from controlplane.models import Engine, Stage, StageChange
from controlplane.stages import stage_set
from golive import gates, policy, preflight

log = logging.getLogger(__name__)

RAMP_ACTOR = "capital ramp"
# Far above any one strategy's capital, well inside the column (24 digits, 8 decimals): a value
# past it is a typo (a pasted account number, a stray row of zeros), not a target.
MAX_TARGET_CAPITAL = Decimal("1e12")
APPROVE = "golive.approve_promotion"


class CapitalForbidden(PermissionDenied):
    """The actor lacks the risk right (a 403 for the pages)."""


def _parse_capital(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValidationError({"target_capital": "the target capital is a number, e.g. 250000"})
    text = str(value).strip().replace(",", "").replace("_", "")
    if not text:
        raise ValidationError({"target_capital": "give the target capital"})
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValidationError(
            {"target_capital": f"{str(value)[:40]!r} is not a number: write e.g. 250000"}
        ) from None
    if not amount.is_finite():
        raise ValidationError({"target_capital": "the target capital must be a finite number"})
    if amount <= 0:
        raise ValidationError({"target_capital": "the target capital must be above zero"})
    if amount > MAX_TARGET_CAPITAL:
        raise ValidationError(
            {"target_capital": f"the target capital is at most {MAX_TARGET_CAPITAL:,.0f}"}
        )
    if amount != amount.quantize(Decimal("0.01")):
        raise ValidationError({"target_capital": "the target capital has at most 2 decimals"})
    return amount.quantize(Decimal("0.01"))


def target_capital_set(
    *,
    engine: Engine,
    value: Any,
    reason: str,
    actor: AbstractBaseUser,
    ip_address: str | None = None,
) -> Decimal:
    """Set ``engine``'s target capital (a risk manager, with a reason): the engine row and an
    audit record; after the commit the engine, if connected, gets its new ceiling. Anyone
    without the risk right is refused, and the refusal audited."""
    label = actor.get_username()
    reason = (reason or "").strip()
    if not actor.has_perm(APPROVE):  # type: ignore[attr-defined]
        message = f"{label} may not set a target capital: only risk managers may"
        audit_record(
            action="target_capital_refused",
            actor=actor,
            actor_label=label,
            target=engine,
            reason=reason,
            outcome="refused",
            data={"refusal": message, "engine": engine.name},
            ip_address=ip_address,
        )
        raise CapitalForbidden(message)
    amount = _parse_capital(value)
    if not reason:
        raise ValidationError({"reason": "say why the target capital is set to this"})
    with transaction.atomic():
        row = (
            Engine.objects.select_for_update()
            .only("pk", "name", "stage", "target_capital", "capital_pct")
            .get(pk=engine.pk)
        )
        before = row.target_capital
        Engine.objects.filter(pk=row.pk).update(target_capital=amount)
        row.target_capital = amount
        audit_record(
            action="engine_target_capital",
            actor=actor,
            actor_label=label,
            target=row,
            reason=reason,
            ip_address=ip_address,
            data={
                "from": None if before is None else str(before),
                "to": str(amount),
                "capital_pct": row.capital_pct,
                "ceiling": None if row.capital_ceiling is None else str(row.capital_ceiling),
            },
        )
        told = f"target capital {amount}"
        transaction.on_commit(partial(engine_limits_push_robust, row, reason=told))
    engine.target_capital = amount
    return amount


# --- The ramp ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RampStatus:
    """Where a small-capital engine stands on its ramp."""

    engine: Engine
    current_pct: int | None
    next_pct: int | None  # None: at the last step
    due_at: datetime | None  # when the next step may be taken
    blocking: list[str] = field(default_factory=list)  # what fails now, in words

    @property
    def held(self) -> bool:
        return bool(self.blocking)

    def due(self, now: datetime) -> bool:
        return self.next_pct is not None and self.due_at is not None and now >= self.due_at


def next_step(current: int | None) -> int | None:
    steps: tuple[int, ...] = settings.CAPITAL_RAMP_STEPS
    return next((step for step in steps if step > (current or 0)), None)


def ramp_status(engine: Engine, now: datetime) -> RampStatus | None:
    """The engine's ramp now; None when it is not at small capital."""
    if engine.stage != Stage.SMALL_CAPITAL:
        return None
    upcoming = next_step(engine.capital_pct)
    if upcoming is None:
        return RampStatus(engine, engine.capital_pct, None, None)
    last = StageChange.objects.filter(engine=engine).order_by("-at", "-pk").first()
    since = last.at if last is not None else (engine.created_at or now)
    due_at = since + timedelta(days=settings.CAPITAL_RAMP_STEP_DAYS)
    blocking = [
        f"criterion {c.label} fails (threshold {c.threshold_text}, measured {c.value_text})"
        for c in gates.report(engine, now).failed
        if not _accrues(engine.stage, c.key)
    ]
    blocking += [
        f"pre-flight check {c.label} does not pass ({c.detail})"
        for c in preflight.failures(engine, now)
    ]
    return RampStatus(engine, engine.capital_pct, upcoming, due_at, blocking)


def _accrues(stage: str, key: str) -> bool:
    spec = policy.CATALOG.get((stage, key))
    return spec is not None and spec.accrues


def _ramp_engines() -> Any:
    return Engine.objects.filter(is_active=True, stage=Stage.SMALL_CAPITAL).order_by("pk")


def ramp_engine_ids() -> list[int]:
    """The engines the capital ramp looks at: the active ones in small capital."""
    return list(_ramp_engines().values_list("pk", flat=True))


def ramp_run(now: datetime, *, engine_ids: list[int] | None = None) -> list[StageChange]:
    """Step up every small-capital engine (or those of ``engine_ids``) whose next step is due and
    whose gates still pass; log each one held back with what fails. Returns the steps taken."""
    taken = []
    engines = _ramp_engines()
    if engine_ids is not None:
        engines = engines.filter(pk__in=engine_ids)
    for engine in engines:
        try:
            status = ramp_status(engine, now)
            if status is None or not status.due(now):
                continue
            if status.held:
                log.warning(
                    "capital ramp: %s held at %s %%, not stepped to %s %%: %s",
                    engine.name,
                    status.current_pct,
                    status.next_pct,
                    "; ".join(status.blocking),
                )
                continue
            reason = (
                f"capital ramp: {status.current_pct or 0} % → {status.next_pct} % after "
                f"{settings.CAPITAL_RAMP_STEP_DAYS} days; no criterion of the gate to full "
                "production fails and every pre-flight check passes"
            )
            taken.append(
                stage_set(
                    engine=engine,
                    to_stage=Stage.SMALL_CAPITAL,
                    reason=reason,
                    actor_label=RAMP_ACTOR,
                    capital_pct=status.next_pct,
                )
            )
            log.info("capital ramp: %s stepped to %s %%", engine.name, status.next_pct)
        except ValidationError as exc:  # stepped meanwhile by another run
            log.info("capital ramp: %s not stepped: %s", engine.name, exc)
        except Exception:  # one engine's trouble must not hold the others' steps
            log.exception("capital ramp: %s failed", engine.name)
    return taken
