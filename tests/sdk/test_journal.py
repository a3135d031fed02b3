from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from engine_sdk import protocol as p
from engine_sdk.journal import CommandStore, Journal, JournalCorrupt

TS = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def entries(first: int, count: int) -> list[tuple[int, bytes]]:
    return [
        (seq, p.encode_event(p.MetricEvent(seq=seq, ts=TS, name="queue_depth", value=seq)))
        for seq in range(first, first + count)
    ]


def test_a_fresh_journal_starts_at_zero(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert (journal.last_seq, journal.acked_seq, list(journal.unacked)) == (0, 0, [])


def test_unacked_events_and_the_seq_survive_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 5))
    journal.append(entries(6, 5), ack=3)
    journal.close()

    reopened = Journal(tmp_path)

    assert reopened.last_seq == 10
    assert reopened.acked_seq == 3
    assert list(reopened.unacked) == entries(4, 7)
    assert [p.decode_event(raw).seq for _, raw in reopened.unacked] == list(range(4, 11))


def test_an_ack_alone_is_remembered(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 5))
    journal.ack(5)
    journal.close()
    reopened = Journal(tmp_path)
    assert (reopened.last_seq, len(reopened)) == (5, 0)


def test_it_refuses_seqs_out_of_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 3))
    with pytest.raises(ValueError, match="does not follow"):
        journal.append(entries(3, 1))


def test_compaction_drops_acked_events_and_keeps_the_seq(tmp_path: Path) -> None:
    journal = Journal(tmp_path, compact_min_bytes=20_000)
    written = 0
    for batch in range(50):
        batch_entries = entries(batch * 100 + 1, 100)
        written += sum(len(raw) + 1 for _, raw in batch_entries)
        journal.append(batch_entries, ack=batch * 100)
        assert journal.path.stat().st_size < 2 * 20_000 + 10_000
    journal.append(entries(5001, 10), ack=5000)
    journal.close()

    assert written > 10 * 20_000
    reopened = Journal(tmp_path)
    assert reopened.last_seq == 5010
    assert reopened.acked_seq == 5000
    assert [seq for seq, _ in reopened.unacked] == list(range(5001, 5011))

    reopened.ack(5010)
    reopened.compact()
    reopened.close()
    emptied = Journal(tmp_path)
    assert (emptied.last_seq, len(emptied)) == (5010, 0)


def test_a_torn_last_write_is_dropped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 3))
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(entries(4, 1)[0][1][:25])

    reopened = Journal(tmp_path)

    assert reopened.last_seq == 3
    reopened.append(entries(4, 1))
    reopened.close()
    assert Journal(tmp_path).last_seq == 4


def test_garbage_in_the_middle_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 2))
    journal.close()
    with open(journal.path, "ab") as f:
        f.write(b"\x00\x00garbage\n")
        f.write(entries(3, 1)[0][1] + b"\n")
    with pytest.raises(JournalCorrupt):
        Journal(tmp_path)


def test_renumbering_moves_unacked_events_above_a_seq(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append(entries(1, 3))

    renumbered = journal.renumber(101)
    journal.close()

    assert [seq for seq, _ in renumbered] == [101, 102, 103]
    reopened = Journal(tmp_path)
    assert [p.decode_event(raw).seq for _, raw in reopened.unacked] == [101, 102, 103]
    assert (reopened.acked_seq, reopened.last_seq) == (100, 103)


def test_handled_commands_survive_a_restart(tmp_path: Path) -> None:
    store = CommandStore(tmp_path)
    result = p.CommandResult(command_id=uuid.uuid4(), status="succeeded", trading_state="PAUSED")
    store.record(result)

    reopened = CommandStore(tmp_path)

    assert result.command_id in reopened
    assert reopened.result(result.command_id) == result
    assert uuid.uuid4() not in reopened


def test_the_command_store_forgets_the_oldest_beyond_its_size(tmp_path: Path) -> None:
    store = CommandStore(tmp_path, fsync=False, keep=10)
    results = [p.CommandResult(command_id=uuid.uuid4(), status="succeeded") for _ in range(25)]
    for result in results:
        store.record(result)

    reopened = CommandStore(tmp_path)

    assert results[-1].command_id in reopened
    assert results[0].command_id not in reopened
    assert len(reopened) <= 20
