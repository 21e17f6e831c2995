"""
The replay engine: runs a workflow function against its log.

The workflow coroutine runs on a private, deterministic event loop that only ever runs
ready callbacks: it has no clock and no I/O. Every primitive the workflow calls becomes
a *command* with a position (its call order) and a future. The engine feeds the log to
the workflow one event at a time, each event resolving one command (a step result, a
timer firing) or delivering a sent event, and lets the workflow run until every task is
blocked again before feeding the next. Because the log is the order in which outcomes
were first observed, concurrent steps (``asyncio.gather``) replay in the same order as
they ran live, whatever order their recorded results are read back in.

After the recorded events run out the execution goes *live*: the caller (the agent)
executes pending steps, starts children, fires due timers and merges new events through
the same path, and every new event is also appended to :attr:`Execution.new_events`.

The parts, each adding one job to the one before:

* :mod:`~substantial._engine.state`: what one wake-up holds;
* :mod:`~substantial._engine.applier`: applying events, and checking each against the code;
* :mod:`~substantial._engine.primitives`: what workflow code calls through its ``Context``;
* this module: :class:`Execution`, the live driving API the agent uses.

:mod:`~substantial._engine.outcome` makes the terminal event, and
:mod:`~substantial._engine.compaction` tags and compacts the history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from substantial._core import constants
from substantial._engine.commands import (
    ChildCommand,
    EnsureCommand,
    ReceiveCommand,
    SaveCommand,
    TimedCommand,
)
from substantial._engine.outcome import Suspend
from substantial._engine.primitives import Primitives
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Execution", "open_children"]


class Execution(Primitives):
    """
    One wake-up of one run: the workflow coroutine, its commands and its new events.

    ``Execution(run_id, workflow, *, max_payload=...)``; :meth:`replay` the stored log,
    then :meth:`go_live` and drive it: merge inbox entries, fire due timers, run the
    :meth:`runnable_steps` and start the :meth:`children_to_start`, and commit what
    :meth:`take_new_events` returns, until :attr:`outcome` is set or it waits.
    """

    def go_live(self, now_ms: int) -> None:
        """Leave replay mode: from now on new work is recorded in :attr:`new_events`."""
        self.replaying = False
        self._live = True
        self._clock_ms = now_ms
        self._settle()

    def merge(self, entries: Iterable[pb.InboxEntry], now_ms: int) -> list[str]:
        """
        Record inbox entries not yet in the log, in the given (arrival) order.

        :return: the ids of the entries this call recorded
        """
        self._clock_ms = now_ms
        merged = []
        for entry in entries:
            if entry.id in self.event_ids or self.outcome is not None:
                continue
            if entry.HasField("terminate") or entry.HasField("pause_change"):
                continue  # the agent carries it out, outside the workflow
            if entry.cancel:
                event = pb.Event(cancel_requested=pb.CancelRequested(id=entry.id))
            elif entry.HasField("child_ended"):
                event = pb.Event(child_ended=entry.child_ended)
                event.child_ended.id = entry.id
            else:
                event = pb.Event(
                    event_received=pb.EventReceived(
                        id=entry.id, name=entry.name, value=entry.value, sent_at_ms=entry.sent_at_ms
                    )
                )
            self._record(event)
            merged.append(entry.id)
        return merged

    def fire_due_timers(self, now_ms: int) -> None:
        """Record the firing of every timer due at ``now_ms``, earliest first."""
        self._clock_ms = now_ms
        while self.outcome is None:
            due = [
                command
                for command in self._pending.values()
                if isinstance(command, TimedCommand)
                and command.fire_at_ms is not None
                and command.fire_at_ms <= now_ms
                and not command.future.done()
            ]
            if not due:
                return
            first = min(due, key=lambda command: (command.fire_at_ms, command.position))
            self._record(pb.Event(timer_fired=pb.TimerFired(position=first.position)))

    def runnable_steps(self, now_ms: int) -> list[SaveCommand]:
        """Steps to execute now: issued, unfinished, and not waiting for a retry."""
        if self.outcome is not None:
            return []
        return [
            command
            for command in self._pending.values()
            if isinstance(command, SaveCommand)
            and not command.future.done()
            and (command.retry_at_ms is None or command.retry_at_ms <= now_ms)
        ]

    def children_to_start(self) -> list[ChildCommand]:
        """Child runs the workflow asked for whose start is not recorded yet."""
        if self.outcome is not None:
            return []
        return [
            command
            for command in self._pending.values()
            if isinstance(command, ChildCommand) and not command.future.done()
        ]

    def child_started(
        self, command: ChildCommand, now_ms: int, taken_by: str | None = None
    ) -> None:
        """
        Record a child's start, or with ``taken_by`` (the parent of the run that holds
        the id; ``""``: none) that its id was taken, so no child was started.
        """
        self._clock_ms = now_ms
        if self._pending.get(command.position) is not command or self.outcome is not None:
            return
        started = pb.ChildStarted(
            position=command.position,
            run_id=command.run_id,
            workflow=command.workflow,
            args=command.args,
            detached=command.detached,
            id_taken=taken_by is not None,
            id_owner=taken_by or "",
        )
        self._record(pb.Event(child_started=started))

    def step_succeeded(self, command: SaveCommand, result: pb.Payload, now_ms: int) -> None:
        """Record a step's result, unless the workflow no longer waits for it."""
        self._clock_ms = now_ms
        if not self._awaits(command):
            return
        self._record(
            pb.Event(
                step_completed=pb.StepCompleted(
                    position=command.position,
                    result=result,
                    attempts=command.attempts + 1,
                    name=command.name,
                    key=command.key,
                )
            )
        )

    def step_failed(
        self, command: SaveCommand, failure: pb.Failure, retry_at_ms: int | None, now_ms: int
    ) -> None:
        """Record a failed attempt: retried at ``retry_at_ms``, or final if that is None."""
        self._clock_ms = now_ms
        if not self._awaits(command):
            return
        if retry_at_ms is None:
            event = pb.Event(
                step_completed=pb.StepCompleted(
                    position=command.position,
                    failure=failure,
                    attempts=command.attempts + 1,
                    name=command.name,
                    key=command.key,
                )
            )
        else:
            event = pb.Event(
                step_attempt_failed=pb.StepAttemptFailed(
                    position=command.position,
                    attempt=command.attempts + 1,
                    failure=failure,
                    retry_at_ms=retry_at_ms,
                    name=command.name,
                    key=command.key,
                )
            )
        self._record(event)

    def _awaits(self, command: SaveCommand) -> bool:
        """Whether the workflow still waits for this step: a cancellation merged while it
        ran may have cancelled the ``save``, and then its outcome is not recorded."""
        return (
            self._pending.get(command.position) is command
            and not command.future.done()
            and self.outcome is None
        )

    def take_new_events(self) -> list[pb.Event]:
        """The events recorded since the last call, for the agent to commit."""
        events, self.new_events = self.new_events, []
        return events

    def take_compacted(self) -> list[pb.Event]:
        """The history as compacted at the workflow's last ``compact()``, plus what
        followed; the agent writes it as a snapshot."""
        return self._history.take_compacted()

    def next_wake_ms(self) -> int | None:
        """When the run next needs an agent without any event arriving, if ever."""
        times = []
        for command in self._pending.values():
            if command.future.done():
                continue
            if isinstance(command, TimedCommand) and command.fire_at_ms is not None:
                times.append(command.fire_at_ms)
            elif isinstance(command, SaveCommand) and command.retry_at_ms is not None:
                times.append(command.retry_at_ms)
        return min(times, default=None)

    def waiting_for(self, limit: int = constants.WAITING_FOR_SHOWN) -> list[str]:
        """
        What the run waits for that only another run or a sender can bring, as people
        read it: ``event 'approve'``, ``child 'order-7-ship'``, ``a condition (ensure)``.
        At most ``limit`` items, then one that says how many more.
        """
        waits: list[str] = []
        for command in self._pending.values():
            if command.future.done():
                continue
            if isinstance(command, ReceiveCommand):
                waits.append(f"event {command.name!r}")
            elif isinstance(command, EnsureCommand):
                waits.append("a condition (ensure)")
        waits += [f"child {run_id!r}" for run_id, f in self._children.items() if not f.done()]
        if len(waits) > limit:
            waits[limit:] = [f"{len(waits) - limit} more"]
        return waits

    def close(self) -> None:
        """Unwind the workflow coroutine, running its ``finally`` blocks but no new work."""
        self._closing = True
        self.replaying = True  # finally blocks run again on the next wake-up
        futures = [command.future for command in self._pending.values()]
        for future in [*futures, *self._children.values()]:
            if not future.done():
                future.set_exception(Suspend())
        self._loop.run_ready()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_ready()
        self._pending.clear()


def open_children(events: Iterable[pb.Event]) -> list[str]:
    """Children a log started, not detached, whose end it has not recorded."""
    started: dict[str, bool] = {}
    ended: set[str] = set()
    for event in events:
        kind = event.WhichOneof("kind")
        if kind == "child_started":
            child = event.child_started
            if not child.detached and not child.id_taken:
                started[child.run_id] = True
        elif kind == "child_ended":
            ended.add(event.child_ended.run_id)
    return [run_id for run_id in started if run_id not in ended]
