"""The connection (engine_sdk/connection.py): session, sending, reconnects, heartbeats, dead-man."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from engine_sdk import protocol as p
from engine_sdk.client import (
    MAX_EVENT_BYTES,
    EngineClient,
    EngineReplaced,
    StageForbidsLive,
    Unauthorized,
)
from engine_sdk.gate import OrderRejected
from tests.sdk.conftest import TOKEN, FakeControlPlane, a_metric

MakeClient = Callable[..., EngineClient]


@pytest.mark.asyncio
async def test_it_says_hello_then_streams_events_until_acked(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)

    seqs = [client.emit(a_metric(i)) for i in range(10)]
    await client.flush(timeout=5)

    assert seqs == list(range(1, 11))
    assert sorted(control_plane.stored) == seqs
    hello = control_plane.hellos[0]
    assert (hello.engine_build, hello.mode, hello.last_seq) == ("test-build", "paper", 0)
    assert hello.trading_state == "ACTIVE"
    assert client.acked_seq == 10
    assert (client.engine_id, client.limits_version) == (7, 3)
    await client.close()


@pytest.mark.asyncio
async def test_after_a_disconnect_it_resends_only_what_the_server_lacks(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    for i in range(5):
        client.emit(a_metric(i))
    await client.flush(timeout=5)

    # The server receives 6..10 but commits only up to 8 before the connection breaks.
    control_plane.ack_events = False
    control_plane.commit_limit = 8
    for i in range(5):
        client.emit(a_metric(i))
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 10)
    control_plane.ack_events = True
    await control_plane.drop()
    await client.flush(timeout=5)

    assert control_plane.received_seqs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 9, 10]
    assert control_plane.hellos[1].last_seq == 10
    assert sorted(control_plane.stored) == list(range(1, 11))
    await client.close()


@pytest.mark.asyncio
async def test_a_large_backlog_is_split_into_frames_within_the_limits(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url, batch_max_events=50)
    big = "x" * int(MAX_EVENT_BYTES * 0.9)  # four of these fill a frame
    for _ in range(6):
        client.emit(
            p.LogEvent(ts=datetime.now(UTC), level="info", message="big", context={"blob": big})
        )
    for i in range(120):
        client.emit(a_metric(i))
    await client.start()
    await client.flush(timeout=5)

    event_frames = [f for f in control_plane.frames if f.startswith(b'{"type":"events"')]
    assert all(len(f) <= p.MAX_FRAME_BYTES for f in event_frames)
    assert len(event_frames) >= 4
    assert sorted(control_plane.stored) == list(range(1, 127))
    await client.close()


@pytest.mark.asyncio
async def test_it_stops_for_good_on_a_bad_token(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url, token="wrong")
    await client.start()

    with pytest.raises(Unauthorized):
        await client.wait_connected(timeout=5)

    assert isinstance(client.error, Unauthorized)
    assert control_plane.connection_attempts == 1
    # Events are still journaled for a later run with the right token.
    assert client.emit(a_metric()) == 1
    await client.close()


@pytest.mark.asyncio
async def test_it_stops_when_another_connection_takes_over_the_engine(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)

    await control_plane.drop(code=p.CLOSE_REPLACED)

    with pytest.raises(EngineReplaced):
        await client.wait_connected(timeout=5)
    assert control_plane.connection_attempts == 1
    await client.close()


class _Ceiling(random.Random):
    """Always picks the top of the jitter range, so the backoff schedule is predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_uses_full_jitter_under_an_exponential_cap(make_client: MakeClient) -> None:
    client = make_client("ws://127.0.0.1:9/", backoff_initial_s=0.2, backoff_max_s=10.0)
    delays = [client.connection.backoff_delay(attempt) for attempt in range(10) for _ in range(20)]
    caps = [min(10.0, 0.2 * 2**attempt) for attempt in range(10) for _ in range(20)]
    assert all(0 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert max(delays[-20:]) > 5  # the cap is reached, jitter spreads below it


@pytest.mark.asyncio
async def test_it_reconnects_with_growing_delays_while_the_server_refuses(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    # The server refuses the engine (not with 4401) until it is fixed.
    control_plane.token = "rotated"
    control_plane.close_code_for_bad_token = 1011
    client = make_client(
        control_plane.url, backoff_initial_s=0.02, backoff_max_s=0.08, rng=_Ceiling()
    )
    await client.start()
    await control_plane.wait_for(lambda: control_plane.connection_attempts >= 5)

    gaps = [b - a for a, b in itertools.pairwise(control_plane.connection_times)]
    for gap, expected in zip(gaps, [0.02, 0.04, 0.08, 0.08], strict=False):
        assert gap >= expected * 0.9
    control_plane.token = TOKEN
    await client.wait_connected(timeout=5)
    await client.close()


@pytest.mark.asyncio
async def test_the_dead_man_pauses_a_silent_engine_and_the_server_lifts_it(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    tripped = asyncio.Event()
    control_plane.send_heartbeats = False
    control_plane.heartbeat_interval_s = 10.0
    client = make_client(control_plane.url, dead_man_after_s=0.3, on_dead_man=tripped.set)
    await client.start()
    await client.wait_connected(timeout=5)

    await asyncio.wait_for(tripped.wait(), timeout=5)

    assert client.trading_state == "PAUSED"
    with pytest.raises(OrderRejected, match="PAUSED"):
        client.check_order("AAPL", "buy", Decimal(1), Decimal(0))
    await control_plane.wait_for(lambda: bool(control_plane.events_of(p.StateEvent)))
    state_event = control_plane.events_of(p.StateEvent)[0]
    assert state_event.reason == "dead-man: no server for 0.3 s"

    await control_plane.send(p.ServerHeartbeat(ts=datetime.now(UTC)))
    await control_plane.wait_for(lambda: len(control_plane.events_of(p.StateEvent)) == 2)
    assert client.trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_a_server_that_sends_nothing_at_all_trips_the_dead_man(
    make_client: MakeClient,
) -> None:
    tripped = asyncio.Event()
    client = make_client("ws://127.0.0.1:9/", dead_man_after_s=0.2, on_dead_man=tripped.set)
    await client.start()
    await asyncio.wait_for(tripped.wait(), timeout=5)
    assert client.trading_state == "PAUSED"
    await client.close()


@pytest.mark.asyncio
async def test_it_sends_heartbeats_at_the_interval_the_server_asks_for(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.heartbeat_interval_s = 0.05
    client = make_client(control_plane.url, heartbeat_interval_s=30)
    await client.start()
    client.emit(a_metric())
    await control_plane.wait_for(lambda: len(control_plane.heartbeats) >= 2)
    assert control_plane.heartbeats[-1].last_seq == 1
    assert control_plane.heartbeats[-1].trading_state == "ACTIVE"
    await client.close()


@pytest.mark.asyncio
async def test_server_errors_reach_the_error_callback(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    errors: list[p.Error] = []
    client = make_client(control_plane.url, on_error=errors.append)
    await client.start()
    await client.wait_connected(timeout=5)
    await control_plane.send(p.Error(code="invalid_event", message="bad", field="events[0].x"))
    # Frames arrive in order: once the ack for a later event is in, so is the error.
    client.emit(a_metric())
    await client.flush(timeout=5)
    assert [e.code for e in errors] == ["invalid_event"]
    await client.close()


@pytest.mark.asyncio
async def test_after_an_internal_error_it_reconnects_and_resends(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    control_plane.ack_events = False
    client.emit(a_metric())
    await control_plane.wait_for(lambda: len(control_plane.received_seqs) == 1)
    control_plane.stored.clear()  # the server failed to store it
    control_plane.ack_events = True

    await control_plane.send(p.Error(code="internal_error", message="database unavailable"))

    await client.flush(timeout=5)
    assert control_plane.received_seqs == [1, 1]
    assert len(control_plane.hellos) == 2
    await client.close()


@pytest.mark.asyncio
async def test_it_learns_its_stage_from_the_welcome(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.stage = "shadow"
    client = make_client(control_plane.url)
    assert client.stage is None
    await client.start()
    await client.wait_connected(timeout=5)
    assert client.stage == "shadow"
    await client.close()


@pytest.mark.asyncio
async def test_a_server_without_stages_leaves_the_stage_unknown(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    client = make_client(control_plane.url)
    await client.start()
    await client.wait_connected(timeout=5)
    assert client.stage is None
    await client.close()


@pytest.mark.asyncio
async def test_it_stops_for_good_when_its_stage_forbids_live_with_the_servers_message(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    message = (
        "engine alpha is at stage paper, which sends no real orders: a live-mode hello is "
        "refused until it is promoted to small capital (docs/going-live.md)"
    )
    refusal = p.Error(code="stage_forbids_live", message=message, field="mode")
    control_plane.hello_refusal = (refusal, p.CLOSE_STAGE_FORBIDS)
    client = make_client(control_plane.url)
    await client.start()

    with pytest.raises(StageForbidsLive, match="at stage paper"):
        await client.wait_connected(timeout=5)

    assert isinstance(client.error, StageForbidsLive)
    assert str(client.error) == message
    await asyncio.sleep(0.1)  # the backoff would have come round several times
    assert control_plane.connection_attempts == 1
    await client.close()
