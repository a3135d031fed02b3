"""Giving memory back once a burst of load is over (the web process).

After a burst, two things kept a web process at its peak memory for good (bench/soak.py):

- Cyclic garbage. The collector's full passes come only after millions of allocations (see
  controlplane.config.asgi), so in a quiet process they never come, and what a burst left in cycles
  stays: each closed WebSocket (its protocol object refers to itself through its parser), every
  exception caught with its traceback's frames and their locals.
- glibc's malloc keeps the memory a burst freed, in each thread's arena, for the next burst: a
  page with one live block in it stays resident, and so does every free page that is not at the
  very top of its heap. ``malloc_trim`` hands the free pages back.

- The database pool's connections opened for the burst. psycopg_pool closes an idle one only
  every ``max_idle`` (10 minutes), one at a time: each still held its libpq buffers (grown to the
  burst's largest result) and its Python objects, which kept whole pymalloc arenas of 1 MB alive
  (an arena goes back only when every object in it is gone).

So a thread of the web process watches the CPU time the process uses: while it is busy (at least
``QUIET_CPU`` of a core over a ``CHECK_S`` interval) it does nothing; in the first quiet interval
after a busy one it closes the pools' idle connections beyond their minimum size, runs one full
collection and trims the heap; and once more ``AGAIN_INTERVALS`` quiet intervals later, for what
the burst's last moments still held at the first tidy (sockets in their closing handshakes, whose
timeouts are seconds long). Under load nothing changes: the event loop is never stopped by this
while engines stream.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

CHECK_S = 10.0
# The share of a core below which an interval counts as quiet: heartbeats and a page view now and
# then, not engines streaming (the collector's own counts say little: under steady load most
# objects die young, and the young collections come no faster than when idle).
QUIET_CPU = 0.05
# The second tidy, this many quiet intervals after the first (if the process stays quiet).
AGAIN_INTERVALS = 2


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def shrink_database_pools() -> int:
    """Close the database pools' idle connections beyond each pool's minimum size; how many.

    Connections in use stay open; a pool that was never opened is not opened here."""
    from django.db import connections

    closed = 0
    for alias in connections:
        # The pools live on the backend's class, one per alias (django.db.backends.postgresql).
        pool = getattr(connections[alias], "_connection_pools", {}).get(alias)
        if pool is not None:
            closed += _shrink_pool(pool)
    return closed


def _shrink_pool(pool: Any) -> int:
    # psycopg_pool's own maintenance (ShrinkPool, every max_idle) calls _shrink_pool: it closes one
    # idle connection if the pool is above min_size and kept an idle one since the last call. Each
    # call here is such a period, so repeated calls close the idle connections one by one.
    shrink = getattr(pool, "_shrink_pool", None)
    if shrink is None:
        return 0
    closed = 0
    idle_calls = 0
    for _ in range(pool.max_size + 1):
        size = pool.get_stats()["pool_size"]
        if size <= pool.min_size or idle_calls == 2:
            break
        shrink()
        if pool.get_stats()["pool_size"] < size:
            closed += 1
            idle_calls = 0
        else:
            idle_calls += 1  # the first call may only start the period, the second one decides
    return closed


class Tidier:
    """Watches the process's CPU time; after busy intervals, tidies once in the first quiet one."""

    def __init__(
        self,
        check_s: float = CHECK_S,
        quiet_cpu: float = QUIET_CPU,
        again_intervals: int = AGAIN_INTERVALS,
    ) -> None:
        self.check_s = check_s
        self.quiet_cpu = quiet_cpu
        self.again_intervals = again_intervals
        self.busy = False  # was busy since the last tidy
        self.again = 0  # quiet intervals left before the second tidy (0: none due)
        self.tidied = 0
        self.connections_closed = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, cpu_s: float) -> bool:
        """One interval's verdict, given the CPU seconds the process used in it; True when it
        tidied."""
        if cpu_s >= self.quiet_cpu * self.check_s:
            self.busy = True
            self.again = 0  # the tidy after this burst replaces it
            return False
        if self.busy:
            self.busy = False
            self.again = self.again_intervals
            self.tidy()
            return True
        if self.again:
            self.again -= 1
            if not self.again:
                self.tidy()
                return True
        return False

    def tidy(self) -> None:
        started = time.perf_counter()
        try:
            closed = shrink_database_pools()
        except Exception:  # a pool that cannot shrink now leaves the rest of the tidy to do
            log.exception("memory: closing the pools' idle connections failed")
            closed = 0
        self.connections_closed += closed
        # After the connections: what they held is garbage for this collection and this trim.
        found = gc.collect()
        if self._trim is not None:
            # Through ctypes the GIL is released: Python threads run on while glibc walks its
            # arenas (each arena's allocations wait for that arena's turn).
            self._trim(0)
        self.tidied += 1
        log.debug(
            "memory tidied: %d idle database connections closed, %d objects collected, %.1f ms",
            closed,
            found,
            (time.perf_counter() - started) * 1000,
        )

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="memory-tidier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        used = time.process_time()  # all the process's threads
        while not self._stop.wait(self.check_s):
            try:
                before, used = used, time.process_time()
                if self.check(used - before):
                    used = time.process_time()  # the tidy's own time is not load
            except Exception:  # never let a tidy failure end the watch
                log.exception("memory: tidying failed")


tidier = Tidier()
