"""The engine WebSocket, driven with Channels' communicator over the real Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import psycopg
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from controlplane.commands import delivery
from controlplane.config.asgi import application
from controlplane.models import Command, Engine, Fill, Order
from engine_sdk import protocol as p
from tests.gateway import factories as f
from tests.servers import current_database_url

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def hello_frame(mode: str = "paper", **overrides) -> str:
    values = dict(
        protocol=p.PROTOCOL_VERSION,
        engine_build="test-1",
        config_hash="abc",
        mode=mode,
        broker="sim",
        account="acc-1",
        trading_state="ACTIVE",
        last_seq=0,
    )
    values.update(overrides)
    return p.encode(p.Hello(**values)).decode()


async def open_socket(token: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = WebsocketCommunicator(application, "/ws/engine/v1", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def greeted(token: str) -> tuple[WebsocketCommunicator, dict]:
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame())
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def send_events(ws: WebsocketCommunicator, *events: p.Event) -> list[dict]:
    """Send a frame and collect the answers up to and including the ack."""
    await ws.send_to(text_data=f.events_frame(*events).decode())
    return await frames_until_ack(ws)


FRAME_LEVEL_ERRORS = {
    "malformed_json",
    "frame_too_large",
    "too_many_events",
    "unknown_type",
    "invalid_frame",
    "internal_error",
}


async def frames_until_ack(ws: WebsocketCommunicator) -> list[dict]:
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=5)
        if frame["type"] == "heartbeat":
            continue
        frames.append(frame)
        # An ack ends the answer to an events frame; so does a frame-level error.
        if frame["type"] == "ack" or frame.get("code") in FRAME_LEVEL_ERRORS:
            return frames


async def closed_with(ws: WebsocketCommunicator) -> int:
    while True:
        output = await ws.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return output.get("code", 1000)


@database_sync_to_async
def db(fn):
    return fn()


async def test_a_bad_token_is_closed_with_4401(engine_and_token):
    ws = await open_socket("cpe_not-a-real-token")
    assert await closed_with(ws) == 4401


async def test_a_missing_token_is_closed_with_4401(engine_and_token):
    ws = await open_socket(None)
    assert await closed_with(ws) == 4401


async def test_the_first_frame_must_be_hello(engine_and_token):
    _, token = engine_and_token
    ws = await open_socket(token)
    await ws.send_to(text_data=f.events_frame(f.metric(1)).decode())
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "not_hello"
    assert await closed_with(ws) == 4400


async def test_a_hello_with_the_wrong_mode_is_refused(engine_and_token):
    # Not live: a live hello the stage forbids is refused for its stage (tests/gateway/
    # test_stage_enforcement.py).
    _, token = engine_and_token
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="shadow"))
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "engine_mismatch"
    assert error["field"] == "mode"
    assert await closed_with(ws) == 4400


async def test_hello_gets_a_welcome_with_the_last_stored_seq_and_marks_the_engine_online(
    engine_and_token,
):
    engine, token = engine_and_token
    ws, welcome = await greeted(token)
    assert welcome["engine_name"] == engine.name
    assert welcome["last_seq"] == 0
    assert welcome["desired_state"] == "ACTIVE"
    await send_events(ws, f.order(1, "o-1"), f.fill(2, "f-1", "o-1"))
    await ws.disconnect()
    stored = await db(lambda: Engine.objects.get(pk=engine.pk))
    assert stored.last_seq == 2
    assert stored.connected is False
    ws, welcome = await greeted(token)
    assert welcome["last_seq"] == 2
    assert (await db(lambda: Engine.objects.get(pk=engine.pk))).connected is True
    await ws.disconnect()


async def test_events_are_acked_after_storage_and_a_replay_changes_nothing(engine_and_token):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    batch = [f.order(1, "o-1"), f.fill(2, "f-1", "o-1"), f.fill(3, "f-2", "o-1")]
    assert await send_events(ws, *batch) == [{"type": "ack", "seq": 3}]
    assert await send_events(ws, *batch) == [{"type": "ack", "seq": 3}]
    await ws.disconnect()
    assert await db(lambda: Fill.objects.filter(engine=engine).count()) == 2


async def test_bad_events_get_errors_naming_the_field_and_the_rest_is_stored(engine_and_token):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    good = json.loads(f.events_frame(f.order(1, "o-1"), f.fill(5, "f-ok", "o-1")))["events"]
    negative = json.loads(p.encode(f.fill(2, "f-neg", "o-1")))
    negative["quantity"] = "-5"
    missing = json.loads(p.encode(f.fill(3, "f-missing", "o-1")))
    del missing["price"]
    ill_typed = json.loads(p.encode(f.metric(4)))
    ill_typed["value"] = "fast"
    unknown = {"kind": "teleport", "seq": 6, "ts": "2026-11-23T14:00:00Z"}
    frame = {"type": "events", "events": [good[0], negative, missing, ill_typed, good[1], unknown]}
    await ws.send_to(text_data=json.dumps(frame))
    answers = await frames_until_ack(ws)
    errors = {e["seq"]: e for e in answers if e["type"] == "error"}
    assert errors[2]["code"] == "invalid_event" and errors[2]["field"] == "events[1].quantity"
    assert errors[3]["field"] == "events[2].price"
    assert errors[4]["field"] == "events[3].value"
    assert errors[6]["code"] == "unknown_kind"
    assert answers[-1] == {"type": "ack", "seq": 6}
    # The socket is still up and the valid events are stored.
    assert await send_events(ws, f.metric(7)) == [{"type": "ack", "seq": 7}]
    await ws.disconnect()
    fills = await db(
        lambda: list(Fill.objects.filter(engine=engine).values_list("fill_id", flat=True))
    )
    assert fills == ["f-ok"]


async def test_malformed_json_and_oversized_frames_get_errors_and_the_socket_survives(
    engine_and_token,
):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    await send_events(ws, f.order(1, "o-1"))
    await ws.send_to(text_data='{"type": "events", "events": [')
    assert (await ws.receive_json_from(timeout=5))["code"] == "malformed_json"
    await ws.send_to(text_data="x" * (p.MAX_FRAME_BYTES + 1))
    assert (await ws.receive_json_from(timeout=5))["code"] == "frame_too_large"
    await ws.send_to(text_data='{"type": "teleport"}')
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "unknown_type" and error["field"] == "type"
    assert await send_events(ws, f.fill(2, "f-1", "o-1")) == [{"type": "ack", "seq": 2}]
    await ws.disconnect()
    assert await db(lambda: Order.objects.filter(engine=engine).count()) == 1


async def test_a_token_for_one_engine_can_never_write_as_another(make_engine):
    alpha, alpha_token = await db(lambda: make_engine("alpha"))
    beta, _ = await db(lambda: make_engine("beta"))
    ws, welcome = await greeted(alpha_token)
    assert welcome["engine_id"] == alpha.pk
    # There is no engine field to forge: whatever the frame says, it is stored as the token's.
    frame = json.loads(f.events_frame(f.order(1, "o-1")))
    frame["engine_id"] = beta.pk
    frame["events"][0]["engine"] = beta.name
    await ws.send_to(text_data=json.dumps(frame))
    assert (await frames_until_ack(ws))[-1]["seq"] == 1
    await ws.disconnect()
    assert await db(lambda: Order.objects.filter(engine=beta).count()) == 0
    assert await db(lambda: Order.objects.filter(engine=alpha).count()) == 1


async def test_a_newer_connection_replaces_the_older_one_with_4409(engine_and_token):
    engine, token = engine_and_token
    first, _ = await greeted(token)
    second, _ = await greeted(token)
    assert await closed_with(first) == 4409
    assert await send_events(second, f.metric(1)) == [{"type": "ack", "seq": 1}]
    await first.disconnect()
    assert (await db(lambda: Engine.objects.get(pk=engine.pk))).connected is True
    await second.disconnect()


async def test_heartbeats_update_last_seen_and_the_reported_state(engine_and_token):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    beat = p.Heartbeat(ts=datetime.now(UTC), trading_state="PAUSED", last_seq=0)
    await ws.send_to(text_data=p.encode(beat).decode())
    await send_events(ws, f.metric(1))  # the ack proves the heartbeat was handled before it
    await ws.disconnect()
    assert (await db(lambda: Engine.objects.get(pk=engine.pk))).reported_state == "PAUSED"


async def test_an_engine_cannot_issue_a_command_through_its_socket(engine_and_token):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    forged = {
        "type": "command",
        "command_id": "8d0e7a52-8f58-4bde-a6a4-6f4fcd1b4c1b",
        "kind": "kill",
        "params": {},
        "reason": "x",
        "issued_by": "rita-risk",
        "issued_at": "2026-11-23T10:00:00Z",
    }

    await ws.send_to(text_data=json.dumps(forged))

    error = await ws.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "unknown_type")
    assert not await database_sync_to_async(Command.objects.exists)()
    desired = await database_sync_to_async(
        lambda: Engine.objects.values_list("desired_state", flat=True).get(pk=engine.pk)
    )()
    assert desired == "ACTIVE"
    await ws.disconnect()


async def test_frames_that_queue_behind_a_write_are_stored_together_and_acked_once(
    engine_and_token,
):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    # Another session holds the engine's row, so the first frame's write waits for it.
    blocker = await asyncio.to_thread(psycopg.connect, current_database_url())
    await asyncio.to_thread(
        blocker.execute, "SELECT 1 FROM controlplane_engine WHERE id = %s FOR UPDATE", [engine.pk]
    )
    await ws.send_to(text_data=f.events_frame(f.order(1, "o-1")).decode())
    await asyncio.to_thread(wait_for_a_lock_wait)
    for seq in (2, 4, 6, 8):  # these arrive while the first write waits
        await ws.send_to(
            text_data=f.events_frame(
                f.order(seq, f"o-{seq}"),
                f.fill(seq + 1, f"f-{seq}", "o-1"),
            ).decode()
        )
    # Released only once the socket has queued all four: on a busy machine the write could
    # otherwise finish before the consumer has even read them.
    (consumer,) = delivery.commands_hub().listeners[engine.pk]
    for _ in range(500):
        if consumer._queued_events == 8:
            break
        await asyncio.sleep(0.01)
    assert consumer._queued_events == 8
    await asyncio.to_thread(blocker.rollback)
    await asyncio.to_thread(blocker.close)

    first = await frames_until_ack(ws)
    second = await frames_until_ack(ws)

    assert first == [{"type": "ack", "seq": 1}]
    assert second == [{"type": "ack", "seq": 9}]  # four frames, one transaction, one ack
    stored = await database_sync_to_async(
        lambda: (
            Order.objects.filter(engine=engine).count(),
            Fill.objects.filter(engine=engine).count(),
        )
    )()
    assert stored == (5, 4)
    await ws.disconnect()


def wait_for_a_lock_wait() -> None:
    with psycopg.connect(current_database_url(), autocommit=True) as conn:
        for _ in range(200):
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            ).fetchone()[0]
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the first write never waited for the engine's row")


def set_read_only(on: bool) -> None:
    """New connections to the test database refuse writes (on) or take them again (off)."""
    action = "SET" if on else "RESET"
    setting = " = on" if on else ""
    with psycopg.connect(current_database_url(), autocommit=True) as conn:
        conn.execute("SET default_transaction_read_only = off")
        name = conn.execute("SELECT current_database()").fetchone()[0]
        conn.execute(f'ALTER DATABASE "{name}" {action} default_transaction_read_only{setting}')


async def test_after_a_batch_fails_to_store_nothing_behind_it_is_stored_and_the_socket_stays(
    engine_and_token,
):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    await asyncio.to_thread(set_read_only, True)
    try:
        # The server opens a connection per batch in tests: the first is refused by the database.
        await ws.send_to(text_data=f.events_frame(f.order(1, "o-1")).decode())
        first = await frames_until_ack(ws)
    finally:
        await asyncio.to_thread(set_read_only, False)
    # The database takes writes again, but nothing behind the failed batch is stored on this
    # connection, let alone acked (an ack for 2 or 3 would cover 1, which was never stored).
    later = []
    for seq in (2, 3):
        await ws.send_to(text_data=f.events_frame(f.order(seq, f"o-{seq}")).decode())
        later += await frames_until_ack(ws)

    assert [(a["type"], a.get("code")) for a in first + later] == [("error", "internal_error")] * 3
    assert "reconnect" in later[0]["message"]
    assert not await database_sync_to_async(Order.objects.filter(engine=engine).exists)()
    # A database failure is no fault of the engine's input: the socket stayed open (it answered
    # 2 and 3 above); the engine resends on a new connection, from the last ack.
    await ws.disconnect()


async def test_an_engine_deactivated_unseen_by_its_socket_is_closed_at_its_next_heartbeat(
    engine_and_token,
):
    engine, token = engine_and_token
    ws, _ = await greeted(token)
    # Deactivated without the message that closes its sockets (as if Redis lost it).
    await db(lambda: Engine.objects.filter(pk=engine.pk).update(is_active=False))
    heartbeat = p.Heartbeat(ts=p.utc_now(), trading_state="ACTIVE", last_seq=0)
    await ws.send_to(text_data=p.encode(heartbeat).decode())
    error = await ws.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "unauthorized")
    assert await closed_with(ws) == 4401


async def test_an_engine_deactivated_before_its_hello_is_refused_with_4401(engine_and_token):
    engine, token = engine_and_token
    ws = await open_socket(token)
    await db(lambda: Engine.objects.filter(pk=engine.pk).update(is_active=False))
    await ws.send_to(text_data=hello_frame())
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "unauthorized"
    assert await closed_with(ws) == 4401
    assert (await db(lambda: Engine.objects.get(pk=engine.pk))).connected is False


async def test_an_engine_gone_between_two_heartbeats_leaves_no_error_on_the_task(settings):
    from uvicorn.protocols.utils import ClientDisconnected

    from controlplane.gateway.socket import EngineConsumer

    async def gone(message: dict) -> None:
        raise ClientDisconnected()

    settings.ENGINE_HEARTBEAT_INTERVAL_S = 0.01
    consumer = EngineConsumer()
    consumer.base_send = gone
    task = asyncio.create_task(consumer._heartbeats())
    await asyncio.wait_for(task, 5)
    assert task.exception() is None


async def test_an_instrument_declared_over_the_socket_is_stored_and_a_conflict_named(
    engine_and_token,
):
    from controlplane.models import Instrument

    _, token = engine_and_token
    ws, _ = await greeted(token)
    declared = f.instrument(1, "CL", asset_class="future", multiplier="1000", currency="USD")
    assert await send_events(ws, declared) == [{"type": "ack", "seq": 1}]
    answers = await send_events(ws, f.instrument(2, "CL", multiplier="100"))
    assert [(a["type"], a.get("code"), a.get("field")) for a in answers] == [
        ("error", "instrument_conflict", "events[0].multiplier"),
        ("ack", None, None),
    ]
    await ws.disconnect()
    cl = await db(lambda: Instrument.objects.get(symbol="CL"))
    assert (cl.asset_class, cl.multiplier) == ("future", 1000)
