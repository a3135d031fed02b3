"""The trading log (docs/operations.md, "Trading log"): a daily entry for the desk and, optionally,
for each engine. People write the market conditions and notes (Markdown); the day's figures come
from the data (journal.figures) and are filled in at each save. Every save is a new version in
the entry's history and an audit entry."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet

from controlplane.audit import audit_record
from controlplane.models import Engine
from journal import figures
from journal.models import (
    KEY_EVENTS_MAX,
    NOTES_MAX,
    LogEntry,
    LogEntryRevision,
    Trend,
    Volatility,
)
from journal.text import clean_text

WRITE_PERMISSION = "journal.change_logentry"
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2999, 12, 31)
SEARCH_LIMIT = 200
EXPORT_MAX_DAYS = 3660


def check_day(day: date, field: str = "day") -> date:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValidationError({field: "must fall between 1900 and 2999"})
    return day


# --- Reads ---------------------------------------------------------------------------------------


def entry_of(day: date, engine: Engine | None) -> LogEntry | None:
    return LogEntry.objects.filter(day=day, engine=engine).select_related("engine").first()


def entries_of_day(day: date) -> list[LogEntry]:
    """The desk's entry first, then the engines' by name."""
    return list(
        LogEntry.objects.filter(day=day)
        .select_related("engine")
        .order_by(F("engine__name").asc(nulls_first=True))
    )


def search(
    *,
    text: str = "",
    engine: Engine | None = None,
    desk_only: bool = False,
    start: date | None = None,
    end: date | None = None,
    trend: str = "",
    volatility: str = "",
    limit: int = SEARCH_LIMIT,
) -> QuerySet[LogEntry]:
    """Entries whose notes or key events contain ``text`` (any case), newest first."""
    found = LogEntry.objects.select_related("engine")
    if text:
        found = found.filter(Q(notes__icontains=text) | Q(key_events__icontains=text))
    if engine is not None:
        found = found.filter(engine=engine)
    elif desk_only:
        found = found.filter(engine__isnull=True)
    if start is not None:
        found = found.filter(day__gte=start)
    if end is not None:
        found = found.filter(day__lte=end)
    if trend:
        found = found.filter(trend=trend)
    if volatility:
        found = found.filter(volatility=volatility)
    return found.order_by("-day", "engine__name")[:limit]


def history(entry: LogEntry) -> QuerySet[LogEntryRevision]:
    return entry.revisions.order_by("-version")


CSV_HEADER = [
    "day",
    "engine",
    "trend",
    "volatility",
    "key_events",
    *figures.FIGURE_LABELS,
    "notes",
    "version",
    "updated_by",
    "updated_at",
]


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell that starts with these as a formula: a note is text, never code.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_csv(entries: Iterable[LogEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_HEADER)
    for entry in entries:
        row = [
            entry.day.isoformat(),
            entry.engine.name if entry.engine else "",
            entry.trend,
            entry.volatility,
            entry.key_events,
            *(entry.figures.get(key) for key in figures.FIGURE_LABELS),
            entry.notes,
            entry.version,
            entry.updated_by_label,
            entry.updated_at.isoformat(),
        ]
        writer.writerow([_cell(value) for value in row])
    return out.getvalue()


@dataclass(frozen=True)
class WeekSummary:
    """The trading log's part of the weekly report."""

    entries: list[LogEntry]
    days_logged: int
    days: int
    trends: dict[str, int]
    volatilities: dict[str, int]


def week_summary(first: date, last: date) -> WeekSummary:
    """The desk's entries of [first, last] and what they say of the market, for the report."""
    entries = list(
        LogEntry.objects.filter(day__gte=first, day__lte=last, engine__isnull=True).order_by("day")
    )
    trends: dict[str, int] = {}
    volatilities: dict[str, int] = {}
    for entry in entries:
        if entry.trend:
            label = Trend(entry.trend).label
            trends[label] = trends.get(label, 0) + 1
        if entry.volatility:
            label = Volatility(entry.volatility).label
            volatilities[label] = volatilities.get(label, 0) + 1
    return WeekSummary(
        entries=entries,
        days_logged=len(entries),
        days=(last - first).days + 1,
        trends=trends,
        volatilities=volatilities,
    )


# --- Writes --------------------------------------------------------------------------------------


def log_entry_save(
    *,
    day: date,
    engine: Engine | None,
    actor: AbstractBaseUser | None,
    trend: Any = "",
    volatility: Any = "",
    key_events: Any = "",
    notes: Any = "",
    version: int | None = None,
    ip_address: str | None = None,
) -> LogEntry:
    """Write the entry of ``day`` for the desk (``engine`` None) or an engine, with the day's
    figures read now. ``version``: the version the editor started from; if someone saved since,
    ValidationError says so (nothing is overwritten unseen). ValidationError names each bad
    field; PermissionDenied without the right."""
    if actor is not None and not actor.has_perm(WRITE_PERMISSION):  # type: ignore[attr-defined]
        raise PermissionDenied(f"{actor.get_username()} lacks the {WRITE_PERMISSION} permission")
    check_day(day)
    problems: dict[str, str] = {}
    values: dict[str, str] = {}
    for field, value, limit in (
        ("key_events", key_events, KEY_EVENTS_MAX),
        ("notes", notes, NOTES_MAX),
    ):
        try:
            values[field] = clean_text(field, value, limit)
        except ValidationError as exc:
            problems.update({k: " ".join(v) for k, v in exc.message_dict.items()})
    for field, value, choices in (("trend", trend, Trend), ("volatility", volatility, Volatility)):
        if value in ("", None):
            values[field] = ""
        elif isinstance(value, str) and value in choices.values:
            values[field] = value
        else:
            problems[field] = f"must be one of {', '.join(choices.values)} or empty"
    if problems:
        raise ValidationError(problems)
    label = actor.get_username() if actor is not None else "system"
    day_figures = figures.day_figures(day, engine.pk if engine else None)
    try:
        with transaction.atomic():
            entry = LogEntry.objects.select_for_update().filter(
                day=day, engine=engine
            ).first() or LogEntry(day=day, engine=engine, version=0)
            if version is not None and entry.version != version:
                raise ValidationError(
                    {
                        "version": f"the entry is at version {entry.version}, edited by "
                        f"{entry.updated_by_label or 'nobody'} since you opened version "
                        f"{version}: reload it and edit again"
                    }
                )
            changed = [f for f, v in values.items() if getattr(entry, f) != v]
            if entry.pk and not changed:
                if entry.figures != day_figures:
                    entry.figures = day_figures
                    entry.save(update_fields=["figures"])
                return entry
            for field, value in values.items():
                setattr(entry, field, value)
            entry.figures = day_figures
            entry.version += 1
            entry.updated_by = actor  # type: ignore[assignment]
            entry.updated_by_label = label
            entry.save()
            LogEntryRevision.objects.create(
                entry=entry, version=entry.version, edited_by_label=label, **values
            )
            audit_record(
                action="journal.log_save",
                actor=actor,
                target=entry,
                data={"version": entry.version, "changed": changed, "figures": day_figures},
                ip_address=ip_address,
            )
    except IntegrityError as exc:
        # Two first saves of the same day at once: the second is told, not lost silently.
        raise ValidationError({"day": "someone created this entry meanwhile: reload it"}) from exc
    return entry


def neighbours(day: date) -> tuple[date, date]:
    return day - timedelta(days=1), day + timedelta(days=1)
