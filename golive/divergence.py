"""The divergence log: one row per engine per trading day, its record against its baseline
(golive.comparison over that UTC day), kept for ever, with a note of what a person found
(docs/going-live.md, "The divergence log").

A daily task records the day before for every active engine from paper on; a day is recorded
again (its figures replaced, its note kept) when asked.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from alerts import hooks
from alerts.rule_metrics import DIVERGENCE_DAY_METRIC
from controlplane.audit import audit_record
from controlplane.models import Engine, Stage
from golive import comparison
from golive.models import DivergenceDay

NOTE_MAX = 4000
# The source of the divergence alert of an engine (alerts.Alert.source).
SOURCE = "divergence"
# The stages whose days are logged: those that trade on live data.
LOGGED_STAGES = (Stage.PAPER, Stage.SHADOW, Stage.SMALL_CAPITAL, Stage.FULL)


def record_day(engine: Engine, day: date) -> DivergenceDay:
    """Measure ``engine``'s UTC ``day`` against its baseline and keep it (a note stays)."""
    start = datetime.combine(day, time(0), tzinfo=UTC)
    result = comparison.compare(engine, start, start + timedelta(days=1))
    ret = result.figure("return_pct")
    figures = {
        f.key: {"live": f.live, "baseline": f.baseline, "difference": f.difference, "text": f.text}
        for f in result.figures
    }
    row, _ = DivergenceDay.objects.update_or_create(
        engine=engine,
        day=day,
        defaults={
            "stage": engine.stage,
            "live_return_pct": ret.live,
            "baseline_return_pct": ret.baseline,
            "divergence_pct": ret.difference,
            "figures": figures,
        },
    )
    _tell(engine, row)
    return row


def _tell(engine: Engine, row: DivergenceDay) -> None:
    """A day beyond the threshold raises the divergence alert (one open per engine); a day
    within it ends it."""
    threshold = settings.DIVERGENCE_LOG_ALERT_PCT
    if row.divergence_pct is None:
        return
    if row.divergence_pct > threshold:
        summary = (
            f"{engine.name} on {row.day}: return {row.live_return_pct:+.2f} % against the "
            f"baseline's {row.baseline_return_pct:+.2f} %, {row.divergence_pct:.1f} % apart "
            f"(beyond {threshold:g} %): say what was found in its divergence log"
        )
        hooks.event_alert(
            metric=DIVERGENCE_DAY_METRIC,
            source=SOURCE,
            engine=engine,
            summary=summary,
            value=row.divergence_pct,
        )
    else:
        why = f"{row.day} within {threshold:g} % of the baseline"
        hooks.event_alert_over(source=SOURCE, engine=engine, why=why)


def record_yesterday(now: datetime | None = None) -> int:
    """Record the day before ``now`` (UTC) for every active engine at a logged stage, if it was
    a trading day (Monday to Friday, as the baselines count them)."""
    day = (now or timezone.now()).astimezone(UTC).date() - timedelta(days=1)
    if day.weekday() >= 5:
        return 0
    engines = Engine.objects.filter(is_active=True, stage__in=LOGGED_STAGES).order_by("pk")
    return sum(1 for engine in engines if record_day(engine, day))


def note_set(
    *,
    row: DivergenceDay,
    actor: AbstractBaseUser,
    note: str,
    root_cause: str,
    ip_address: str | None = None,
) -> DivergenceDay:
    """Attach what was found to a day: the note and its root cause (infrastructure, market or
    strategy), audited with what it replaced. Operators and risk managers may."""
    if not actor.has_perm("golive.request_promotion"):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} may not annotate the divergence log")
    note = (note or "").strip()
    errors = {}
    if not note:
        errors["note"] = "say what was found"
    elif len(note) > NOTE_MAX:
        errors["note"] = f"at most {NOTE_MAX:,} characters"
    elif "\x00" in note:
        errors["note"] = "a note cannot hold a NUL character"
    if root_cause not in DivergenceDay.RootCause.values:
        allowed = ", ".join(v for v in DivergenceDay.RootCause.values if v)
        errors["root_cause"] = f"{root_cause[:40]!r} is no root cause: one of {allowed}, or none"
    if errors:
        raise ValidationError(errors)
    label = actor.get_username()
    with transaction.atomic():
        locked = DivergenceDay.objects.select_for_update().get(pk=row.pk)
        before = {"note": locked.note, "root_cause": locked.root_cause}
        locked.note, locked.root_cause = note, root_cause
        locked.noted_by_label, locked.noted_at = label, timezone.now()
        locked.save(update_fields=["note", "root_cause", "noted_by_label", "noted_at"])
        audit_record(
            action="divergence_note",
            actor=actor,
            actor_label=label,
            target=locked,
            reason=note,
            ip_address=ip_address,
            data={"day": locked.day.isoformat(), "root_cause": root_cause, "before": before},
        )
    return locked


def threshold_pct() -> float:
    return float(settings.DIVERGENCE_LOG_ALERT_PCT)


def beyond(row: DivergenceDay) -> bool:
    """The day diverged more than the alert threshold."""
    return row.divergence_pct is not None and row.divergence_pct > threshold_pct()


def days_of(engine: Engine, limit: int = 60) -> list[DivergenceDay]:
    return list(DivergenceDay.objects.filter(engine=engine).order_by("-day")[:limit])


def days_between(
    engine: Engine, start: date | None, end: date | None, limit: int
) -> list[DivergenceDay]:
    """The engine's days from ``start`` to ``end`` (both included, either open), newest first."""
    rows = DivergenceDay.objects.filter(engine=engine)
    if start is not None:
        rows = rows.filter(day__gte=start)
    if end is not None:
        rows = rows.filter(day__lte=end)
    return list(rows.order_by("-day")[:limit])


def days_in(engine_ids: list[int], start: date, end: date) -> dict[int, list[DivergenceDay]]:
    """Each engine's days in [start, end), oldest first: one query (the weekly report)."""
    found: dict[int, list[DivergenceDay]] = {}
    rows = DivergenceDay.objects.filter(engine_id__in=engine_ids, day__gte=start, day__lt=end)
    for row in rows.order_by("engine_id", "day"):
        found.setdefault(row.engine_id, []).append(row)
    return found
