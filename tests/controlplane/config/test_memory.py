"""Memory handed back once a burst is over: the web process's tidier (config.memory)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from psycopg_pool import ConnectionPool

from controlplane.config import memory


class Cycle:
    """Garbage only a collection frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    # Only the tidier may collect while a test watches a cycle.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def garbage_cycle() -> weakref.ref[Cycle]:
    cycle = Cycle()
    return weakref.ref(cycle)


BUSY_S = memory.CHECK_S * memory.QUIET_CPU  # CPU seconds in an interval: just busy
QUIET_S = BUSY_S / 2


def test_the_first_quiet_interval_after_a_burst_collects_its_cyclic_garbage(no_automatic_gc):
    tidier = memory.Tidier()
    cycle = garbage_cycle()
    assert tidier.check(BUSY_S) is False
    assert cycle() is not None

    assert tidier.check(QUIET_S) is True

    assert cycle() is None
    assert tidier.tidied == 1


def test_nothing_is_collected_while_the_process_stays_busy(no_automatic_gc):
    tidier = memory.Tidier()
    cycle = garbage_cycle()
    for _ in range(5):
        assert tidier.check(BUSY_S) is False
    assert cycle() is not None
    assert tidier.tidied == 0


def test_a_quiet_process_is_tidied_twice_after_a_burst_not_every_interval(no_automatic_gc):
    tidier = memory.Tidier(again_intervals=2)
    assert tidier.check(0.0) is False  # never busy: nothing to hand back
    tidier.check(BUSY_S)
    assert tidier.check(QUIET_S) is True
    assert tidier.check(QUIET_S) is False
    assert tidier.check(0.0) is True  # the second tidy, for what was still closing at the first
    assert [tidier.check(0.0) for _ in range(5)] == [False] * 5
    assert tidier.tidied == 2


def test_the_second_tidy_collects_what_died_after_the_first(no_automatic_gc):
    tidier = memory.Tidier(again_intervals=2)
    tidier.check(BUSY_S)
    tidier.check(QUIET_S)
    cycle = garbage_cycle()  # e.g. a socket whose closing handshake ended after the first tidy
    tidier.check(QUIET_S)
    assert cycle() is not None

    assert tidier.check(QUIET_S) is True

    assert cycle() is None


def test_a_burst_before_the_second_tidy_puts_it_off_to_after_the_burst(no_automatic_gc):
    tidier = memory.Tidier(again_intervals=2)
    tidier.check(BUSY_S)
    assert tidier.check(QUIET_S) is True
    assert tidier.check(BUSY_S) is False
    assert tidier.check(QUIET_S) is True  # the first quiet interval after the new burst
    assert tidier.check(QUIET_S) is False
    assert tidier.check(QUIET_S) is True
    assert tidier.tidied == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_on_linux_it_hands_glibc_s_free_pages_back():
    assert memory.Tidier()._trim is not None


@pytest.mark.parametrize(("enabled", "expected"), [("1", "True"), ("0", "False")])
def test_the_web_process_watches_its_memory_unless_switched_off(enabled, expected):
    script = (
        "import controlplane.config.asgi\n"
        "from controlplane.config.memory import tidier\n"
        "print(tidier._thread is not None and tidier._thread.is_alive())"
    )
    env = {**os.environ, "CONTROLPLANE_ENV": "demo", "MEMORY_TIDY_ENABLED": enabled}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


# --- the database pool's idle connections -----------------------------------------------------


@pytest.fixture
def pool() -> Iterator[ConnectionPool]:
    # The web process's pool (settings.DB_POOL_*), on the test database; off in tests by default.
    params = connection.get_connection_params()
    kwargs = {**params, "autocommit": True, "application_name": "tidier-test"}
    pool = ConnectionPool(kwargs=kwargs, min_size=1, max_size=5, open=False, name="tidier-test")
    pool.open(wait=True)
    try:
        yield pool
    finally:
        pool.close()


def backends(pool: ConnectionPool) -> int:
    """The pool's connections as the server counts them."""
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [pool.name],
        ).fetchone()[0]


def burst(pool: ConnectionPool, n: int) -> list[psycopg.Connection[Any]]:
    """n connections in use at once, as a burst's threads hold them."""
    return [pool.getconn() for _ in range(n)]


@pytest.mark.django_db
def test_the_pool_s_idle_connections_beyond_its_minimum_are_closed(pool):
    conns = burst(pool, 5)
    for conn in conns:
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 5
    assert backends(pool) == 5

    assert memory._shrink_pool(pool) == 4

    assert pool.get_stats()["pool_size"] == 1
    assert sum(not conn.closed for conn in conns) == 1
    assert backends(pool) == 1
    with pool.connection() as conn:  # what is left still serves
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.django_db
def test_connections_in_use_stay_open(pool):
    conns = burst(pool, 4)
    for conn in conns[2:]:
        pool.putconn(conn)

    assert memory._shrink_pool(pool) == 2

    assert not conns[0].closed and not conns[1].closed
    assert conns[0].execute("SELECT 1").fetchone() == (1,)
    for conn in conns[:2]:
        pool.putconn(conn)
    assert pool.get_stats()["pool_size"] == 2


@pytest.mark.django_db
def test_the_tidy_closes_the_web_process_s_idle_pool_connections(pool, monkeypatch):
    wrapper = connections[DEFAULT_DB_ALIAS]
    monkeypatch.setitem(type(wrapper)._connection_pools, DEFAULT_DB_ALIAS, pool)
    for conn in burst(pool, 3):
        pool.putconn(conn)
    tidier = memory.Tidier()
    tidier.check(BUSY_S)

    assert tidier.check(QUIET_S) is True

    assert tidier.connections_closed == 2
    assert pool.get_stats()["pool_size"] == 1
    assert backends(pool) == 1
