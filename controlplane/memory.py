"""Giving memory back once a burst of load is over (the web process).

After a burst, two things kept a web process at its peak memory for good (bench/soak.py):

- Cyclic garbage. The collector's full passes come only after millions of allocations (see
  controlplane.asgi), so in a quiet process they never come, and what a burst left in cycles
  stays: each closed WebSocket (its protocol object refers to itself through its parser), every
  exception caught with its traceback's frames and their locals.
- glibc's malloc keeps the memory a burst freed, in each thread's arena, for the next burst: a
  page with one live block in it stays resident, and so does every free page that is not at the
  very top of its heap. ``malloc_trim`` hands the free pages back.

So a thread of the web process watches the CPU time the process uses: while it is busy (at least
``QUIET_CPU`` of a core over a ``CHECK_S`` interval) it does nothing; in the first quiet interval
after a busy one it runs one full collection and trims the heap. Under load nothing changes: the
event loop is never stopped by this while engines stream.
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


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Tidier:
    """Watches the process's CPU time; after busy intervals, tidies once in the first quiet one."""

    def __init__(self, check_s: float = CHECK_S, quiet_cpu: float = QUIET_CPU) -> None:
        self.check_s = check_s
        self.quiet_cpu = quiet_cpu
        self.busy = False  # was busy since the last tidy
        self.tidied = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self, cpu_s: float) -> bool:
        """One interval's verdict, given the CPU seconds the process used in it; True when it
        tidied."""
        if cpu_s >= self.quiet_cpu * self.check_s:
            self.busy = True
            return False
        if not self.busy:
            return False
        self.busy = False
        self.tidy()
        return True

    def tidy(self) -> None:
        started = time.perf_counter()
        found = gc.collect()
        if self._trim is not None:
            # Through ctypes the GIL is released: Python threads run on while glibc walks its
            # arenas (each arena's allocations wait for that arena's turn).
            self._trim(0)
        self.tidied += 1
        log.debug("memory tidied: %d objects collected, %.1f ms", found,
                  (time.perf_counter() - started) * 1000)  # fmt: skip

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
