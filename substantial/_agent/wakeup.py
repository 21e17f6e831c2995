"""
One wake-up of one claimed run: read its log, inbox and summary, replay, run what is
due, commit new events as the next log segment, then leave the run's schedule, summary
and inbox as the log now says.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio

from substantial._agent import pausing, telemetry
from substantial._agent.drive import drive
from substantial._agent.gate import Gate, wait_in_line
from substantial._agent.leases import LeaseHolder
from substantial._agent.parts import AgentParts
from substantial._agent.summary import RunSummary, SummaryChange
from substantial._client.client import NewRun
from substantial._core import constants, logs
from substantial._core.status import END_STATUS, TERMINAL_KINDS, RunStatus
from substantial._engine.replay import Execution
from substantial._store import hints
from substantial._store.inbox import Intake
from substantial._store.keys import Route
from substantial._store.runs import ScheduleEntry, StoredLog
from substantial.codec import encode_payload
from substantial.errors import (
    CodecError,
    CorruptLog,
    LeaseLost,
    NonDeterminismError,
    UnknownWorkflow,
)
from substantial.protocol import substantial_pb2 as pb

__all__ = ["WakeUp", "gather"]

log = logging.getLogger("substantial.agent")


class WakeUp:
    """
    One wake-up of one run, under a lease this agent holds (and renews elsewhere).
    :meth:`run` does it all; :meth:`commit` and :meth:`check_inbox` are what the drive
    loop calls while steps run.
    """

    def __init__(
        self,
        parts: AgentParts,
        holder: LeaseHolder,
        entries: list[ScheduleEntry],
        new: NewRun | None = None,
    ) -> None:
        self._parts = parts
        self._new = new  # the run as its start here wrote it: nothing to read
        self._store = parts.store
        self._holder = holder
        self.run_id = holder.lease.run_id
        self._entries = entries
        #: the run's queue and workflow, for its schedule entries (from its log once read)
        self.route = entries[0].route if entries else Route()
        self._consumed = [entry.key for entry in entries]  # the entries it answers
        self._intake = Intake(self._store, self.run_id)
        self._stored = StoredLog([], -1, [], -1)
        self._summary = RunSummary(self._store, self.run_id, None, None, agent=parts.settings.name)
        self._execution: Execution | None = None
        #: the last segment of the log, committed ones included
        self._seq = -1
        #: where each segment ends in the run's events (stored, then committed)
        self._ends: list[int] = []
        #: the segment the log was last compacted at
        self._compacted_at = -1
        #: events this wake-up committed
        self.committed: list[pb.Event] = []
        self.ended = False  # the run ended in this wake-up, with nothing left to wake it
        #: schedule entries answered, for the caller to delete as it releases the lease
        self.leftover: list[str] = []

    @property
    def execution(self) -> Execution:
        """The run's execution (once :meth:`run` has built it)."""
        assert self._execution is not None
        return self._execution

    async def run(self) -> None:
        """Do this wake-up. Errors of the run's own propagate for the caller to hold it off."""
        if not await self._read():
            return
        execution = self._execution = await self._prepare()
        if execution is None:
            return
        self._seq = self._stored.last_seq
        self._ends = list(self._stored.segment_ends)
        self._compacted_at = self._stored.snapshot_seq
        gate = Gate(self._store, execution.workflow, self._stored.events[0], self.route)
        if gate.limited and not await gate.enter():  # no slot: it waits in line, queued
            execution.close()
            retry_ms = round(self._parts.settings.lease_seconds * 1000)
            seq = self._stored.last_seq
            await wait_in_line(
                self._store, self._summary, self.route, seq, self._consumed, retry_ms
            )
            return
        try:
            await self._go(execution)
        finally:
            with anyio.CancelScope(shield=True):
                await gate.leave()

    async def _go(self, execution: Execution) -> None:
        try:
            if not await self._catch_up(execution):
                return
            await self.commit()
            await drive(self, self._parts)
            wake = execution.next_wake_ms() if execution.outcome is None else None
            waiting = execution.waiting_for()
            telemetry.run_ended(execution.outcome)
        finally:
            execution.close()
        await self._wrap_up(execution, wake, waiting)

    async def _read(self) -> bool:
        """Read the log, the inbox and the summary; whether there is a run to go on with."""
        store, run_id = self._store, self.run_id
        try:
            if self._new is not None:
                # Just written here under the lease its start took: nothing to read. An event
                # sent meanwhile waits: its own schedule entry wakes the run again.
                stored, meta, version = self._new.stored, self._new.meta, self._new.version
            else:
                stored, _, (meta, version) = await gather(
                    store.read_log(run_id), self._intake.read(), hints.read_summary(store, run_id)
                )
        except CorruptLog as exc:
            # The log itself cannot be read: park the run with the reason (a failure is
            # final, and only the log can say the run failed); it is retried later.
            meta, version = await hints.read_summary(store, run_id)
            self._summary = self._summary_of(meta, version)
            seq = meta.log_seq if meta is not None else -1  # keep: of a later segment than -1
            await self._park(StoredLog([], seq, [], -1), exc)
            return False
        if not stored.events:
            await _orphan(self._parts, run_id, self._entries)
            return False
        await self._intake.set_aside()
        started = stored.events[0].started
        self.route = Route.of(started.queue, started.workflow, started.priority)
        meta = await hints.trusted_summary(store, run_id, meta, version, stored)
        self._stored = stored
        self._summary = self._summary_of(meta, version)
        return True

    def _summary_of(self, meta: pb.RunMeta | None, version: str | None) -> RunSummary:
        return RunSummary(self._store, self.run_id, meta, version, agent=self._parts.settings.name)

    async def _prepare(self) -> Execution | None:
        """An execution of the run's workflow, or None if the run ended or cannot run here."""
        events = self._stored.events
        if events[-1].WhichOneof("kind") in TERMINAL_KINDS:
            await self._finish(events[-1])
            return None
        request = _terminate_request(self._intake)
        if request is not None:
            await self._terminate(request)
            return None
        if await self._paused():
            return None
        started = events[0].started
        logs.workflow_var.set(started.workflow)
        registry = self._parts.client.registry
        workflow = registry.get(started.workflow)
        if workflow is None:  # woken by an entry for any agent (a pause, an old one):
            # hand the run to the agents that know its workflow, and touch nothing else
            log.debug("%s", UnknownWorkflow(started.workflow, list(registry), self.run_id))
            await self._store.schedule(self.run_id, self._store.clock.now_ms(), "fwd", self.route)
            await self._store.delete(self._consumed)
            return None
        return Execution(self.run_id, workflow, max_payload=self._parts.client.max_payload)

    async def _catch_up(self, execution: Execution) -> bool:
        """Replay the log, merge the inbox, fire due timers; False if the run got parked."""
        try:
            with telemetry.replay_span(len(self._stored.events)):
                execution.replay(self._stored.events)
            now = self._store.clock.now_ms()
            execution.go_live(now)
            execution.merge((entry for _, entry in self._intake.entries), now)
            execution.fire_due_timers(now)
        except (NonDeterminismError, CodecError) as exc:
            await self._park(self._stored, exc)
            return False
        return True

    async def commit(self) -> None:
        """
        Commit the execution's new events as the log's next segment, then compact the
        log if the workflow asked to and enough segments went by.

        :raises LeaseLost: if the lease is gone or another agent wrote that segment
        """
        execution = self.execution
        events = execution.take_new_events()
        if not events:
            return
        if self._holder.lost:
            raise LeaseLost(self.run_id, "lease expired before commit")
        if not await self._store.append(self.run_id, self._seq + 1, events):
            raise LeaseLost(self.run_id, f"segment {self._seq + 1} was written by another agent")
        self._seq += 1
        self.committed.extend(events)
        self._ends.append(len(self._stored.events) + len(self.committed))
        if (
            execution.compact_requested
            and self._seq - self._compacted_at >= constants.COMPACT_EVERY
        ):
            # The compacted history drops events already taken, and with them the ids
            # that keep their inbox entries from being merged again: delete those entries
            # first (they are in the log now), not only at the end of this wake-up, which
            # an agent killed in between never reaches.
            await self._store.delete(self._merged_keys())
            await self._store.write_compacted(self.run_id, self._seq, execution.take_compacted())
            self._compacted_at = self._seq

    async def check_inbox(self) -> None:
        """Merge events sent while this wake-up runs steps: a cancellation, above all."""
        fresh = await self._intake.read()  # none once full: the rest waits (see the end)
        await self._intake.set_aside()
        self.execution.merge((entry for _, entry in fresh), self._store.clock.now_ms())

    async def mark_running(self) -> None:
        """Say ``running`` in the summary (it said pending, sleeping or waiting)."""
        if not self._summary.says(RunStatus.RUNNING):
            await self._summary.write(SummaryChange(RunStatus.RUNNING, self._seq))

    def _merged_keys(self) -> list[str]:
        ids = self.execution.event_ids
        return [key for key, entry in self._intake.entries if entry.id in ids]

    async def _wrap_up(self, execution: Execution, wake: int | None, waiting: list[str]) -> None:
        """Leave the inbox, snapshot, summary and schedule as the log now says."""
        store, run_id = self._store, self.run_id
        merged = self._merged_keys()
        if execution.outcome is not None:
            merged = [key for key, _ in self._intake.entries]  # a finished run drops the rest
            await self._parts.endings.after_end(run_id, [*self._stored.events, *self.committed])
        await store.delete(merged)
        await self._snapshot(execution)
        # The next wake-ups are written before the summary: a summary that says SLEEPING
        # promises a timer entry, so it must already exist when anyone reads it.
        if wake is not None:
            await store.schedule(run_id, wake, route=self.route)
        if execution.outcome is None and (self._intake.more or _terminate_request(self._intake)):
            # events left unmerged
            await store.schedule(run_id, store.clock.now_ms(), "more", self.route)
        published = encode_payload(execution.custom_status) if execution.has_custom_status else None
        await self._summary.record_state(
            self._seq, execution.outcome, wake=wake, waiting=waiting, published=published,
            attributes=execution.attributes,
        )  # fmt: skip
        if execution.outcome is not None:
            # The summary holds the outcome: local result() waiters need not wait for the
            # clean-up below (deleting entries, the lease), nor read the end it committed.
            self._parts.client.notifier.changed(run_id, execution.outcome)
            self.ended = True
        self.leftover = self._consumed  # deleted as the lease is released (both hints)

    async def _snapshot(self, execution: Execution) -> None:
        """Write the whole log as one snapshot each time ``snapshot_every`` segments pass."""
        every, seq, stored = self._parts.settings.snapshot_every, self._seq, self._stored
        if not every or seq // every <= stored.last_seq // every:
            return
        if execution.compactions:
            events = [entry.event for entry in execution.history]
            full = StoredLog(events, seq, [len(events)] * (seq + 1))
        else:
            full = StoredLog([*stored.events, *self.committed], seq, self._ends)
        await self._store.write_snapshot(self.run_id, full)

    async def _finish(self, last: pb.Event) -> None:
        """
        A run whose log already ends: if its summary does not say so yet, the agent that
        ended it died before finishing up, so do what its end sets off and fix the summary.
        Then drop leftovers.
        """
        stored = self._stored
        status = END_STATUS[last.WhichOneof("kind") or ""]
        if not self._summary.says(status):
            await self._parts.endings.after_end(self.run_id, stored.events)
            await self._summary.write(
                SummaryChange(status, stored.last_seq, end=last, stored=stored)
            )
        await self._store.delete([key for key, _ in self._intake.entries] + self._consumed)

    async def _paused(self) -> bool:
        """Carry out pause and resume requests; leave the run if it is paused, and say so."""
        stored, paused, taken = await pausing.settle(
            self._store, self._holder, self._stored, self._intake.entries
        )
        self._stored = stored
        self._intake.entries = [item for item in self._intake.entries if item[0] not in taken]
        await self._store.delete(taken)
        if paused:
            await pausing.leave_paused(
                self._store, self._summary, self.route, stored.last_seq, self._consumed
            )
        return paused

    async def _terminate(self, request: pb.TerminateRequest) -> None:
        """End the run as terminated: one fenced segment, then what any end sets off."""
        stored = self._stored
        event = pb.Event(
            at_ms=self._store.clock.now_ms(), terminated=pb.Terminated(reason=request.reason)
        )
        seq = stored.last_seq + 1
        if self._holder.lost:
            raise LeaseLost(self.run_id, "lease expired before terminating")
        if not await self._store.append(self.run_id, seq, [event]):
            raise LeaseLost(self.run_id, f"segment {seq} was written by another agent")
        log.warning("run %s terminated: %s", self.run_id, request.reason or "no reason given")
        telemetry.run_outcome("terminated")
        events = [*stored.events, event]
        self._stored = StoredLog(events, seq, [*stored.segment_ends, len(events)])
        await self._finish(event)

    async def _park(self, stored: StoredLog, error: Exception) -> None:
        """Park a run that cannot go on here (status ``parked``): retried after ``park_retry``."""
        park_retry = self._parts.settings.park_retry
        log.error("run %s parked, retrying in %gs: %s", self.run_id, park_retry, error)
        telemetry.run_outcome("parked")
        due = self._store.clock.now_ms() + round(park_retry * 1000)
        change = SummaryChange(
            RunStatus.PARKED, stored.last_seq, parked_reason=str(error), stored=stored,
            wake_at_ms=due,
        )  # fmt: skip
        await self._store.schedule(self.run_id, due, "p", self.route)  # first: see reboot.py
        await self._summary.write(change)
        await self._store.delete(self._consumed)


def _terminate_request(intake: Intake) -> pb.TerminateRequest | None:
    entries = (entry for _, entry in intake.entries if entry.HasField("terminate"))
    return next((entry.terminate for entry in entries), None)


async def _orphan(parts: AgentParts, run_id: str, entries: list[ScheduleEntry]) -> None:
    """Schedule entries of a run with no log: a start in progress, or one that died."""
    grace_ms = round(constants.START_GRACE_SECONDS * 1000)
    now = parts.store.clock.now_ms()
    stale = [entry.key for entry in entries if entry.due_ms + grace_ms < now]
    await parts.store.delete(stale)
    if len(stale) < len(entries):
        parts.holdoffs.hold(run_id, constants.POLL_MIN_SECONDS * 5)


async def gather(*awaitables: Any) -> tuple[Any, ...]:
    """
    Await all at once; their results in order. One failure is raised as itself (callers
    catch :class:`CorruptLog` or an outage by type); several, together in an
    :class:`ExceptionGroup`.
    """
    results: list[Any] = [None] * len(awaitables)

    async def one(index: int, awaitable: Any) -> None:
        results[index] = await awaitable

    try:
        async with anyio.create_task_group() as tg:
            for index, awaitable in enumerate(awaitables):
                tg.start_soon(one, index, awaitable)
    except ExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return tuple(results)
