"""The browsers' live socket and the snapshots behind it, over the real Redis channel layer."""

from __future__ import annotations

import asyncio
from collections import deque
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client, override_settings

from controlplane import hub
from controlplane.config.asgi import application
from dashboard import live
from dashboard.consumers import CLOSE_FORBIDDEN
from engine_sdk import protocol as p
from tests.gateway.test_engine_socket import greeted, send_events
from tests.gateway.test_hub import subscribers

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def browser(user=None, origin: bytes = b"http://testserver") -> WebsocketCommunicator:
    headers = [(b"origin", origin), (b"host", b"testserver")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    ws = WebsocketCommunicator(application, "/ws/live/v1", headers=headers)
    connected, _ = await ws.connect()
    assert connected
    return ws


async def subscribed(user, *topics: str) -> WebsocketCommunicator:
    ws = await browser(user)
    assert (await ws.receive_json_from(5))["type"] == "hello"
    await ws.send_json_to({"subscribe": list(topics)})
    answer = await ws.receive_json_from(5)
    assert answer["type"] == "subscribed", answer
    return ws


def publish(update: dict) -> None:
    """As a publisher in any process does: one message on the live hub."""
    assert hub.publish(live.HUB, live.encode([update])) >= 1


def order_with_fill(symbol: str, quantity: int) -> list[p.Event]:
    """An order and its full fill, stamped now (today's counts start at midnight UTC)."""
    now = p.utc_now()
    return [
        p.OrderEvent(
            seq=1,
            ts=now,
            client_order_id="o-1",
            symbol=symbol,
            side="buy",
            order_type="market",
            quantity=Decimal(quantity),
            status="accepted",
            expected_price=Decimal("100"),
        ),
        p.FillEvent(
            seq=2,
            ts=now,
            fill_id="f-1",
            client_order_id="o-1",
            symbol=symbol,
            side="buy",
            quantity=Decimal(quantity),
            price=Decimal("100.05"),
        ),
    ]


async def next_update(ws: WebsocketCommunicator) -> dict:
    while True:
        message = await ws.receive_json_from(5)
        if message["type"] == "update":
            return message


async def test_a_browser_without_a_session_is_refused(engine_and_token):
    ws = await browser(None)
    assert (await ws.receive_output(5))["code"] == CLOSE_FORBIDDEN


async def test_a_browser_from_a_foreign_origin_is_refused(viewer):
    with override_settings(ALLOWED_HOSTS=["desk.example"]):
        ws = WebsocketCommunicator(
            application,
            "/ws/live/v1",
            headers=[(b"origin", b"https://evil.example"), (b"host", b"desk.example")],
        )
        connected, _ = await ws.connect()
    assert not connected


async def test_a_stored_fill_reaches_the_fleet_subscribers_without_a_reload(
    engine_and_token, viewer
):
    _, token = engine_and_token
    screen = await subscribed(viewer, "fleet")
    socket, _ = await greeted(token)
    first = await next_update(screen)  # the connection itself is news on the fleet page
    assert first["updates"][0]["rows"][0]["connection"] == "online"

    await send_events(socket, *order_with_fill("AAPL", 10))

    update = await next_update(screen)
    (fleet,) = update["updates"]
    (row,) = fleet["rows"]
    assert (row["name"], row["open_positions"], row["orders_today"]) == ("alpha", 1, 1)
    assert update["seq"] > first["seq"]
    await socket.disconnect()
    await screen.disconnect()


async def test_updates_are_coalesced_to_at_most_ten_a_second(engine_and_token, viewer):
    engine, _ = engine_and_token
    screen = await subscribed(viewer, "fleet")
    row = {"id": engine.pk, "name": "alpha", "day_pnl": 0.0}

    for n in range(1, 51):
        publish(
            {
                "type": "live.update",
                "topic": "fleet",
                "source": "s1",
                "seq": n,
                "rows": [{**row, "day_pnl": float(n)}],
            }
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    updates = []
    while True:
        update = await next_update(screen)
        updates.append(update)
        if update["updates"][0]["rows"][0]["day_pnl"] == 50.0:
            break

    # 50 publications, a handful of messages: the newest row of the engine wins.
    assert len(updates) <= 2 + (loop.time() - started) * 10
    assert [u["seq"] for u in updates] == sorted({u["seq"] for u in updates})
    assert all(len(u["updates"][0]["rows"]) == 1 for u in updates)
    await screen.disconnect()


async def test_a_dropped_publication_makes_the_browser_resync(engine_and_token, viewer):
    engine, _ = engine_and_token
    screen = await subscribed(viewer, "fleet")
    for seq in (1, 3):  # 2 was lost on the way
        publish(
            {
                "type": "live.update",
                "topic": "fleet",
                "source": "s1",
                "seq": seq,
                "rows": [{"id": engine.pk, "name": "alpha"}],
            }
        )
        update = await next_update(screen)

    assert update["resync"] == ["fleet"]
    await screen.disconnect()


async def test_the_engine_page_topic_carries_new_fills_and_equity(engine_and_token, viewer):
    engine, token = engine_and_token
    screen = await subscribed(viewer, "engine:alpha")
    socket, _ = await greeted(token)

    await send_events(
        socket,
        *order_with_fill("MSFT", 5),
        p.AccountEvent(seq=3, ts=p.utc_now(), equity=Decimal("100500"), cash=Decimal("90000")),
    )

    # The batch may land between two flushes' reads, or in the middle of one (its queries are
    # not one snapshot): the fill and the equity point can come in different updates, and an
    # update's series hold only what is new since the last. Collect them as the page does.
    topics, fills, equity, positions = set(), [], [], []
    while not (fills and equity and positions):
        update = await next_update(screen)
        for part in update["updates"]:
            topics.add(part["topic"])
            fills += part.get("fills") or []
            equity += (part.get("equity") or {}).get("equity") or []
            positions = part.get("positions") or positions
    assert topics == {f"engine:{engine.pk}"}
    assert fills[0]["symbol"] == "MSFT"
    assert equity == [100500.0]
    assert positions[0]["quantity"] == 5.0
    await socket.disconnect()
    await screen.disconnect()


async def test_an_unknown_topic_gets_an_error_naming_it(viewer):
    ws = await browser(viewer)
    await ws.receive_json_from(5)
    await ws.send_json_to({"subscribe": ["engine:nope"]})
    error = await ws.receive_json_from(5)
    assert error == {"type": "error", "message": "unknown topic 'engine:nope'", "seq": error["seq"]}
    await ws.disconnect()


async def test_with_no_browser_anywhere_a_flush_reads_and_publishes_nothing(
    engine_and_token, viewer
):
    engine, _ = engine_and_token
    publisher = live.Publisher()

    await publisher.flush({engine.pk})
    assert publisher.published == 0

    screen = await subscribed(viewer, "fleet")  # one browser, any process: the hub is listened to
    await publisher.flush({engine.pk})
    assert publisher.published == 1
    (fleet,) = (await next_update(screen))["updates"]
    assert [row["name"] for row in fleet["rows"]] == [engine.name]
    await screen.disconnect()


async def test_the_audience_is_one_round_trip_and_redis_trouble_publishes_for_every_engine(
    engine_and_token, viewer, monkeypatch
):
    engine, _ = engine_and_token
    publisher = live.Publisher()
    channel = hub.channel_name(live.HUB)
    assert await publisher._audience(channel, {engine.pk, 999}) == (False, set())

    screen = await subscribed(viewer, "fleet")  # the hub is listened to
    await live.watch(engine.pk)  # and the engine's page is open
    assert await publisher._audience(channel, {engine.pk, 999}) == (True, {engine.pk})

    await live._redis().zrem(live.watch_key(), str(engine.pk))  # the page again closed
    await screen.disconnect()

    from redis import asyncio as aioredis

    dead = aioredis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    monkeypatch.setattr(live, "_redis", lambda: dead)
    assert await publisher._audience(channel, {engine.pk, 999}) == (True, {engine.pk, 999})


async def test_many_browsers_of_a_process_share_one_subscription(viewer):
    assert subscribers(live.HUB) == 0
    screens = [await subscribed(viewer, "fleet") for _ in range(3)]

    assert subscribers(live.HUB) == 1
    publish({"type": "live.update", "topic": "fleet", "source": "s9", "seq": 1, "rows": []})
    for screen in screens:
        assert (await next_update(screen))["updates"][0]["rows"] == []
        await screen.disconnect()


async def test_a_steady_stream_is_sent_promptly_but_never_more_than_ten_in_a_second(
    engine_and_token, viewer
):
    engine, _ = engine_and_token
    screen = await subscribed(viewer, "fleet")
    loop = asyncio.get_running_loop()
    row = {"id": engine.pk, "name": "alpha"}
    received: list[tuple[float, float]] = []  # (when, the day_pnl it shows)

    async def read() -> None:
        while not received or received[-1][1] != 25.0:
            update = await next_update(screen)
            received.append((loop.time(), update["updates"][0]["rows"][0]["day_pnl"]))

    reader = asyncio.create_task(read())
    for n in range(1, 26):  # every 30 ms: faster than ten a second
        publish(
            {
                "type": "live.update",
                "topic": "fleet",
                "source": "s2",
                "seq": n,
                "rows": [{**row, "day_pnl": float(n)}],
            }
        )
        await asyncio.sleep(0.03)
    await asyncio.wait_for(reader, 5)

    times = [t for t, _ in received]
    # Any eleven messages span at least a second (a little slack for delivery jitter).
    assert all(later - first >= 0.95 for first, later in zip(times, times[10:], strict=False))
    # Well under the ten-a-second pace at first: nothing was held for a full 100 ms gap.
    assert len([t for t in times if t - times[0] < 0.5]) >= 7  # a strict 100 ms gap: 5
    assert [v for _, v in received] == sorted(v for _, v in received)
    await screen.disconnect()


async def test_a_browser_gone_before_its_update_is_sent_leaves_no_error_on_the_task():
    from uvicorn.protocols.utils import ClientDisconnected

    from dashboard.consumers import LiveConsumer

    async def gone(message: dict) -> None:
        raise ClientDisconnected()

    consumer = LiveConsumer()
    consumer.base_send = gone
    consumer.pending = {"fleet": {"topic": "fleet", "rows": {}}}
    consumer.resync = set()
    consumer.sent_at = deque(maxlen=10)
    task = asyncio.create_task(consumer._flush_soon())
    await asyncio.wait_for(task, 5)
    assert task.exception() is None
