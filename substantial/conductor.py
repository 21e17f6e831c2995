"""
The agent: poll the schedule, lease a due run, replay it, execute new work, commit,
schedule its next wake-up, release. Any number of agents share one backend.

Clocks. Agents read their own wall clock (:func:`substantial.runs.now_ms`) for two
things only: whether a lease has expired, and whether a timer or schedule entry is due.
An agent whose clock is ``s`` ahead of another's sees that agent's leases expire ``s``
early and takes its runs over, so a step in flight may run again (at-least-once, as
after a crash); it also fires timers up to ``s`` early. An agent ``s`` behind sees leases
and timers ``s`` late, so work waits up to ``s`` longer, and its own leases look
expired to the others ``s`` early. Neither can corrupt a log or lose a run: every log
write is create-if-absent of the next segment number, which no clock decides, so a stale
agent's commit fails and it drops the run (``tests/test_agents.py`` runs agents at
-3, 0 and +3 lease lengths). Keep skew well under the lease length to avoid the repeats.
A lease expiring more than ``LEASE_MAX_AHEAD`` (5) lease lengths past a reader's clock
is treated as expired, so an agent that died with its clock a day ahead holds its runs
for one lease length, not a day; skew up to 4 lease lengths changes nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import math
import os
import random
import socket
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from substantial import constants, hints, logs, telemetry
from substantial.backends.base import Backend
from substantial.codec import encode_payload
from substantial.commands import ChildCommand, SaveCommand, failure_from_exception
from substantial.errors import (
    BackendRefused,
    BackendUnavailable,
    CodecError,
    CorruptLog,
    LeaseLost,
    NonDeterminismError,
    RunNotFound,
    RunReverted,
    UnknownWorkflow,
)
from substantial.handle import STATUS_TO_PB, Handle, Notifier, RunStatus
from substantial.health import RunTroubles, StoreTrouble, describe, mark_held
from substantial.inbox import Intake
from substantial.protocol import substantial_pb2 as pb
from substantial.replay import TERMINAL_KINDS, Execution, open_children
from substantial.runids import is_stored_run_id
from substantial.runs import (
    Clock,
    Lease,
    RunStore,
    ScheduleEntry,
    StoredLog,
    check_run_id,
)
from substantial.step_threads import DaemonThreadPool
from substantial.workflow import Workflow

__all__ = ["Conductor"]

log = logging.getLogger("substantial.agent")
R = TypeVar("R")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


@dataclass
class _StepOutcome:
    command: SaveCommand
    result: pb.Payload | None
    failure: pb.Failure | None
    retry_at_ms: int | None


class Conductor:
    """
    Registers workflows, starts runs, and runs the agent that executes them.

    ::

        conductor = Conductor(FSBackend("./logs"))
        conductor.register(example)
        agent = conductor.run()                 # the agent, as an asyncio task
        handle = await conductor.start(example, 21)
        print(await handle.result())
        agent.cancel(); await agent

    or, with structured concurrency, ``async with Conductor(backend) as conductor:``
    runs the agent for the duration of the block.

    :param backend: a :class:`~substantial.backends.Backend`, or a URL for
        :func:`~substantial.backends.from_url`
    :param concurrency: how many runs this agent works on at once
    :param lease: how long this agent's claim on a run lasts unless renewed, in seconds
    :param park_retry: how long a run that no longer replays waits before a retry
    :param shutdown_grace: how long stopping the agent waits for in-flight steps
    :param name: this agent's name in leases and logs (default: host and pid)
    :param snapshot_every: compact a run's log into one snapshot object every this many
        segments, so resuming a long run does not read every segment (0: never)
    :param clock: where the agent reads the time; ``substantial.testing`` passes a
        virtual clock that jumps to the next timer when the agent is idle
    :param max_payload: the most bytes one encoded value may take: a run's arguments, an
        event's value sent through this conductor's handles, a step's or a run's result,
        a status; a larger one raises :class:`CodecError` before anything is written
    """

    def __init__(
        self,
        backend: Backend | str,
        *,
        concurrency: int = constants.CONCURRENCY,
        lease: float | timedelta = constants.LEASE_SECONDS,
        park_retry: float | timedelta = constants.PARK_RETRY_SECONDS,
        shutdown_grace: float | timedelta = constants.SHUTDOWN_GRACE_SECONDS,
        poll_interval: float | timedelta = constants.POLL_MAX_SECONDS,
        name: str | None = None,
        clock: Clock | None = None,
        snapshot_every: int = constants.SNAPSHOT_EVERY,
        max_payload: int = constants.MAX_PAYLOAD_BYTES,
    ) -> None:
        if isinstance(backend, str):
            from substantial.backends import from_url

            backend = from_url(backend)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_payload < 1:
            raise ValueError(f"max_payload must be at least 1 byte, got {max_payload}")
        self.max_payload = max_payload
        self.backend = backend
        self.store = RunStore(backend, clock)
        self._now = self.store.clock.now_ms
        self.concurrency = concurrency
        self.snapshot_every = snapshot_every
        self.lease_seconds = _seconds(lease)
        self.park_retry = _seconds(park_retry)
        self.shutdown_grace = _seconds(shutdown_grace)
        self.poll_max = max(_seconds(poll_interval), constants.POLL_MIN_SECONDS)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._workflows: dict[str, Workflow[Any]] = {}
        self._notifier = Notifier()
        self._active: set[str] = set()
        self._run_scopes: dict[str, anyio.CancelScope] = {}
        self._hold_off: dict[str, float] = {}
        self._starting: set[str] = set()
        self._serving = False
        self._store_trouble = StoreTrouble(self.name, log)
        # failed wake-ups in a row per run: outages, and errors of the run's own
        self._outage_retries = RunTroubles(
            constants.OUTAGE_RETRY_MIN_SECONDS, constants.OUTAGE_RETRY_MAX_SECONDS
        )
        self._run_troubles = RunTroubles(constants.RUN_ERROR_RETRY_SECONDS, self.park_retry)
        self._tg_exit: Any = None

    # ---- registration and clients ----

    def register(self, *workflows: Workflow[Any]) -> None:
        """Make workflows startable and runnable by this conductor's agent."""
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"register() takes @workflow functions, got {wf!r}")
            self._workflows[wf.name] = wf

    @property
    def workflows(self) -> list[Workflow[Any]]:
        """The registered workflows."""
        return list(self._workflows.values())

    def _lookup(self, wf: Workflow[Any] | str) -> Workflow[Any]:
        name = wf if isinstance(wf, str) else wf.name
        found = self._workflows.get(name)
        if found is None:
            raise UnknownWorkflow(name, list(self._workflows))
        return found

    async def start(
        self, wf: Workflow[R] | str, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Handle[R]:
        """
        Start a run of a registered workflow. Idempotent on ``run_id``: starting an id
        that exists returns a handle to that run and starts nothing.

        :param wf: the workflow, or its registered name
        :param run_id: the run's id (default: a random one); an idempotency key
        :raises UnknownWorkflow: if ``wf`` is not registered
        :raises InvalidArguments: if the arguments do not fit the workflow's signature
        :raises CodecError: if an argument cannot be encoded, or the arguments are over
            the payload limit (checked before anything is written)
        """
        workflow = self._lookup(wf)
        workflow.check_arguments(args, kwargs)
        payload = encode_payload([list(args), kwargs], where="args", limit=self.max_payload)
        run_id = check_run_id(run_id) if run_id is not None else uuid.uuid4().hex
        changed = self._notifier.watch(run_id)  # before the agent can see the run
        started = pb.Started(run_id=run_id, workflow=workflow.name, args=payload)
        created = await self._create_run(started)
        return Handle(
            self.store,
            run_id,
            self._notifier,
            created=changed if created else None,
            max_payload=self.max_payload,
        )

    async def _create_run(self, started: pb.Started) -> bool:
        """
        Write a new run (schedule entry, segment 0, summary), or nothing if it exists.

        :return: whether this call created it
        """
        run_id = started.run_id
        at = self._now()
        started.seed = os.urandom(16)
        self._starting.add(run_id)  # the local agent leaves it alone until it is written
        try:
            # Schedule first: a start that dies after writing segment 0 still gets run.
            await self.store.schedule(run_id, at, "s")
            created = await self.store.append(run_id, 0, [pb.Event(at_ms=at, started=started)])
            if created:
                meta = pb.RunMeta(
                    run_id=run_id, workflow=started.workflow, args=started.args, created_ms=at,
                    updated_ms=at, status=pb.RUN_STATUS_PENDING, log_seq=0,
                    parent_run_id=started.parent_run_id, chain_root=started.chain_root,
                )  # fmt: skip
                await self.store.write_meta(meta, current=(None, None))
        finally:
            self._starting.discard(run_id)
        self._notifier.kick()
        return created

    def handle(self, run_id: str) -> Handle[Any]:
        """A handle to an existing run, from any process."""
        return Handle(self.store, run_id, self._notifier, max_payload=self.max_payload)

    # ---- the agent ----

    def run(self) -> asyncio.Task[None]:
        """
        Run the agent as an asyncio task in this process. Cancelling the task stops the
        agent gracefully; awaiting it afterwards raises nothing.
        """

        async def agent() -> None:
            try:
                await self.serve()
            except asyncio.CancelledError:
                return

        return asyncio.get_running_loop().create_task(
            agent(), name=f"substantial-agent-{self.name}"
        )

    async def __aenter__(self) -> Conductor:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg_exit = tg
        await tg.start(self.serve)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg_exit = self._tg_exit, None
        tg.cancel_scope.cancel()
        await tg.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the backend's connections."""
        await self.backend.aclose()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """
        The agent loop, for anyio task groups: ``await tg.start(conductor.serve)``.
        Returns or raises only through cancellation; stopping lets in-flight steps finish
        for up to ``shutdown_grace`` seconds, then releases every lease.
        """
        if self._serving:
            raise RuntimeError("this conductor's agent is already running")
        self._serving = True
        log.info("agent %s started", self.name)
        try:
            async with anyio.create_task_group() as work:
                task_status.started()
                try:
                    await self._poll_loop(work)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._drain()
        finally:
            self._serving = False
            log.info("agent %s stopped", self.name)

    async def _drain(self) -> None:
        with anyio.move_on_after(self.shutdown_grace):
            while self._active:
                await self._notifier.wait_kick(0.05)
        for scope in list(self._run_scopes.values()):
            scope.cancel()

    async def _poll_loop(self, work: TaskGroup) -> None:
        delay = constants.POLL_MIN_SECONDS
        task = _asyncio_task()
        while True:
            if task is not None and task.cancelling():
                # A cancel that a library swallowed (asyncio.wait_for in redis-py on 3.11
                # drops one that races its inner task): the agent.cancel() must still stop us.
                raise asyncio.CancelledError
            try:
                claimed, next_due_ms = await self._claim_due(work)
            except Exception as exc:  # store-wide: logged once, retried; the agent goes on
                self._store_trouble.failed(exc)
                claimed, next_due_ms = 0, None
                delay = max(delay, constants.OUTAGE_RETRY_MIN_SECONDS)
            else:
                self._store_trouble.recovered()
            idle = not claimed and not self._active and next_due_ms is not None
            if idle and next_due_ms is not None and self.store.clock.skip_to(next_due_ms):
                continue  # a virtual clock jumped to the next timer
            delay = constants.POLL_MIN_SECONDS if claimed else min(delay * 2, self.poll_max)
            wait = delay * random.uniform(0.5, 1.0) if self._store_trouble.active else delay
            if next_due_ms is not None:
                wait = min(wait, max(0.0, (next_due_ms - self._now()) / 1000))
            await self._notifier.wait_kick(wait)

    async def _claim_due(self, work: TaskGroup) -> tuple[int, int | None]:
        """
        Lease due runs, up to this agent's free capacity, and start working on them.

        :return: how many runs were claimed, and when the next not-yet-due entry is due
        """
        now = self._now()
        clock = anyio.current_time()
        self._hold_off = {run: t for run, t in self._hold_off.items() if t > clock}
        skip = self._active | self._starting | self._hold_off.keys()
        wanted: dict[str, list[ScheduleEntry]] = {}
        after = None
        next_due = None
        for _ in range(4):
            free = self.concurrency - len(self._active) - len(wanted)
            if free <= 0:
                break
            # The first page is small: an idle poll reads one page whatever sleeps.
            page = constants.POLL_FIRST_PAGE if after is None else max(2 * free, 32)
            entries, next_due, more = await self.store.due(now, after=after, limit=page)
            for entry in entries:
                if entry.run_id in skip:
                    continue
                if entry.run_id in wanted or len(wanted) < free:
                    wanted.setdefault(entry.run_id, []).append(entry)
            if not more:
                break
            after = entries[-1].key if entries else after
        if self._hold_off:
            soonest = now + round((min(self._hold_off.values()) - clock) * 1000)
            next_due = soonest if next_due is None else min(next_due, soonest)
        claimed = 0
        for run_id, entries in wanted.items():
            try:
                lease = await self.store.acquire(
                    run_id, self.name, round(self.lease_seconds * 1000)
                )
            except (BackendUnavailable, BackendRefused):
                raise  # the store's trouble, not this run's
            except Exception as exc:  # this run's records: hold it off, go on with others
                tries, wait = self._run_troubles.failed(run_id)
                log.error(
                    "agent %s: cannot claim run %s (failure %d in a row), holding it off "
                    "for %.1fs: %s", self.name, run_id, tries, wait, describe(exc),
                )  # fmt: skip
                self._hold_off[run_id] = clock + wait
                continue
            if lease is None:
                self._hold_off[run_id] = clock + constants.POLL_MIN_SECONDS * 10
                continue
            claimed += 1
            self._active.add(run_id)
            work.start_soon(self._process, lease, entries, name=f"run {run_id}")
        return claimed, next_due

    async def _process(self, lease: Lease, entries: list[ScheduleEntry]) -> None:
        run_id = lease.run_id
        logs.run_id_var.set(run_id)  # this task's log lines name the run (substantial.logs)
        holder = _LeaseHolder(lease)
        try:
            with anyio.CancelScope(shield=True) as scope, telemetry.run_span(run_id):
                self._run_scopes[run_id] = scope
                error: Exception | None = None
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._renew, holder, tg.cancel_scope)
                    try:
                        await self._wake(holder, entries)
                    except Exception as exc:  # raised below, not wrapped in an ExceptionGroup
                        error = exc
                    finally:
                        tg.cancel_scope.cancel()
                if error is not None:
                    raise _unwrapped(error)
                if holder.lost:
                    raise LeaseLost(run_id, "renewal failed: another agent took the run")
        except LeaseLost as exc:
            log.warning("agent %s dropped run %s: %s", self.name, run_id, exc)
        except (BackendUnavailable, BackendRefused) as exc:
            self._store_trouble.failed(exc)
            # Jittered exponential backoff per run, so a long outage is not a retry storm.
            _, wait = self._outage_retries.failed(run_id)
            self._hold_off[run_id] = anyio.current_time() + wait
        except Exception as exc:
            await self._hold(run_id, entries, exc)
        else:
            self._outage_retries.succeeded(run_id)
            self._run_troubles.succeeded(run_id)
        finally:
            self._run_scopes.pop(run_id, None)
            with anyio.CancelScope(shield=True):
                if not holder.lost:
                    with contextlib.suppress(BackendUnavailable):  # it expires on its own
                        await self.store.release(holder.lease)
            self._active.discard(run_id)
            self._notifier.changed(run_id)
            self._notifier.kick()

    async def _hold(self, run_id: str, entries: list[ScheduleEntry], error: Exception) -> None:
        """
        An error of this run's own (not the store's) ended its wake-up: hold the run off
        with a back-off that doubles up to ``park_retry``, durably (a schedule entry at
        the end of the back-off replaces the ones consumed) and in its summary (status
        ``parked``, with the reason), so one bad run costs its agents next to nothing.
        Called while this agent still holds the run's lease.
        """
        tries, wait = self._run_troubles.failed(run_id)
        reason = f"{describe(error)} (failure {tries} in a row; next try in {wait:.0f}s)"
        if tries == 1:
            log.error(
                "agent %s: error on run %s, holding it off", self.name, run_id, exc_info=error
            )
        else:
            log.error("agent %s: run %s held off: %s", self.name, run_id, reason)
        self._hold_off[run_id] = anyio.current_time() + wait
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.lease_seconds):
            try:
                await mark_held(self.store, run_id, reason, self._now())
                await self.store.schedule(run_id, self._now() + round(wait * 1000), "h")
                await self.store.delete([entry.key for entry in entries])
            except Exception as exc:  # best effort: the in-memory hold-off still stands
                log.warning("agent %s: could not record the hold-off of run %s: %s",
                            self.name, run_id, describe(exc))  # fmt: skip

    async def _renew(self, holder: _LeaseHolder, scope: anyio.CancelScope) -> None:
        ttl_ms = round(self.lease_seconds * 1000)
        while True:
            await anyio.sleep(self.lease_seconds * constants.LEASE_RENEW_FRACTION)
            try:
                renewed = await self.store.renew(holder.lease, ttl_ms)
            except (BackendUnavailable, BackendRefused) as exc:
                self._store_trouble.failed(exc)
                if self._now() >= holder.lease.expires_ms:
                    renewed = None
                else:
                    continue
            if renewed is None:
                holder.lost = True
                scope.cancel()
                return
            holder.lease = renewed

    # ---- one wake-up of one run ----

    async def _wake(self, holder: _LeaseHolder, entries: list[ScheduleEntry]) -> None:
        run_id = holder.lease.run_id
        consumed = [entry.key for entry in entries]
        intake = Intake(self.store, run_id)
        inbox = intake.entries
        try:
            stored, _, (meta, meta_version) = await _gather(
                self.store.read_log(run_id), intake.read(), hints.read_summary(self.store, run_id)
            )
        except CorruptLog as exc:
            # The log itself cannot be read: park the run with the reason (a failure is
            # final, and only the log can say the run failed); it is retried later.
            meta, meta_version = await hints.read_summary(self.store, run_id)
            seq = meta.log_seq if meta is not None else -1  # keep: of a later segment than -1
            await self._park(run_id, StoredLog([], seq, [], -1), meta, exc, consumed, meta_version)
            return
        if not stored.events:
            await self._orphan(run_id, entries)
            return
        await intake.set_aside()
        meta = await hints.trusted_summary(self.store, run_id, meta, meta_version, stored)
        last_kind = stored.events[-1].WhichOneof("kind")
        if last_kind in TERMINAL_KINDS:
            await self._finish(
                run_id, stored.events[-1], stored, meta, inbox, consumed, meta_version
            )
            return
        started = stored.events[0].started
        logs.workflow_var.set(started.workflow)
        workflow = self._workflows.get(started.workflow)
        if workflow is None:
            error = UnknownWorkflow(started.workflow, list(self._workflows), run_id)
            await self._park(run_id, stored, meta, error, consumed, meta_version)
            return

        execution = Execution(run_id, workflow, max_payload=self.max_payload)
        seq = stored.last_seq
        ends = list(stored.segment_ends)

        compacted_at = stored.snapshot_seq

        async def commit() -> None:
            nonlocal seq, compacted_at
            events = execution.take_new_events()
            if not events:
                return
            if holder.lost:
                raise LeaseLost(run_id, "lease expired before commit")
            if not await self.store.append(run_id, seq + 1, events):
                raise LeaseLost(run_id, f"segment {seq + 1} was written by another agent")
            seq += 1
            execution.committed.extend(events)
            ends.append(len(stored.events) + len(execution.committed))
            if execution.compact_requested and seq - compacted_at >= constants.COMPACT_EVERY:
                # The compacted history drops events already taken, and with them the
                # ids that keep their inbox entries from being merged again: delete those
                # entries first (they are in the log now), not only at the end of this
                # wake-up, which an agent killed in between never reaches.
                await self.store.delete(
                    [key for key, entry in inbox if entry.id in execution.event_ids]
                )
                await self.store.write_compacted(run_id, seq, execution.take_compacted())
                compacted_at = seq

        try:
            try:
                with telemetry.replay_span(len(stored.events)):
                    execution.replay(stored.events)
                now = self._now()
                execution.go_live(now)
                execution.merge((entry for _, entry in inbox), now)
                execution.fire_due_timers(now)
            except (NonDeterminismError, CodecError) as exc:
                await self._park(run_id, stored, meta, exc, consumed, meta_version)
                return
            await commit()

            async def check_inbox() -> None:
                """Merge events sent while this wake-up runs steps: a cancellation, above all."""
                fresh = await intake.read()  # none once full: the rest waits (see the end)
                await intake.set_aside()
                execution.merge((entry for _, entry in fresh), self._now())

            await self._drive(execution, commit, check_inbox)
            wake = execution.next_wake_ms() if execution.outcome is None else None
            waiting = execution.waiting_for_events()
            telemetry.run_ended(execution.outcome)
        finally:
            execution.close()

        merged = [key for key, entry in inbox if entry.id in execution.event_ids]
        if execution.outcome is not None:
            merged = [key for key, _ in inbox]  # a finished run drops events still unmerged
            await self._after_end(run_id, [*stored.events, *execution.committed])
        await self.store.delete(merged)
        every = self.snapshot_every
        if every and seq // every > stored.last_seq // every:
            if execution.compactions:
                events = [entry.event for entry in execution.history]
                full = StoredLog(events, seq, [len(events)] * (seq + 1))
            else:
                full = StoredLog([*stored.events, *execution.committed], seq, ends)
            await self.store.write_snapshot(run_id, full)
        published = encode_payload(execution.custom_status) if execution.has_custom_status else None
        await self._record_state(
            run_id, execution.outcome, wake, waiting, seq, meta, published, meta_version
        )
        if execution.outcome is not None:
            # The summary holds the outcome: local result() waiters need not wait for the
            # clean-up below (deleting consumed entries, releasing the lease).
            self._notifier.changed(run_id)
        if wake is not None:
            await self.store.schedule(run_id, wake)
        if execution.outcome is None and intake.more:
            await self.store.schedule(run_id, self._now(), "more")  # events left unmerged
        await self.store.delete(consumed)

    async def _drive(
        self,
        execution: Execution,
        commit: Callable[[], Any],
        check_inbox: Callable[[], Any],
    ) -> None:
        """
        Execute steps and fire timers until the run ends or waits on the outside world.
        While steps run, the inbox is read every ``poll_interval``, so that a cancellation
        reaches the workflow at its current primitive and not after its last step.
        """
        send, receive = anyio.create_memory_object_stream[_StepOutcome](math.inf)
        running: set[int] = set()
        inbox_due = anyio.current_time() + self.poll_max
        async with send, receive, anyio.create_task_group() as tg:
            while execution.outcome is None:
                now = self._now()
                execution.fire_due_timers(now)
                for child in execution.children_to_start():
                    taken_by = await self._start_child(execution.run_id, child)
                    execution.child_started(child, self._now(), taken_by)
                await commit()
                if execution.outcome is not None:
                    break
                if execution.children_to_start():
                    continue
                for command in execution.runnable_steps(now):
                    if command.position not in running:
                        running.add(command.position)
                        tg.start_soon(self._execute_step, command, send.clone())
                if not running:
                    break
                wake = execution.next_wake_ms()
                # a wake time not in the future is a due retry that is already running
                timeout = math.inf if wake is None or wake <= now else (wake - now) / 1000
                timeout = min(timeout, max(0.0, inbox_due - anyio.current_time()))
                with anyio.move_on_after(timeout):
                    outcome = await receive.receive()
                    while True:
                        running.discard(outcome.command.position)
                        self._apply_outcome(execution, outcome)
                        try:
                            outcome = receive.receive_nowait()
                        except anyio.WouldBlock:
                            break
                if anyio.current_time() >= inbox_due and execution.outcome is None:
                    await check_inbox()
                    inbox_due = anyio.current_time() + self.poll_max
            tg.cancel_scope.cancel()
        await commit()

    async def _start_child(self, parent_run_id: str, child: ChildCommand) -> str | None:
        """
        Start a child run. If its id is taken, it is this parent's child only if that
        run's start names this parent (an agent died before recording the start).

        :return: None if the child is this parent's; else the parent of the run that
            holds the id (``""``: a top-level run), which is left alone
        """
        started = pb.Started(
            run_id=child.run_id,
            workflow=child.workflow,
            args=child.args,
            parent_run_id=parent_run_id,
            detached=child.detached,
        )
        if await self._create_run(started):
            return None
        try:
            stored = await self.store.read_log(child.run_id)
        except CorruptLog as exc:
            log.warning(
                "run %s: child id %r is taken by a run: %s", parent_run_id, child.run_id, exc
            )
            return ""
        if not stored.events:  # deleted since (gc): this wake-up fails, the next creates it
            raise RunNotFound(child.run_id)
        owner = stored.events[0].started.parent_run_id
        return None if owner == parent_run_id else owner

    async def _after_end(self, run_id: str, events: list[pb.Event]) -> None:
        """
        What a run's end sets off: its continuation starts, its parent hears of it, and
        its children that are not detached are cancelled. Each is safe to repeat.
        """
        started = events[0].started
        last = events[-1]
        kind = last.WhichOneof("kind")
        now = self._now()
        if kind == "continued_as" and _names_run(run_id, last.continued_as.run_id):
            link = last.continued_as
            await self._create_run(
                pb.Started(
                    run_id=link.run_id,
                    workflow=link.workflow,
                    args=link.args,
                    continued_from=run_id,
                    chain_root=started.chain_root or run_id,
                    chain_index=started.chain_index + 1,
                    parent_run_id=started.parent_run_id,
                    detached=started.detached,
                )
            )
        elif kind != "continued_as" and _names_run(run_id, started.parent_run_id):
            child_id = started.chain_root or run_id  # the id the parent knows
            ended = pb.ChildEnded(run_id=child_id, cancelled=kind == "cancelled")
            if kind == "completed":
                ended.result.CopyFrom(last.completed.result)
            elif kind == "failed":
                ended.failure.CopyFrom(last.failed.failure)
            elif kind == "reverted":
                ended.failure.CopyFrom(failure_from_exception(RunReverted(child_id)))
            entry = pb.InboxEntry(id=f"child-ended-{child_id}", sent_at_ms=now, child_ended=ended)
            await self.store.post(started.parent_run_id, entry)
        for child_id in open_children(events):
            if not _names_run(run_id, child_id):
                continue
            cancel = pb.InboxEntry(id=f"parent-ended-{run_id}", sent_at_ms=now, cancel=True)
            await self.store.post(child_id, cancel)
        self._notifier.kick()

    def _apply_outcome(self, execution: Execution, outcome: _StepOutcome) -> None:
        if outcome.result is not None:
            execution.step_succeeded(outcome.command, outcome.result, self._now())
        else:
            assert outcome.failure is not None
            execution.step_failed(
                outcome.command, outcome.failure, outcome.retry_at_ms, self._now()
            )

    async def _execute_step(
        self, command: SaveCommand, send: MemoryObjectSendStream[_StepOutcome]
    ) -> None:
        attempt = command.attempts + 1
        async with send:
            try:
                deadline = anyio.fail_after(command.timeout) if command.timeout else nullcontext()
                with telemetry.step_span(command, attempt), deadline:
                    value = await _call(command.fn)
                where = f"the result of step {command.position} ({command.name})"
                payload = encode_payload(value, where=where, limit=self.max_payload)
            except CodecError as exc:
                failure = failure_from_exception(exc, non_retryable=True)
                await send.send(_StepOutcome(command, None, failure, None))
            except Exception as exc:
                retry_at = None
                policy = command.retry
                if policy is not None and policy.retries(exc, attempt):
                    retry_at = self._now() + round(policy.delay_after(attempt) * 1000)
                    telemetry.step_retried()
                failure = failure_from_exception(exc, non_retryable=retry_at is None)
                await send.send(_StepOutcome(command, None, failure, retry_at))
            else:
                await send.send(_StepOutcome(command, payload, None, None))

    # ---- bookkeeping after a wake-up ----

    async def _record_state(
        self,
        run_id: str,
        outcome: pb.Event | None,
        wake: int | None,
        waiting: bool,
        seq: int,
        meta: pb.RunMeta | None,
        published: pb.Payload | None = None,
        version: str | None = None,
    ) -> None:
        if outcome is not None:
            status = _END_STATUS[outcome.WhichOneof("kind") or ""]
            await self._write_meta(
                run_id, meta, seq, status, end=outcome, published=published, version=version
            )
            log.info("run %s %s", run_id, status.value)
            return
        if wake is not None:
            status = RunStatus.SLEEPING
        elif waiting:
            status = RunStatus.WAITING
        else:
            status = RunStatus.RUNNING
        if (
            meta is not None
            and meta.status == STATUS_TO_PB[status]
            and meta.wake_at_ms == (wake or 0)
            and (published is None or meta.custom_status == published)
        ):
            return
        if meta is None or meta.status != STATUS_TO_PB[status]:
            log.info("run %s %s", run_id, status.value)  # one line per state change
        await self._write_meta(
            run_id, meta, seq, status, wake_at_ms=wake, published=published, version=version
        )

    async def _write_meta(
        self,
        run_id: str,
        meta: pb.RunMeta | None,
        seq: int,
        status: RunStatus,
        *,
        end: pb.Event | None = None,
        failure: pb.Failure | None = None,
        wake_at_ms: int | None = None,
        published: pb.Payload | None = None,
        parked_reason: str = "",
        stored: StoredLog | None = None,
        version: str | None = None,
    ) -> None:
        """``version``: of ``meta`` as read; the write then starts with one conditional write."""
        updated = pb.RunMeta()
        if meta is not None:
            updated.CopyFrom(meta)
        elif stored is not None and stored.events:
            first = stored.events[0]
            updated.workflow = first.started.workflow
            updated.args.CopyFrom(first.started.args)
            updated.created_ms = first.at_ms
        updated.run_id = run_id
        updated.status = STATUS_TO_PB[status]
        updated.updated_ms = self._now()
        updated.log_seq = max(seq, 0)
        updated.wake_at_ms = wake_at_ms or 0
        updated.parked_reason = parked_reason
        kind = end.WhichOneof("kind") if end is not None else None
        if end is not None and kind == "completed":
            updated.result.CopyFrom(end.completed.result)
        elif end is not None and kind == "failed":
            updated.failure.CopyFrom(end.failed.failure)
        elif end is not None and kind == "continued_as":
            updated.continued_as = end.continued_as.run_id
        if failure is not None:
            updated.failure.CopyFrom(failure)
        if published is not None:
            updated.custom_status.CopyFrom(published)
        await self.store.write_meta(updated, current=(meta, version) if version else None)

    async def _finish(
        self,
        run_id: str,
        last: pb.Event,
        stored: StoredLog,
        meta: pb.RunMeta | None,
        inbox: list[tuple[str, pb.InboxEntry]],
        consumed: list[str],
        version: str | None = None,
    ) -> None:
        """
        A run whose log already ends: if its summary does not say so yet, the agent that
        ended it died before finishing up, so do what its end sets off and fix the summary.
        Then drop leftovers.
        """
        status = _END_STATUS[last.WhichOneof("kind") or ""]
        if meta is None or meta.status != STATUS_TO_PB[status]:
            await self._after_end(run_id, stored.events)
            await self._write_meta(
                run_id, meta, stored.last_seq, status, stored=stored, end=last, version=version
            )
        await self.store.delete([key for key, _ in inbox] + consumed)

    async def _park(
        self,
        run_id: str,
        stored: StoredLog,
        meta: pb.RunMeta | None,
        error: Exception,
        consumed: list[str],
        version: str | None = None,
    ) -> None:
        log.error("run %s parked, retrying in %gs: %s", run_id, self.park_retry, error)
        telemetry.run_outcome("parked")
        await self._write_meta(
            run_id, meta, stored.last_seq, RunStatus.PARKED, parked_reason=str(error),
            stored=stored, version=version,
        )  # fmt: skip
        await self.store.schedule(run_id, self._now() + round(self.park_retry * 1000), "p")
        await self.store.delete(consumed)

    async def _orphan(self, run_id: str, entries: list[ScheduleEntry]) -> None:
        """Schedule entries of a run with no log: a start in progress, or one that died."""
        grace_ms = round(constants.START_GRACE_SECONDS * 1000)
        stale = [entry.key for entry in entries if entry.due_ms + grace_ms < self._now()]
        await self.store.delete(stale)
        if len(stale) < len(entries):
            self._hold_off[run_id] = anyio.current_time() + constants.POLL_MIN_SECONDS * 5


def _names_run(run_id: str, other: str) -> bool:
    """Whether an id that run ``run_id``'s log names can be a run (``""``: none named)."""
    if other and not is_stored_run_id(other):
        log.error("run %s: its log names run id %r, which breaks the run-id rule", run_id, other)
    return bool(other) and is_stored_run_id(other)


_END_STATUS = {
    "completed": RunStatus.COMPLETED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "reverted": RunStatus.REVERTED,
    "continued_as": RunStatus.CONTINUED,
}


@dataclass
class _LeaseHolder:
    lease: Lease
    lost: bool = False


def _asyncio_task() -> asyncio.Task[Any] | None:
    """The current asyncio task, or None on another event loop (trio)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


async def _call(fn: Callable[[], Any]) -> Any:
    """Call a step function: async ones on the event loop, sync ones in a worker thread."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return await fn()
    value = await _in_thread(fn)
    if inspect.isawaitable(value):
        value = await value
    return value


_step_threads: DaemonThreadPool | None = None


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """
    Run a sync step function in a worker thread, so blocking code does not stall the
    agent; on cancellation the thread is abandoned. On asyncio this is the loop's
    ``run_in_executor`` on a pool of this module's (as many threads as anyio's default
    limit): about half the CPU of ``anyio.to_thread.run_sync`` per call. Context
    variables are copied in, as anyio does.
    """
    global _step_threads
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    if _step_threads is None:
        _step_threads = DaemonThreadPool(max_workers=40)
    return await loop.run_in_executor(_step_threads, contextvars.copy_context().run, fn)


def _unwrapped(error: Exception) -> Exception:
    """
    The storage error an ExceptionGroup from a wake-up's nested task groups stands for,
    if it holds nothing else: an outage (any BackendUnavailable) before a lost lease.
    """
    if not isinstance(error, ExceptionGroup):
        return error
    storage, rest = error.split((BackendUnavailable, LeaseLost))
    if storage is None or rest is not None:
        return error
    for kind in (BackendUnavailable, LeaseLost):
        found, _ = storage.split(kind)
        leaf: Exception | None = found
        while isinstance(leaf, ExceptionGroup):
            leaf = leaf.exceptions[0]
        if leaf is not None:
            return leaf
    return error


async def _gather(*awaitables: Any) -> tuple[Any, ...]:
    results: list[Any] = [None] * len(awaitables)

    async def one(index: int, awaitable: Any) -> None:
        results[index] = await awaitable

    try:
        async with anyio.create_task_group() as tg:
            for index, awaitable in enumerate(awaitables):
                tg.start_soon(one, index, awaitable)
    except ExceptionGroup as group:  # callers catch CorruptLog, BackendUnavailable by type
        raise group.exceptions[0] from None
    return tuple(results)
