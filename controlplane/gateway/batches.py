"""An engine's events frames: stored, or refused event by event, then acknowledged.

A frame is stored with others in one transaction (controlplane.ingest); a frame that fails is
stored in halves until the event at fault is refused alone (``event_refused``) and kept in the
event log with its reason. Once stored, ``batch_stored`` is announced (risk evaluates, alerts
schedule rules), then the ack covers what was stored or refused."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec
import psycopg
from django.db import DatabaseError, DataError, IntegrityError, connection, transaction
from django.db.models.functions import Greatest

from controlplane import partitions
from controlplane.events import announce, batch_stored
from controlplane.gateway.decoding import Decoded
from controlplane.ingest.store import IngestResult, UnknownEngine, ingest_batches
from controlplane.models import Engine
from controlplane.sqlscript import json_text
from engine_sdk import protocol as p

log = logging.getLogger(__name__)


def events(engine_id: int, decoded: Decoded) -> tuple[list[p.ServerFrame], IngestResult | None]:
    """Store the valid events; answer the errors, then the ack (only after the commit)."""
    (outcome,) = events_many([(engine_id, decoded)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


Outcome = tuple[list[p.ServerFrame], IngestResult | None] | BaseException


def events_many(batches: list[tuple[int, Decoded]]) -> list[Outcome]:
    """``events`` for several engines' frames, stored in one transaction.

    Should that fail, each frame is stored alone, one after the other, so that one engine's
    frame that the database refuses (or an engine deleted meanwhile) costs the others nothing;
    and a frame that fails alone has the events at fault found and refused (_isolate). Each
    outcome is the frames to answer and the result, or the exception that storing that engine's
    frame raised (UnknownEngine: the engine is gone).
    """
    try:
        results = ingest_batches([(engine_id, d.events or []) for engine_id, d in batches])
    except Exception as exc:
        if len(batches) > 1:
            return [_alone(engine_id, decoded) for engine_id, decoded in batches]
        engine_id, decoded = batches[0]
        return [_isolate(engine_id, decoded, exc)]
    return [
        _answer(engine_id, decoded, result)
        for (engine_id, decoded), result in zip(batches, results, strict=True)
    ]


def _alone(engine_id: int, decoded: Decoded) -> Outcome:
    try:
        return events(engine_id, decoded)
    except Exception as exc:
        return exc


def _input_fault(exc: BaseException) -> bool:
    """Whether a failure to store events lies in the events, not in the database's state.

    PostgreSQL's data exceptions (class 22: a value out of range, a character it cannot hold)
    and integrity violations (class 23) do, as do program limits exceeded (class 54), and any
    error of the Python that works the batch
    out (an arithmetic overflow, say): the same events fail the same way every time. The rest
    (the database down, read-only, out of disk, a deadlock, a statement cancelled) do not: the
    events are then kept by the engine and sent again, never refused.
    """
    if isinstance(exc, DataError | IntegrityError | psycopg.DataError | psycopg.IntegrityError):
        return True
    # Class 54 too (a statement too complex, a value too large for an index): input it was given.
    if isinstance(exc.__cause__ or exc, psycopg.errors.ProgramLimitExceeded):
        return True
    return not isinstance(exc, DatabaseError | psycopg.Error | UnknownEngine)


class _NotStored(Exception):
    """The database failed while events were being isolated: stop, nothing more is stored."""


def _isolate(engine_id: int, decoded: Decoded, exc: Exception) -> Outcome:
    """One engine's frame failed to store: store what can be, refuse alone what cannot.

    The frame's fresh events are split in two halves, stored one after the other (in seq order,
    each in its own transaction), and a half that fails is split again, down to the events that
    fail alone: k bad events among n cost about 2k log2(n) transactions, and the events around
    them are stored exactly as if they had come in frames of their own. Each event that fails
    alone is refused (_refuse). A failure of the database itself stops the search: what was
    stored stays, nothing is acked, and the engine sends the rest again.
    """
    if not _input_fault(exc):
        if isinstance(exc, DatabaseError | psycopg.Error):
            return _not_stored(engine_id, decoded, [], exc)
        return exc
    log.warning(
        "engine %s: a batch failed to store (%s); isolating the events at fault",
        engine_id,
        _reason(exc),
    )
    # In seq order, each seq once (the first of a repeated seq is the one ingest would take),
    # with its position in the frame it came in.
    positions = decoded.positions or range(len(decoded.events or ()))
    by_seq: dict[int, tuple[p.Event, int]] = {}
    for event, position in zip(decoded.events or (), positions, strict=True):
        by_seq.setdefault(event.seq, (event, position))
    ordered = [by_seq[seq] for seq in sorted(by_seq)]
    if not ordered:
        return _not_stored(engine_id, decoded, [], exc)
    results: list[IngestResult] = []
    refusals: list[p.Error] = []

    def store(part: list[tuple[p.Event, int]], failure: Exception | None) -> None:
        if failure is None:
            try:
                results.append(ingest_batches([(engine_id, [e for e, _ in part])])[0])
                return
            except Exception as exc:
                if not _input_fault(exc):
                    raise _NotStored() from exc
                failure = exc
        if len(part) == 1:
            refusal = _refuse(engine_id, *part[0], failure)
            if refusal is not None:
                refusals.append(refusal)
            return
        half = len(part) // 2
        store(part[:half], None)
        store(part[half:], None)

    try:
        # The whole frame is known to fail: its halves are tried at once.
        store(ordered, exc)
    except _NotStored as stop:
        return _not_stored(engine_id, decoded, refusals, stop.__cause__)
    result = _merge(results, refusals)
    if not results and not refusals:
        # Every event failing alone was stored or refused meanwhile by another connection of
        # the engine: the watermark covers them.
        result.ack_seq = Engine.objects.values_list("last_seq", flat=True).get(pk=engine_id)
    return _answer(engine_id, decoded, result, refusals)


def _not_stored(
    engine_id: int, decoded: Decoded, refusals: list[p.Error], exc: BaseException | None
) -> Outcome:
    # Nothing more of the batch is stored and nothing is acked: the SDK keeps it and resends
    # (a stored event it resends is a replay, a refused one is below the watermark).
    log.warning("engine %s: batch of %d not stored: %s", engine_id, len(decoded.events or []), exc)
    message = "the control plane could not store this batch; it was not acknowledged: resend it"
    return [*decoded.errors, *refusals, p.Error(code="internal_error", message=message)], None


def _merge(results: list[IngestResult], refusals: list[p.Error]) -> IngestResult:
    """The parts of an isolated frame as one result; refused seqs are covered by the ack."""
    merged = IngestResult(
        ack_seq=max([r.ack_seq for r in results] + [e.seq or 0 for e in refusals], default=0),
        stored=sum(r.stored for r in results),
        replayed=sum(r.replayed for r in results),
        errors=[error for r in results for error in r.errors],
        kinds=frozenset().union(*(r.kinds for r in results)),
    )
    # The engine row as the last part that stored something left it (the risk evaluation).
    engines = [r.engine for r in results if r.engine is not None]
    merged.engine = engines[-1] if engines else None
    return merged


def _reason(exc: BaseException) -> str:
    """What went wrong, in one line, as PostgreSQL or Python says it."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    if isinstance(cause, psycopg.Error) and cause.diag.message_primary:
        text = cause.diag.message_primary
        if cause.diag.message_detail:
            text += f" ({cause.diag.message_detail})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    # It goes back to the engine and into the event log: one line, no NUL, bounded.
    return " ".join(text.replace("\x00", " ").split())[:500]


def _refused_field(event: p.Event, exc: BaseException) -> str | None:
    """The event's field the database named (a column, a constraint), if it named one."""
    cause = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    if not isinstance(cause, psycopg.Error):
        return None
    fields = event.__struct_fields__
    column = cause.diag.column_name
    if column in fields:
        return column
    constraint = cause.diag.constraint_name or ""
    named = [name for name in fields if f"_{name}_" in f"_{constraint}_"]
    return max(named, key=len) if named else None


# The event log keeps the refused event beside the stored ones (its reason in ``refused``), and
# the engine row counts it and moves its watermark over it: a replay of it changes nothing. Only
# when no other connection of the engine stored or refused that seq meanwhile.


_REFUSE = f"""
    WITH e AS (
        UPDATE {Engine._meta.db_table} SET last_seq = %(seq)s, refused_events = refused_events + 1
        WHERE id = %(engine_id)s AND last_seq < %(seq)s RETURNING id
    )
    INSERT INTO {partitions.PARENT} (engine_id, first_seq, last_seq, received_at, events,
        refused)
    SELECT e.id, %(seq)s, %(seq)s, %(now)s, %(events)s::json, %(reason)s FROM e"""


def _refuse(engine_id: int, event: p.Event, position: int, exc: BaseException) -> p.Error | None:
    """Refuse an event that fails alone: record it, count it, and say so to the engine.

    Returns the error frame (code event_refused), or None if the seq was stored or refused
    meanwhile (by another connection of the engine). Raises _NotStored if the refusal itself
    cannot be recorded.
    """
    reason = _reason(exc)
    field = _refused_field(event, exc)
    where = f"events[{position}]" + (f".{field}" if field else "")
    now = datetime.now(UTC)
    values = {"engine_id": engine_id, "seq": event.seq, "now": now, "reason": f"{where}: {reason}"}
    # The event as it arrived (encoded again), unless even that cannot go in the log's JSON
    # column: then its kind and seq only.
    bodies = [
        json_text([event]),
        json_text([{"kind": event.__struct_config__.tag, "seq": event.seq}]),
    ]
    for body in bodies:
        try:
            partitions.ensure_partition(now.date())
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_REFUSE, values | {"events": body})
                recorded = cursor.rowcount == 1
            break
        except Exception as failure:
            if not _input_fault(failure) or body is bodies[-1]:
                raise _NotStored() from failure
    if not recorded:
        return None
    log.warning("engine %s: event seq %s refused: %s: %s", engine_id, event.seq, where, reason)
    return p.Error(
        code="event_refused",
        message=f"the control plane cannot store this event, and refused it: {reason}",
        field=where,
        seq=event.seq,
    )


def _answer(
    engine_id: int, decoded: Decoded, result: IngestResult, refusals: Sequence[p.Error] = ()
) -> tuple[list[p.ServerFrame], IngestResult]:
    frames: list[p.ServerFrame] = [*decoded.errors, *_in_frame(decoded, result.errors), *refusals]
    # Post-trade risk is evaluated on it before the ack (risk.evaluation), and alert rules are
    # scheduled (alerts.hooks): a failing receiver is logged, and the batch is acked all the same.
    announce(batch_stored, engine_id=engine_id, result=result, refused=len(refusals))
    # Events rejected at decoding are acknowledged too (they will never become valid), so the
    # ack covers the highest seq seen in the frame, stored or refused.
    refused = [e.seq for e in decoded.errors if e.seq is not None]
    ack = max([result.ack_seq, *refused]) if refused else result.ack_seq
    if refused and ack > result.ack_seq and not _advance_watermark(engine_id, ack):
        # Acked only as far as stored: the engine keeps the refused events until a later ack
        # covers them, or replays them to be refused again. Nothing is lost either way.
        ack = result.ack_seq
    frames.append(p.Ack(seq=ack))
    return frames, result


def _in_frame(decoded: Decoded, errors: list[p.Error]) -> list[p.Error]:
    """The ingest's errors name a field of an event (``fill_id``, with its seq); say which event
    of the frame it is, as the decoding errors do (``events[3].fill_id``)."""
    if not errors or decoded.events is None:
        return errors
    positions = decoded.positions or range(len(decoded.events))
    index: dict[int, int] = {}
    for event, i in zip(decoded.events, positions, strict=True):
        index.setdefault(event.seq, i)
    return [
        msgspec.structs.replace(error, field=f"events[{index[error.seq]}].{error.field}")
        if error.field and error.seq in index
        else error
        for error in errors
    ]


def _advance_watermark(engine_id: int, seq: int) -> bool:
    """Move the engine's watermark up to ``seq``; False if the database refused.

    It runs after the group's commit, once per engine of the group: one engine's failure here
    (its row locked past a timeout, a trigger) must not turn into an exception that fails the
    answers of every engine stored with it.
    """
    try:
        # A savepoint should a caller hold a transaction, which a failed statement would spoil.
        with transaction.atomic():
            Engine.objects.filter(pk=engine_id).update(last_seq=Greatest("last_seq", seq))
    except Exception as exc:  # a lost connection (InterfaceError) is no DatabaseError
        log.warning("engine %s: watermark not moved to %d: %s", engine_id, seq, exc)
        return False
    return True
