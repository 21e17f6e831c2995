"""The poller: read the schedule for due runs, claim them by lease, hand them on."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import random
from collections.abc import KeysView
from typing import Any

import anyio
from anyio.abc import TaskGroup

from substantial._agent import ticker
from substantial._agent.health import describe
from substantial._agent.parts import AgentParts
from substantial._agent.processor import RunProcessor
from substantial._agent.queues import ServedQueues
from substantial._agent.reboot import recover_after_reboot
from substantial._client.client import NewRun
from substantial._core import constants
from substantial._core.clock import VirtualClock
from substantial._store.runs import Lease, Route, ScheduleEntry
from substantial.errors import BackendRefused, BackendUnavailable

__all__ = ["Poller"]

log = logging.getLogger("substantial.agent")


class Poller:
    """
    Polls the schedule with a back-off while idle (a local start or send wakes it at
    once), claims due runs up to the agent's free capacity and starts a wake-up of each.
    While it polls, it is also the :class:`~substantial._client.client.LocalAgent` that
    takes runs started in this process straight from their start.
    """

    def __init__(self, parts: AgentParts, processor: RunProcessor, queues: ServedQueues) -> None:
        self._parts = parts
        self._store = parts.store
        self._processor = processor
        self.queues = queues
        self._turn = 0
        self._work: TaskGroup | None = None
        self._context = contextvars.Context()
        #: queues polled since the agent started, and those found paused (or paused here)
        self._seen: set[str] = set()
        self._paused = parts.client.paused_queues
        # any virtual clock: tests move it (jumps, advance_to) past the lease's expiry
        self._virtual = isinstance(self._store.clock, VirtualClock)

    async def loop(self, work: TaskGroup) -> None:
        """Poll until cancelled, starting wake-ups in ``work``. Store trouble never ends it."""
        self._work = work
        # a run handed over by a start runs in the agent's context, as one it claims
        # does, not in the starting task's (its span, its context variables)
        self._context = contextvars.copy_context()
        self._seen.clear()  # a pause made while the agent was stopped: seen at its polls
        self._parts.client.local_agent = self
        work.start_soon(recover_after_reboot, self._store, self._parts.client.notifier.kick)
        try:
            await self._loop()
        finally:
            self._parts.client.local_agent = None
            self._work = None

    async def _loop(self) -> None:
        parts = self._parts
        assert self._work is not None
        work = self._work
        delay = constants.POLL_MIN_SECONDS
        task = _asyncio_task()
        while True:
            if task is not None and task.cancelling():
                # A cancel that a library swallowed (asyncio.wait_for in redis-py on 3.11
                # drops one that races its inner task): the agent.cancel() must still stop us.
                raise asyncio.CancelledError
            try:
                claimed, next_timer_ms = await self.claim_due(work)
            except Exception as exc:  # store-wide: logged once, retried; the agent goes on
                parts.trouble.failed(exc)
                claimed, next_timer_ms = 0, None
                delay = max(delay, constants.OUTAGE_RETRY_MIN_SECONDS)
            else:
                parts.trouble.recovered()
            next_due_ms = self._with_holdoffs(next_timer_ms)
            # Idle, a virtual clock may jump to the next timer, but never to the end of a
            # hold-off: hold-offs run on the event loop's clock, which no jump moves.
            idle = not claimed and not self._processor.active
            jump = idle and next_timer_ms is not None and next_timer_ms == next_due_ms
            if jump and next_timer_ms is not None and self._store.clock.skip_to(next_timer_ms):
                continue
            poll_max = parts.settings.poll_max
            delay = constants.POLL_MIN_SECONDS if claimed else min(delay * 2, poll_max)
            wait = delay * random.uniform(0.5, 1.0) if parts.trouble.active else delay
            if next_due_ms is not None:
                wait = min(wait, max(0.0, (next_due_ms - self._store.clock.now_ms()) / 1000))
            await parts.client.notifier.wait_kick(wait)

    def _with_holdoffs(self, next_due_ms: int | None) -> int | None:
        """The next time to poll: the next timer, or the end of the first hold-off."""
        clock = anyio.current_time()
        held = self._parts.holdoffs.current(clock)
        if not held:
            return next_due_ms
        soonest = self._store.clock.now_ms() + round((min(held.values()) - clock) * 1000)
        return soonest if next_due_ms is None else min(next_due_ms, soonest)

    async def claim_due(self, work: TaskGroup) -> tuple[int, int | None]:
        """
        Lease due runs, up to this agent's free capacity, and start working on them.

        :return: how many runs were claimed, and when the next not-yet-due entry is due
        """
        now = self._store.clock.now_ms()
        clock = anyio.current_time()
        held = self._parts.holdoffs.current(clock)
        claimed = 0
        next_due: int | None = None
        queues = self.queues.names
        self._turn += 1  # each poll starts at the next queue: none takes all the capacity
        start = self._turn % len(queues) if queues else 0
        for queue in queues[start:] + queues[:start]:
            wanted, queue_next = await self._due_runs(now, held.keys(), queue)
            if queue_next is not None:
                next_due = queue_next if next_due is None else min(next_due, queue_next)
            for run_id, entries in wanted.items():
                if await self._claim(run_id, entries, clock, work):
                    claimed += 1
        return claimed, next_due

    async def _due_runs(
        self, now: int, held: KeysView[str], queue: str
    ) -> tuple[dict[str, list[ScheduleEntry]], int | None]:
        """Due runs to claim (up to free capacity) with their entries; the next due time."""
        concurrency = self._parts.settings.concurrency
        active = self._processor.active
        skip = active | self._parts.client.starting | held
        wanted: dict[str, list[ScheduleEntry]] = {}
        after = None
        next_due = None
        for _ in range(4):
            free = concurrency - len(active) - len(wanted)
            if free <= 0:
                break
            # The first page is small: an idle poll reads one page whatever sleeps.
            page = constants.POLL_FIRST_PAGE if after is None else max(2 * free, 32)
            entries, next_due, more = await self._store.due(
                now,
                after=after,
                limit=page,
                queue=queue,
                horizon_ms=self._horizon_ms(),
                paused=self._paused,
            )
            self._seen.add(queue)
            for entry in sorted(entries, key=_by_priority):  # stable: then earliest due
                name = ticker.TICKING + entry.run_id if entry.tick else entry.run_id
                if name in skip or not self.queues.knows(entry.route):
                    continue
                if name in wanted or len(wanted) < free:
                    wanted.setdefault(name, []).append(entry)
            if not more:
                break
            after = entries[-1].key if entries else after
        return wanted, next_due

    async def _claim(
        self, run_id: str, entries: list[ScheduleEntry], clock: float, work: TaskGroup
    ) -> bool:
        """Take the run's lease and start its wake-up in ``work``; whether it was taken."""
        parts, active = self._parts, self._processor.active
        if run_id in active:  # a start in this process took it meanwhile (reserve)
            return False
        active.add(run_id)  # before the await: reserve() must see it is being claimed
        try:
            lease = await self._store.acquire(
                run_id, parts.settings.name, round(parts.settings.lease_seconds * 1000)
            )
        except BaseException as exc:
            active.discard(run_id)
            if isinstance(exc, BackendUnavailable | BackendRefused) or not isinstance(
                exc, Exception
            ):
                raise  # the store's trouble (or a cancellation), not this run's
            # this run's records: hold it off, go on with others
            tries, wait = parts.holdoffs.run_errors.failed(run_id)
            log.error(
                "agent %s: cannot claim run %s (failure %d in a row), holding it off "
                "for %.1fs: %s", parts.settings.name, run_id, tries, wait, describe(exc),
            )  # fmt: skip
            parts.holdoffs.hold(run_id, wait, since=clock)
            return False
        if lease is None:
            active.discard(run_id)
            parts.holdoffs.hold(run_id, constants.POLL_MIN_SECONDS * 10, since=clock)
            return False
        if entries[0].tick:  # a cron schedule's tick (its name starts with ticker.TICKING)
            work.start_soon(self._tick, lease, entries, name=run_id)
            return True
        work.start_soon(self._processor.process, lease, entries, name=f"run {run_id}")
        return True

    async def _tick(self, lease: Lease, entries: list[ScheduleEntry]) -> None:
        """Fire a schedule's tick under a lease, which keeps other agents from repeating it."""
        try:
            await ticker.fire(self._parts.client, entries)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await self._store.release(lease)
            self._processor.active.discard(lease.run_id)
            self._parts.client.notifier.kick()

    # ---- runs started in this process (the client's LocalAgent) ----

    @property
    def owner(self) -> str:
        """The name this agent takes leases in."""
        return self._parts.settings.name

    @property
    def lease_ms(self) -> int:
        """How long this agent's leases last (ms)."""
        return round(self._parts.settings.lease_seconds * 1000)

    def reserve(self, run_id: str, route: Route) -> bool:
        """
        Keep a place for a run being started here, if this agent would claim it at its
        next poll: it is serving, has room, serves the run's queue and workflow, and saw
        the queue not paused at its last poll (as other agents see a pause). Not on a
        clock that idle agents jump ahead (tests): others would jump to the entry's due
        time, the lease's expiry, and take the run over.
        """
        active = self._processor.active
        if (
            self._work is None
            or self._virtual
            or run_id in active
            or len(active) >= self._parts.settings.concurrency
            or route.queue not in self._seen
            or route.queue in self._paused
            or route.queue not in self.queues.names
            or not route.mark
            or not self.queues.knows(route)
            or run_id in self._parts.holdoffs.current(anyio.current_time())
        ):
            return False
        active.add(run_id)
        return True

    def hand(self, lease: Lease, entry: ScheduleEntry, new: NewRun | None) -> bool:
        """Start the wake-up of a run reserved, leased at its start; False if stopped."""
        if self._work is None:
            return False
        wake = functools.partial(self._processor.process, lease, [entry], new)
        self._context.run(self._work.start_soon, wake, name=f"run {lease.run_id}")
        return True

    def unreserve(self, run_id: str) -> None:
        """Give up the place kept for a run."""
        self._processor.active.discard(run_id)

    def _horizon_ms(self) -> int | None:
        """
        How far past now a poll reads the schedule: past the longest wait between idle
        polls, so it sees every entry due before the next poll. A clock that jumps to the
        next timer must see it however far: no bound.
        """
        if self._store.clock.jumps:
            return None
        return round(max(self._parts.settings.poll_max, constants.POLL_MAX_SECONDS) * 2000)


def _by_priority(entry: ScheduleEntry) -> int:
    return -entry.route.priority


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The current asyncio task, or None on another event loop (trio)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
