"""In-process wake-ups between the client and the agent of one process."""

from __future__ import annotations

import anyio

from substantial.protocol import substantial_pb2 as pb

__all__ = ["Notifier", "Watch"]


class Watch:
    """
    A wait for a run's next change. When the change was the run's end, committed to its
    log by this process's agent, :attr:`end` holds that terminal event, so a local
    ``result()`` needs no read to learn it.
    """

    __slots__ = ("_event", "end")

    def __init__(self) -> None:
        self._event = anyio.Event()
        #: the run's terminal event, as its log holds it, if the change was its end
        self.end: pb.Event | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def set(self, end: pb.Event | None = None) -> None:
        if end is not None:
            self.end = end
        self._event.set()


class Notifier:
    """
    In-process wake-ups: a local ``start``/``send`` wakes the local agent at once, and a
    run that changes state wakes local ``result()`` waiters, so nothing in one process
    waits for a poll interval.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, Watch] = {}
        self._kick = anyio.Event()

    def watch(self, run_id: str) -> Watch:
        watch = self._watchers.get(run_id)
        if watch is None or watch.is_set():
            watch = self._watchers[run_id] = Watch()
        return watch

    def changed(self, run_id: str, end: pb.Event | None = None) -> None:
        """
        Wake the run's waiters.

        :param end: the run's terminal event, given only once its log holds it
        """
        watch = self._watchers.pop(run_id, None)
        if watch is not None:
            watch.set(end)

    def kick(self) -> None:
        self._kick.set()

    async def wait_kick(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._kick.wait()
        if self._kick.is_set():
            self._kick = anyio.Event()
