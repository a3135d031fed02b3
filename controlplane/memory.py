"""Giving memory back once a burst of load is over (the web process).

After a burst, two things kept a web process at its peak memory for good (bench/soak.py):

- Cyclic garbage. The collector's full passes come only after millions of allocations (see
  controlplane.asgi), so in a quiet process they never come, and what a burst left in cycles
  stays: each closed WebSocket (its protocol object refers to itself through its parser), every
  exception caught with its traceback's frames and their locals.
- glibc's malloc keeps the memory a burst freed, in each thread's arena, for the next burst: a
  page with one live block in it stays resident, and so does every free page that is not at the
  very top of its heap. ``malloc_trim`` hands the free pages back.

So a thread of the web process watches the collector: while the process is busy (many young
collections in a ``CHECK_S`` interval) it does nothing; in the first quiet interval after a busy
one it runs one full collection and trims the heap. Under load nothing changes: the event loop
is never stopped by this while engines stream.
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
# Young collections in CHECK_S below which the process counts as quiet. A young collection comes
# every 20,000 allocations (controlplane.asgi): a handful in ten seconds is a few heartbeats and
# page views, not a burst.
QUIET_BELOW = 5


def _malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


class Tidier:
    """Counts young collections; after busy intervals, tidies once in the first quiet one."""

    def __init__(self, check_s: float = CHECK_S, quiet_below: int = QUIET_BELOW) -> None:
        self.check_s = check_s
        self.quiet_below = quiet_below
        self.collections = 0  # young collections since the last check
        self.busy = False  # was busy since the last tidy
        self.tidied = 0
        self._trim = _malloc_trim()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        # Called by the collector with the GIL held: a counter, nothing more.
        if phase == "start" and info.get("generation") == 0:
            self.collections += 1

    def check(self) -> bool:
        """One interval's verdict; True when it tidied."""
        collections, self.collections = self.collections, 0
        if collections >= self.quiet_below:
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
        gc.callbacks.append(self.on_gc)
        self._thread = threading.Thread(target=self._run, name="memory-tidier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.on_gc in gc.callbacks:
            gc.callbacks.remove(self.on_gc)

    def _run(self) -> None:
        while not self._stop.wait(self.check_s):
            try:
                self.check()
            except Exception:  # never let a tidy failure end the watch
                log.exception("memory: tidying failed")


tidier = Tidier()
