"""An engine demoted out of the stages that send real orders while connected in live mode: its
socket is closed at once with 4403, as a refused live hello, not left trading until its next
hello. A socket not in live mode stays open."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from controlplane import stages
from engine_sdk import protocol as p
from tests.gateway.test_engine_socket import closed_with, hello_frame, open_socket

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]


async def test_a_live_socket_is_closed_with_4403_when_its_engine_is_demoted(make_engine):
    engine, token = await database_sync_to_async(make_engine)("livey", mode="live")
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="live"))
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome" and welcome["stage"] == "full"
    await database_sync_to_async(stages.stage_set)(
        engine=engine, to_stage="paper", reason="red line: demoted", actor_label="red line #1"
    )
    assert await closed_with(ws) == p.CLOSE_STAGE_FORBIDS == 4403


async def test_a_shadow_socket_stays_open_when_its_engine_is_demoted(make_engine):
    engine, token = await database_sync_to_async(make_engine)("shadowy", stage="shadow")
    ws = await open_socket(token)
    await ws.send_to(text_data=hello_frame(mode="shadow"))
    welcome = await ws.receive_json_from(timeout=5)
    assert welcome["type"] == "welcome"
    await database_sync_to_async(stages.stage_set)(
        engine=engine, to_stage="paper", reason="red line: demoted", actor_label="red line #1"
    )
    # Told its new stage (set_limits), not closed.
    told = await ws.receive_json_from(timeout=5)
    assert told["type"] == "command" and told["kind"] == "set_limits", told
    assert told["params"]["stage"] == "paper"
    await ws.disconnect()
