"""The client's configuration (engine_sdk/config.py): frozen, documented, validated, used."""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from engine_sdk import protocol as p
from engine_sdk.client import ClientConfig, EngineClient
from tests.sdk.conftest import HELLO, TOKEN, FakeControlPlane

MakeClient = Callable[..., EngineClient]
SDK_DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


def test_the_defaults_are_those_of_a_live_engine() -> None:
    config = ClientConfig()
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    assert values == {
        "batch_max_events": 1000,
        "batch_interval_s": 0.02,
        "heartbeat_interval_s": 5.0,
        "dead_man_after_s": 15.0,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 10.0,
        "max_unacked_events": 200_000,
        "welcome_timeout_s": 10.0,
        "fsync": True,
        "connect_kwargs": {},
        "rng": None,
    }


def test_a_config_cannot_change_once_made() -> None:
    options = {"proxy": None}
    config = ClientConfig(connect_kwargs=options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.fsync = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.connect_kwargs["ssl"] = True  # type: ignore[index]
    # A copy: changing the caller's dict afterwards does not reach the client either.
    options["ssl"] = True
    assert dict(config.connect_kwargs) == {"proxy": None}


@pytest.mark.parametrize("size", [0, p.MAX_EVENTS_PER_FRAME + 1])
def test_a_batch_size_outside_the_protocol_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="batch_max_events"):
        ClientConfig(batch_max_events=size)


def test_configs_compare_by_their_tunables_not_their_random_source() -> None:
    assert ClientConfig(rng=random.Random(1)) == ClientConfig(rng=random.Random(2))
    assert ClientConfig(fsync=False) != ClientConfig()


def test_every_tunable_is_documented_in_sdk_md() -> None:
    text = SDK_DOC.read_text()
    section = text.split("### `ClientConfig", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)`", section, re.MULTILINE))
    assert documented == {f.name for f in dataclasses.fields(ClientConfig)}


def test_the_client_keeps_the_config_it_was_given_and_its_parts_follow_it(
    tmp_path: Path,
) -> None:
    config = ClientConfig(max_unacked_events=7, batch_max_events=3, fsync=False)
    url = "ws://127.0.0.1:9/"
    client = EngineClient(url, TOKEN, journal_dir=tmp_path, hello=HELLO, config=config)
    assert client.config is config
    assert (client.writer.max_unacked_events, client.writer.batch_max_events) == (7, 3)
    assert client.heartbeat_interval_s == config.heartbeat_interval_s
    default = EngineClient(url, TOKEN, journal_dir=tmp_path / "d", hello=HELLO)
    assert default.config == ClientConfig()


@pytest.mark.asyncio
async def test_the_welcome_sets_the_heartbeat_interval_and_the_config_stays_as_it_was(
    control_plane: FakeControlPlane, make_client: MakeClient
) -> None:
    control_plane.heartbeat_interval_s = 0.05
    client = make_client(control_plane.url, heartbeat_interval_s=30)
    await client.start()
    await client.wait_connected(timeout=5)
    assert client.heartbeat_interval_s == 0.05
    assert client.config.heartbeat_interval_s == 30
    await client.close()
