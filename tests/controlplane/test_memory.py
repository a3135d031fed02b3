"""Memory handed back once a burst is over: the web process's tidier (controlplane.memory)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from controlplane import memory


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


def test_a_quiet_process_is_tidied_once_not_every_interval(no_automatic_gc):
    tidier = memory.Tidier()
    assert tidier.check(0.0) is False  # never busy: nothing to hand back
    tidier.check(BUSY_S)
    assert tidier.check(QUIET_S) is True
    assert tidier.check(QUIET_S) is False
    assert tidier.check(0.0) is False
    assert tidier.tidied == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_on_linux_it_hands_glibc_s_free_pages_back():
    assert memory.Tidier()._trim is not None


@pytest.mark.parametrize(("enabled", "expected"), [("1", "True"), ("0", "False")])
def test_the_web_process_watches_its_memory_unless_switched_off(enabled, expected):
    done = subprocess.run(
        [sys.executable, "-c", "import controlplane.asgi; from controlplane.memory import "
         "tidier; t = tidier._thread; print(t is not None and t.is_alive())"],
        env={**os.environ, "CONTROLPLANE_ENV": "demo", "MEMORY_TIDY_ENABLED": enabled},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
