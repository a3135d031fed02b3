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

Not thread-safe: one caller at a time (the client runs every call in one writer task).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from engine_sdk import protocol

__all__ = ["CommandStore", "Journal", "JournalCorrupt"]

log = logging.getLogger(__name__)

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
