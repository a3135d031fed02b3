"""Values that belong to one event loop: an asyncio Redis connection, a subscription, a writer
task. The web process has one loop; the tests run several one after another."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """The running loop's own value, made by ``make`` on first use.

    Kept by the loop itself, not its id(): a new loop (each test has one) can get the id of one
    that is gone, and was handed that loop's Redis client, whose every call then failed.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            value = self._values[loop] = self._make()
        return value
