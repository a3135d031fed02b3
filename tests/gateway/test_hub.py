"""Command pushes through the process's one subscription (controlplane.hub), on the real Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import redis
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings

from controlplane import hub
from controlplane.commands import delivery, issuing, lifecycle
from controlplane.models import Command, CommandKind
from engine_sdk import protocol as p
from tests.gateway.test_engine_socket import greeted

pytestmark = pytest.mark.django_db(transaction=True)


def subscribers(name: str) -> int:
    """How many processes listen to the hub ``name`` (PUBSUB NUMSUB)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        channel = hub.channel_name(name)
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


async def next_command(ws: WebsocketCommunicator, within: float = 5.0) -> dict[str, Any]:
    """The next command frame, past the server's heartbeats."""
    async with asyncio.timeout(within):
        while True:
            frame = json.loads(await ws.receive_from(timeout=within))
            if frame["type"] == "command":
                return frame


def hub_connections() -> list[str]:
    """The ids of the hub's connections that are subscribed."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        name = hub.client_name(delivery.HUB)
        db = str(client.connection_pool.connection_kwargs["db"])
        # This test process's own: parallel workers and other servers share the Redis server.
        return [
            c["id"]
            for c in client.client_list()
            if c["name"] == name and c["db"] == db and c["sub"] == "1"
        ]
    finally:
        client.close()


@pytest.mark.asyncio
async def test_a_fleet_push_is_one_subscription_and_each_engine_gets_only_its_own_command(
    make_engine, risk_manager
):
    make = database_sync_to_async(make_engine)
    (alpha, alpha_token), (beta, beta_token) = await make(), await make()
    ws_alpha, _ = await greeted(alpha_token)
    ws_beta, _ = await greeted(beta_token)

    batch = await database_sync_to_async(issuing.command_issue)(
        kind="kill",
        selector="all",
        reason="desk stop",
        actor=risk_manager,
        confirmation="KILL ALL",
    )
    got_alpha, got_beta = await next_command(ws_alpha), await next_command(ws_beta)

    commands = await database_sync_to_async(
        lambda: {c.engine_id: str(c.pk) for c in batch.commands.all()}
    )()
    assert got_alpha["command_id"] == commands[alpha.pk]
    assert got_beta["command_id"] == commands[beta.pk]
    assert (got_alpha["kind"], got_alpha["reason"], got_alpha["issued_by"]) == (
        "kill",
        "desk stop",
        risk_manager.username,
    )
    # Two sockets, one subscriber: the process listens once, whatever its number of engines.
    assert await asyncio.to_thread(subscribers, delivery.HUB) == 1
    delivered = await database_sync_to_async(
        lambda: sorted(Command.objects.filter(batch=batch).values_list("status", flat=True))
    )()
    for _ in range(50):  # marked in the background, after the sends
        if delivered == ["delivered", "delivered"]:
            break
        await asyncio.sleep(0.05)
        delivered = await database_sync_to_async(
            lambda: sorted(Command.objects.filter(batch=batch).values_list("status", flat=True))
        )()
    assert delivered == ["delivered", "delivered"]
    await ws_alpha.disconnect()
    await ws_beta.disconnect()


@pytest.mark.asyncio
async def test_the_subscription_comes_back_after_redis_drops_it(make_engine, risk_manager):
    engine, token = await database_sync_to_async(make_engine)()
    ws, _ = await greeted(token)
    # Only the hub's connection (the channel layer's own would take the consumers down with it).
    [before] = await asyncio.to_thread(hub_connections)
    admin = redis.Redis.from_url(settings.REDIS_URL)
    try:
        admin.client_kill_filter(_id=before)
    finally:
        admin.close()
    for _ in range(100):
        if [c for c in await asyncio.to_thread(hub_connections) if c != before]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the hub did not connect again within 5 s")
    # A new connection means the hub noticed the loss; ready means its SUBSCRIBE is answered.
    await asyncio.wait_for(delivery.commands_hub().ready.wait(), 5)

    # No heartbeat in this test: only the push can bring the command.
    await database_sync_to_async(issuing.command_issue)(
        kind="pause",
        selector=f"engine:{engine.name}",
        reason="after the outage",
        actor=risk_manager,
    )

    assert (await next_command(ws))["kind"] == "pause"
    await ws.disconnect()


class Listener:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.got: list[list[tuple[str, str]]] = []

    async def push_commands(self, entries: list[tuple[str, str]]) -> list[uuid.UUID]:
        if self.fail:
            raise ConnectionResetError("socket gone")
        self.got.append(entries)
        return []


@pytest.mark.asyncio
async def test_a_listener_that_fails_does_not_keep_the_others_or_later_pushes_from_arriving():
    broken, healthy = Listener(fail=True), Listener()
    await delivery.listen(7, broken)
    await delivery.listen(7, healthy)
    try:
        for n in (1, 2):
            entries = {"7": [(str(uuid.uuid4()), f"frame {n}")]}
            assert delivery.push(entries)
            for _ in range(100):
                if len(healthy.got) == n:
                    break
                await asyncio.sleep(0.02)
        assert [entries[0][1] for entries in healthy.got] == ["frame 1", "frame 2"]
    finally:
        delivery.stop_listening(7, broken)
        delivery.stop_listening(7, healthy)


def test_a_delivery_mark_only_touches_the_engine_the_command_belongs_to(make_engine, risk_manager):
    (alpha, _), (beta, _) = make_engine(), make_engine()
    batch = issuing.command_issue(
        kind=CommandKind.PAUSE, selector=f"engine:{alpha.name}", reason="x", actor=risk_manager
    )
    command = batch.commands.get()

    lifecycle.mark_delivered([(beta.pk, command.pk)])  # the wrong engine: nothing changes
    command.refresh_from_db()
    assert (command.status, command.delivered_at, command.delivery_attempts) == ("pending", None, 0)

    lifecycle.mark_delivered([(alpha.pk, command.pk)])
    command.refresh_from_db()
    assert (command.status, command.delivery_attempts) == ("delivered", 1)
    assert command.delivered_at is not None

    # Acknowledged before the mark landed: only the attempt is counted.
    lifecycle.command_answers([(alpha.pk, p.CommandAck(command_id=command.pk))])
    lifecycle.mark_delivered([(alpha.pk, command.pk)])
    command.refresh_from_db()
    assert (command.status, command.delivery_attempts) == ("acknowledged", 2)


def test_a_push_names_each_engine_once_with_all_its_frames() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    frames = delivery.frames_for(
        [(3, first), (3, second)],
        kind="cancel_all",
        params={"symbols": []},
        reason="r",
        issued_by="ops",
        issued_at=p.utc_now(),
        expires_at=None,
    )
    assert list(frames) == ["3"]
    assert [command_id for command_id, _ in frames["3"]] == [str(first), str(second)]
    decoded = p.decode_server_frame(frames["3"][1][1])
    assert isinstance(decoded, p.Command)
    assert (decoded.command_id, decoded.kind, decoded.issued_by) == (second, "cancel_all", "ops")
