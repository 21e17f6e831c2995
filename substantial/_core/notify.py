"""In-process wake-ups between the client and the agent of one process."""

from __future__ import annotations

import anyio

__all__ = ["Notifier"]


class Notifier:
    """
    In-process wake-ups: a local ``start``/``send`` wakes the local agent at once, and a
    run that changes state wakes local ``result()`` waiters, so nothing in one process
    waits for a poll interval.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, anyio.Event] = {}
        self._kick = anyio.Event()

    def watch(self, run_id: str) -> anyio.Event:
        event = self._watchers.get(run_id)
        if event is None or event.is_set():
            event = self._watchers[run_id] = anyio.Event()
        return event

    def changed(self, run_id: str) -> None:
        event = self._watchers.pop(run_id, None)
        if event is not None:
            event.set()

    def kick(self) -> None:
        self._kick.set()

    async def wait_kick(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._kick.wait()
        if self._kick.is_set():
            self._kick = anyio.Event()
