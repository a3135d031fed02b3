from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine_sdk import protocol as p
from engine_sdk.client import MAX_EVENT_BYTES, BackpressureError, EngineClient
from engine_sdk.journal import CommandStore, Journal, JournalCorrupt
from tests.sdk.conftest import FakeControlPlane, a_fill, a_metric

MakeClient = Callable[..., EngineClient]


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


# --- the client's journal writer: seqs, backlog, bounds at emit ---------------------------------


@pytest.mark.asyncio
async def test_events_emitted_while_offline_survive_a_restart(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    offline = make_client("ws://127.0.0.1:9/ws/engine/v1")
    await offline.start()
    offline.emit(a_fill("f-1"))
    offline.emit(a_fill("f-2"))
    await offline.close()

    client = make_client(control_plane.url)
    assert client.last_seq == 2
    await client.start()
    assert client.emit(a_fill("f-3")) == 3
    await client.flush(timeout=5)

    assert [f.fill_id for f in control_plane.events_of(p.FillEvent)] == ["f-1", "f-2", "f-3"]
    await client.close()


@pytest.mark.asyncio
async def test_a_lost_journal_does_not_reuse_seqs_the_server_has(
    control_plane: FakeControlPlane, make_client: MakeClient, tmp_path: Any
) -> None:
    old = make_client(control_plane.url, journal_dir=tmp_path / "old")
    await old.start()
    for i in range(4):
        old.emit(a_metric(i))
    await old.flush(timeout=5)
    await old.close()

    fresh = make_client(control_plane.url, journal_dir=tmp_path / "fresh")
    fresh.emit(a_fill("f-after-reset"))
    await fresh.start()
    await fresh.flush(timeout=5)

    assert control_plane.events_of(p.FillEvent)[0].seq == 5
    assert fresh.emit(a_metric()) == 6
    await fresh.close()


@pytest.mark.asyncio
async def test_an_oversized_event_is_refused_at_emit(make_client: MakeClient) -> None:
    client = make_client("ws://127.0.0.1:9/")
    huge = p.LogEvent(
        ts=datetime.now(UTC), level="info", message="x", context={"b": "x" * MAX_EVENT_BYTES}
    )
    with pytest.raises(ValueError, match="bytes"):
        client.emit(huge)
    assert client.emit(a_metric()) == 1
    await client.close()


@pytest.mark.asyncio
async def test_it_refuses_to_queue_beyond_the_backlog_limit_and_emit_wait_waits(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.ack_events = False
    client = make_client(control_plane.url, max_unacked_events=3)
    await client.start()
    await client.wait_connected(timeout=5)
    for i in range(3):
        client.emit(a_metric(i))
    with pytest.raises(BackpressureError):
        client.emit(a_metric())

    waiting = asyncio.create_task(client.emit_wait(a_metric(), timeout=5))
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 3)
    assert not waiting.done()
    await control_plane.send(p.Ack(seq=3))
    assert await waiting == 4
    await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("event", "field"),
    [
        (p.LogEvent(ts=datetime.now(UTC), level="info", message="a\x00b"), "message"),
        (
            p.OrderEvent(
                ts=datetime.now(UTC),
                client_order_id="o-1",
                symbol="AAPL",
                side="buy",
                order_type="market",
                quantity=Decimal(1),
                status="rejected",
                reject_reason="broker said \x00",
            ),
            "reject_reason",
        ),
        (p.MetricEvent(ts=datetime.now(UTC), name="x" * 65, value=1.0), "name"),
        (p.LogEvent(ts=datetime.now(UTC), level="info", message="m" * 8193), "message"),
    ],
)
async def test_an_event_outside_the_protocol_bounds_is_refused_at_emit_naming_the_field(
    make_client: MakeClient, event: p.Event, field: str
) -> None:
    client = make_client("ws://127.0.0.1:9/")
    with pytest.raises(ValueError, match=rf"\(field {field}\)"):
        client.emit(event)
    # It took no seq and nothing was queued: the next event is seq 1.
    assert client.emit(a_metric()) == 1
    assert client.backlog == 1
    await client.close()


def test_events_outside_the_bounds_cannot_even_be_built() -> None:
    # Checked on construction (__post_init__), so no engine code can hold one.
    with pytest.raises(ValueError, match=r"0.00000001 - at `\$.price`"):
        p.FillEvent(
            ts=datetime.now(UTC),
            fill_id="f",
            client_order_id="o",
            symbol="A",
            side="buy",
            quantity=Decimal(1),
            price=Decimal("1e-9"),
        )
    with pytest.raises(ValueError, match=r"UTC offset.*`\$.ts`"):
        p.MetricEvent(
            ts=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=20))), name="x", value=1.0
        )
    deep: object = 1
    for _ in range(p.MAX_JSON_DEPTH):
        deep = [deep]
    with pytest.raises(ValueError, match=r"nested at most 16 deep - at `\$.context`"):
        p.LogEvent(ts=datetime.now(UTC), level="info", message="m", context={"a": deep})
