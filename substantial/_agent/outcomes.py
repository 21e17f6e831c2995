"""
Where step outcomes wait for the drive loop: put by a step's task or, on the direct
path, by a callback on the event loop; taken by the drive loop, which waits for the
first with a timeout. On asyncio the wait is one bare future and at most one timer
handle (a memory-object stream's receive under a cancel scope cost about a tenth of a
step's CPU); on other loops it is an ``anyio.Event`` under ``move_on_after``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import anyio

from substantial._engine.commands import SaveCommand
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Outcomes", "StepOutcome"]


@dataclass
class StepOutcome:
    """What one attempt of a step came to: a result, or a failure and maybe a retry time."""

    command: SaveCommand
    result: pb.Payload | None
    failure: pb.Failure | None
    retry_at_ms: int | None


class Outcomes:
    """Step outcomes in the order they were put; one drive loop waits on them."""

    def __init__(self) -> None:
        self._items: deque[StepOutcome] = deque()
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio
            self._loop = None
        self._waiter: asyncio.Future[None] | anyio.Event | None = None
        #: a wake() that came while nobody waited: the next wait returns at once
        self._woken = False

    def put(self, outcome: StepOutcome) -> None:
        """Hand over an outcome (from the drive loop's thread: a task or a loop callback)."""
        self._items.append(outcome)
        self.wake()

    def wake(self) -> None:
        """End the drive loop's wait, or if it does not wait, its next one."""
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._woken = True
        elif isinstance(waiter, asyncio.Future):
            if not waiter.done():
                waiter.set_result(None)
        else:
            waiter.set()

    def take(self) -> StepOutcome | None:
        """The oldest outcome not taken yet, if any."""
        return self._items.popleft() if self._items else None

    async def wait(self, timeout: float) -> None:
        """Return once an outcome is there, on a wake-up, or after ``timeout`` seconds."""
        woken, self._woken = self._woken, False
        if self._items or woken or timeout <= 0:
            return
        if self._loop is None:
            event = self._waiter = anyio.Event()
            try:
                with anyio.move_on_after(timeout):
                    await event.wait()
            finally:
                self._waiter = None
            return
        future = self._waiter = self._loop.create_future()
        timer = None if math.isinf(timeout) else self._loop.call_later(timeout, _release, future)
        try:
            await future
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _release(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(None)
