"""
The concurrency gate of a wake-up: a run of a workflow with ``concurrency`` or
``concurrency_per_key`` takes a slot of each limit before its code runs, and gives them
back at the end of the wake-up; when none is free it joins the waiting line (status
``queued``) and is woken when a slot frees, in the order runs were started.
"""

from __future__ import annotations

import logging

from substantial._agent.summary import RunSummary, SummaryChange
from substantial._core.status import STATUS_FROM_PB, RunStatus
from substantial._engine.workflow import Workflow
from substantial._store import hints, slots
from substantial._store.keys import Route
from substantial._store.runs import RunStore
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Gate", "wait_in_line"]

log = logging.getLogger("substantial.agent")


class Gate:
    """
    :param started: the run's start event (its time orders the waiting line)
    """

    def __init__(
        self, store: RunStore, workflow: Workflow[object], started: pb.Event, route: Route
    ) -> None:
        self._store = store
        self._route = route
        self.run_id = started.started.run_id
        self._created_ms = started.at_ms
        self._limits: list[tuple[str, int]] = []
        if workflow.concurrency is not None:
            self._limits.append((slots.group_of(route.mark), workflow.concurrency))
        key = started.started.concurrency_key
        if workflow.concurrency_per_key is not None and key:
            self._limits.append((slots.group_of(route.mark, key), workflow.concurrency_per_key))
        self._held: list[tuple[str, slots.Slot]] = []

    @property
    def limited(self) -> bool:
        return bool(self._limits)

    async def enter(self) -> bool:
        """Take a slot of every limit; False (holding none) if the run must wait its turn."""
        for group, limit in self._limits:
            slot = await self._enter(group, limit)
            if slot is None:
                await self.leave()
                return False
            self._held.append((group, slot))
        return True

    async def _enter(self, group: str, limit: int) -> slots.Slot | None:
        store, mine = self._store, slots.line_key(group, self._created_ms, self.run_id)
        first = await self._head(group, mine)
        if first is None or first >= mine:  # nobody waits ahead of this run
            slot = await slots.take(store, group, limit, self.run_id)
            if slot is not None:
                if first == mine:
                    await self._left_line(group, mine)
                return slot
        await slots.join_line(store, mine)
        # A slot freed between the look and the join woke nobody: look once more.
        if await slots.head(store, group) == mine:
            slot = await slots.take(store, group, limit, self.run_id)
            if slot is not None:
                await self._left_line(group, mine)
                return slot
        return None

    async def _head(self, group: str, mine: str) -> str | None:
        """
        The first in ``group``'s line. One ahead of this run that no longer waits (it
        ended, was paused or terminated while in line, or is gone) is taken out first.
        """
        for _ in range(8):
            first = await slots.head(self._store, group)
            if first is None or first >= mine or not await self._gone(slots.run_of(first)):
                return first
            await slots.leave_line(self._store, first)
        return first

    async def _gone(self, run_id: str) -> bool:
        meta, _ = await hints.read_summary(self._store, run_id)
        if meta is None:
            try:
                return not (await self._store.read_log(run_id)).events
            except CorruptLog:
                return False  # not known to be gone: it keeps its place
        status = STATUS_FROM_PB.get(meta.status)
        return status is not None and (status.finished or status is RunStatus.PAUSED)

    async def _left_line(self, group: str, mine: str) -> None:
        """Out of the line with a slot: the next in line may find another slot free."""
        await slots.leave_line(self._store, mine)
        await self._wake_next(group)

    async def leave(self) -> None:
        """Give back the slots held, and wake the first waiting run of each limit."""
        held, self._held = self._held, []
        for group, slot in held:
            await slots.release(self._store, slot)
            await self._wake_next(group)

    async def _wake_next(self, group: str) -> None:
        first = await slots.head(self._store, group)
        if first is not None:
            now = self._store.clock.now_ms()
            await self._store.schedule(slots.run_of(first), now, "slot", self._route)


async def wait_in_line(
    store: RunStore, summary: RunSummary, route: Route, seq: int, consumed: list[str], retry_ms: int
) -> None:
    """
    Leave a run that found no free slot: status ``queued``; it is woken when a slot
    frees, and looks again after ``retry_ms`` in any case (a slot whose agent died frees
    itself without a word).
    """
    # The entry first: the summary says the run is taken care of (_agent/reboot.py)
    await store.schedule(summary.run_id, store.clock.now_ms() + retry_ms, "q", route)
    if not summary.says(RunStatus.QUEUED):
        log.info("run %s queued", summary.run_id)
        await summary.write(SummaryChange(RunStatus.QUEUED, seq))
    await store.delete(consumed)
