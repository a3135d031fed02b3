"""A durable local journal of sequenced events, so that nothing is lost across a restart.

Layout of the journal directory:

``events.jsonl``
    Append-only. Each line is either one encoded event (``{"kind": ..., "seq": N, ...}``) or an
    ack marker (``{"ack": N}``: every event with seq <= N is stored by the server). Events are
    written in seq order, one write (and one fsync) per batch.
``commands.jsonl``
    One line per command the engine finished handling, with the result it sent, so that a command
    delivered again after a restart is answered from here instead of being applied twice.

Ack markers are not fsynced: losing one only means some events are sent again, and the server
stores idempotently by seq. Compaction rewrites ``events.jsonl`` without the acked events once the
file is large and mostly acked; the rewrite starts with an ack marker, which keeps the seq counter
from going backwards even when nothing is left unacked.

``Journal`` and ``CommandStore`` are not thread-safe: one caller at a time. ``JournalWriter``, the
client's part that feeds the journal, is: its ``emit`` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from engine_sdk import protocol
from engine_sdk.errors import BackpressureError, EngineClientError

__all__ = ["MAX_EVENT_BYTES", "CommandStore", "Journal", "JournalCorrupt", "JournalWriter"]

log = logging.getLogger(__name__)

# One event may not take more than this once encoded, so a frame of at least one event always fits.
MAX_EVENT_BYTES: Final = 256 * 1024
EVENTS_FILE: Final = "events.jsonl"
COMMANDS_FILE: Final = "commands.jsonl"


def trim_acked(unacked: list[tuple[int, bytes]], head: int, seq: int) -> int:
    """Move ``head`` past the entries acked by ``seq``; return the new head.

    Acked entries are dropped from the front of the list only once they are many and most of
    it, so each ack costs O(entries acked) instead of a list copy.
    """
    while head < len(unacked) and unacked[head][0] <= seq:
        head += 1
    if head > 4096 and head * 2 > len(unacked):
        del unacked[:head]
        head = 0
    return head


class JournalCorrupt(Exception):
    """The journal cannot be read back; refusing to guess the next seq."""


class _Line(msgspec.Struct, forbid_unknown_fields=False):
    seq: int | None = None
    ack: int | None = None


_line_decoder: Final = msgspec.json.Decoder(_Line)


def _fsync_dir(directory: Path) -> None:
    # A rename is only durable once the directory entry is; not every platform allows this.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(path: Path, chunks: Iterable[bytes], *, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


class Journal:
    """Events that were given a seq but are not yet acked, kept on disk.

    ``last_seq`` is the highest seq ever written (or acked); a restarted engine continues after it.
    ``unacked`` holds ``(seq, encoded event)`` pairs in seq order.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool = True,
        compact_min_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.compact_min_bytes = compact_min_bytes
        self.path = self.directory / EVENTS_FILE
        self.acked_seq = 0
        self.last_seq = 0
        self._unacked: list[tuple[int, bytes]] = []
        # Index of the first unacked entry; acked ones are sliced off lazily to keep ack O(1).
        self._head = 0
        self._load()
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the journal's life
        self._size = self._file.tell()

    @property
    def unacked(self) -> Sequence[tuple[int, bytes]]:
        return self._unacked[self._head :]

    def __len__(self) -> int:
        return len(self._unacked) - self._head

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        entries: list[tuple[int, bytes]] = []
        acked = 0
        torn_at: int | None = None
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            # Every write ends with a newline, so a line without one was cut short.
            line = data[pos:] if end == -1 else data[pos:end]
            start, pos = pos, len(data) if end == -1 else end + 1
            if not line.strip() and end != -1:
                continue
            parsed = None
            if end != -1:
                with contextlib.suppress(msgspec.DecodeError):
                    parsed = _line_decoder.decode(line)
            if parsed is None or (parsed.seq is None and parsed.ack is None):
                if torn_at is None:
                    torn_at = start
                continue
            if torn_at is not None:
                raise JournalCorrupt(
                    f"{self.path}: unreadable data at byte {torn_at} followed by valid lines; "
                    "move the file away to start afresh (events in it will not be sent)"
                )
            if parsed.ack is not None:
                acked = max(acked, parsed.ack)
            elif parsed.seq is not None:
                if entries and parsed.seq <= entries[-1][0]:
                    raise JournalCorrupt(f"{self.path}: seq {parsed.seq} out of order")
                entries.append((parsed.seq, line))
        if torn_at is not None:
            # The tail of a batch torn by a crash: never fsynced, so never sent either.
            log.warning("journal %s: dropping %d torn bytes", self.path, len(data) - torn_at)
            with open(self.path, "r+b") as f:
                f.truncate(torn_at)
        self.acked_seq = acked
        self.last_seq = max(acked, entries[-1][0] if entries else 0)
        self._unacked = [e for e in entries if e[0] > acked]

    def append(self, entries: Sequence[tuple[int, bytes]], *, ack: int | None = None) -> None:
        """Write a batch of encoded events (and optionally an ack marker) in one write.

        The events must continue the seq order. With ``fsync`` on, they are on disk when this
        returns.
        """
        chunks: list[bytes] = []
        if ack is not None and ack > self.acked_seq:
            chunks.append(b'{"ack":%d}\n' % ack)
        if entries:
            if entries[0][0] <= self.last_seq:
                raise ValueError(f"seq {entries[0][0]} does not follow {self.last_seq}")
            for _, raw in entries:
                chunks.append(raw)
                chunks.append(b"\n")
        if not chunks:
            return
        data = b"".join(chunks)
        self._file.write(data)
        self._file.flush()
        if entries and self.fsync:
            os.fsync(self._file.fileno())
        self._size += len(data)
        if entries:
            self._unacked.extend(entries)
            self.last_seq = entries[-1][0]
        if ack is not None:
            self._mark_acked(ack)
        self.maybe_compact()

    def ack(self, seq: int) -> None:
        """Record that the server has every event up to ``seq``."""
        self.append((), ack=seq)

    def _mark_acked(self, seq: int) -> None:
        if seq <= self.acked_seq:
            return
        self.acked_seq = seq
        self.last_seq = max(self.last_seq, seq)
        self._head = trim_acked(self._unacked, self._head, seq)

    def maybe_compact(self) -> bool:
        # Compact when the file is big and at least half of it is dead weight, so the cost of a
        # rewrite is always paid for by the space it frees.
        if self._size < self.compact_min_bytes:
            return False
        live = sum(len(raw) + 1 for _, raw in self.unacked)
        if live * 2 > self._size:
            return False
        self.compact()
        return True

    def compact(self) -> None:
        """Rewrite the file with only the unacked events."""
        self._rewrite(list(self.unacked))

    def renumber(self, first_seq: int) -> list[tuple[int, bytes]]:
        """Give every unacked event a new seq, starting at ``first_seq``.

        For a journal that was lost or reset: the server already holds seqs this journal handed
        out again, so these events would be taken for replays and dropped.
        """
        if first_seq <= self.last_seq:
            raise ValueError("renumbering must move seqs forward")
        renumbered: list[tuple[int, bytes]] = []
        for offset, (_, raw) in enumerate(self.unacked):
            event = protocol.decode_event(raw)
            seq = first_seq + offset
            new = msgspec.structs.replace(event, seq=seq)
            renumbered.append((seq, protocol.encode_event(new)))
        # The marker keeps the counter above the seqs the server already has.
        self.acked_seq = first_seq - 1
        self._rewrite(renumbered)
        self.last_seq = max(self.acked_seq, renumbered[-1][0] if renumbered else 0)
        return renumbered

    def _rewrite(self, entries: list[tuple[int, bytes]]) -> None:
        self._file.close()
        chunks = [b'{"ack":%d}\n' % self.acked_seq]
        for _, raw in entries:
            chunks.append(raw)
            chunks.append(b"\n")
        _write_atomically(self.path, chunks, fsync=self.fsync)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = self._file.tell()
        self._unacked = entries
        self._head = 0

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


class _CommandLine(msgspec.Struct, forbid_unknown_fields=False):
    command_id: str
    result: msgspec.Raw


_command_line_decoder: Final = msgspec.json.Decoder(_CommandLine)


def _encode_command_line(command_id: str, result: bytes) -> bytes:
    return msgspec.json.encode(_CommandLine(command_id=command_id, result=msgspec.Raw(result)))


class CommandStore:
    """The ids of the commands already handled, with the result that was sent for each."""

    def __init__(
        self, directory: str | os.PathLike[str], *, fsync: bool = True, keep: int = 10_000
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / COMMANDS_FILE
        self.fsync = fsync
        self.keep = keep
        self._results: dict[str, bytes] = {}
        self._lines = 0
        self._load()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                parsed = _command_line_decoder.decode(line)
            except msgspec.DecodeError:
                # Only a torn last line can be unreadable; that command was never answered.
                continue
            self._results[parsed.command_id] = bytes(parsed.result)
            self._lines += 1

    def __contains__(self, command_id: object) -> bool:
        return str(command_id) in self._results

    def __len__(self) -> int:
        return len(self._results)

    def result(self, command_id: object) -> protocol.CommandResult | None:
        raw = self._results.get(str(command_id))
        if raw is None:
            return None
        return msgspec.json.decode(raw, type=protocol.CommandResult)

    def record(self, result: protocol.CommandResult) -> None:
        command_id = str(result.command_id)
        raw = protocol.encode(result)
        self._results[command_id] = raw
        line = _encode_command_line(command_id, raw)
        with open(self.path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        self._lines += 1
        if self._lines > 2 * self.keep:
            self._trim()

    def _trim(self) -> None:
        # Commands older than the last `keep` are long expired; forgetting them bounds the file.
        items: list[tuple[str, bytes]] = list(self._results.items())[-self.keep :]
        self._results = dict(items)
        _write_atomically(
            self.path,
            (_encode_command_line(cid, raw) + b"\n" for cid, raw in items),
            fsync=self.fsync,
        )
        self._lines = len(items)


class JournalWriter:
    """The client's event pipeline: seqs handed out, batches journaled, events kept until acked.

    ``emit`` assigns the next seq and queues the encoded event; a writer task (``run``) appends
    queued events to the journal in batches, and only then are they in ``unacked``, where the
    sender finds them: a seq the server has seen can never be handed out again after a crash.

    ``emit`` may be called from any thread: one lock orders the seqs and the queue, and the
    writer task is woken on its event loop. Everything else runs on that loop.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: bool,
        batch_max_events: int,
        batch_interval_s: float,
        max_unacked_events: int,
        on_written: Callable[[], None],
        on_acked: Callable[[], None],
    ) -> None:
        self.journal = Journal(directory, fsync=fsync)
        self.batch_max_events = batch_max_events
        self.batch_interval_s = batch_interval_s
        self.max_unacked_events = max_unacked_events
        self._on_written = on_written
        self._on_acked = on_acked
        self.next_seq = self.journal.last_seq + 1
        self.acked_seq = self.journal.acked_seq
        # Guards next_seq, _pending and _sealed: emit may run on any thread.
        self._lock = threading.Lock()
        # Assigned a seq but not yet in the journal; only the writer task empties it.
        self._pending: list[tuple[int, bytes]] = []
        # Once the last batch is written at close, emit refuses: its event would never be kept.
        self._sealed = False
        # Journaled and not yet acked, in seq order (seqs are contiguous); entries before
        # head are acked and trimmed lazily.
        self.unacked: list[tuple[int, bytes]] = list(self.journal.unacked)
        self.head = 0
        # How far renumbering has moved seqs up (see renumber_after).
        self.seq_shift = 0
        self._wake = asyncio.Event()
        self._journal_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def last_seq(self) -> int:
        """The highest seq handed out so far."""
        return self.next_seq - 1

    @property
    def backlog(self) -> int:
        """Events emitted and not yet acked."""
        return len(self._pending) + len(self.unacked) - self.head

    def emit(self, event: protocol.Event) -> int:
        """Queue an event with the next seq and return the seq (see EngineClient.emit)."""
        with self._lock:
            if self._sealed:
                raise EngineClientError("client is closed")
            backlog = self.backlog
            if backlog >= self.max_unacked_events:
                raise BackpressureError(
                    f"{backlog} events are waiting for the server (max {self.max_unacked_events})"
                )
            seq = self.next_seq
            raw = protocol.encode_event(msgspec.structs.replace(event, seq=seq))
            if len(raw) > MAX_EVENT_BYTES:
                raise ValueError(f"event is {len(raw)} bytes encoded, at most {MAX_EVENT_BYTES}")
            # Checked as the server will decode it, before it takes a seq or reaches the
            # journal: an event the server would refuse is refused here, where it was made.
            protocol.check_encoded_event(raw)
            self.next_seq = seq + 1
            pending = self._pending
            pending.append((seq, raw))
            # Waking the writer once per batch, not per event, keeps emit cheap.
            wake = len(pending) == 1 or len(pending) >= self.batch_max_events
        if wake:
            self.wake()
        return seq

    def wake(self) -> None:
        """Wake the writer task, from its event loop or from any other thread."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        # asyncio.Event is not thread-safe; the loop sets it. A closed loop has no writer left.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake.set)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = asyncio.create_task(self.run(), name="engine-sdk-writer")
        if self._pending:
            self._wake.set()

    async def stop(self) -> None:
        """Write what is queued and stop the writer task."""
        if self._task is None:
            return
        # Stopped by a flag rather than cancelled: a cancelled task would let go of the journal
        # while its thread is still writing.
        self._closing = True
        self._wake.set()
        try:
            await self._task
        except Exception:
            log.exception("engine journal writer failed")

    def close(self) -> None:
        """Journal what is still queued (a last state event, say) and the last ack; close."""
        with self._lock:
            batch = self._take_pending()
            self._sealed = True
        if batch or self.acked_seq > self.journal.acked_seq:
            self._write_batch(batch, self.acked_seq)
        self.journal.close()

    def _take_pending(self) -> list[tuple[int, bytes]]:
        batch, self._pending = self._pending, []
        return batch

    def _write_batch(self, batch: list[tuple[int, bytes]], ack: int) -> None:
        self.journal.append(batch, ack=ack if ack > self.journal.acked_seq else None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Linger a little so that a burst becomes one write and one fsync.
            deadline = loop.time() + self.batch_interval_s
            while (
                0 < len(self._pending) < self.batch_max_events
                and not self._closing
                and (remaining := deadline - loop.time()) > 0
            ):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                self._wake.clear()
            async with self._journal_lock:
                with self._lock:
                    batch = self._take_pending()
                try:
                    await asyncio.to_thread(self._write_batch, batch, self.acked_seq)
                except OSError:
                    log.exception("engine journal: write failed; will retry")
                    with self._lock:
                        self._pending[:0] = batch
                    if not self._closing:
                        await asyncio.sleep(1.0)
                        self._wake.set()
                        continue
                    return
                if batch:
                    self.unacked.extend(batch)
                    self._on_written()
            if self._closing and not self._pending:
                return

    def on_ack(self, seq: int) -> None:
        """The server has every event up to ``seq``: they may be forgotten."""
        seq = min(seq, self.last_seq)
        if seq <= self.acked_seq:
            return
        self.acked_seq = seq
        self.head = trim_acked(self.unacked, self.head, seq)
        # The ack marker rides along with the next batch; a lost marker only costs a resend.
        self.wake()
        self._on_acked()

    async def renumber_after(self, server_seq: int) -> None:
        """Move the unacked events above ``server_seq``, which the server already holds.

        The journal was lost or reset: the server's events would be taken for replays of ours
        and dropped.
        """
        log.warning(
            "server has seq %d but the journal only reached %d; renumbering %d unacked events",
            server_seq,
            self.last_seq,
            self.backlog,
        )
        async with self._journal_lock:
            # No emit in between: the seqs handed out must continue after the renumbered ones.
            with self._lock:
                self._write_batch(self._take_pending(), self.acked_seq)
                if len(self.journal):
                    self.seq_shift += server_seq + 1 - self.journal.unacked[0][0]
                renumbered = self.journal.renumber(server_seq + 1)
                self.unacked = list(renumbered)
                self.head = 0
                self.next_seq = self.journal.last_seq + 1
