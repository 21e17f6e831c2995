"""
``EventApplier``: feeds events to the workflow, one at a time, checking each against
the command the code issued at the event's position; a mismatch raises
:class:`~substantial.errors.NonDeterminismError` naming both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from substantial._core.runids import derived_run_id
from substantial._core.status import TERMINAL_KINDS
from substantial._engine.commands import (
    C,
    ChildCommand,
    Command,
    EnsureCommand,
    ReceiveCommand,
    SaveCommand,
    TimedCommand,
    error_from_failure,
    same_step,
)
from substantial._engine.compaction import Entry
from substantial._engine.outcome import terminal_event
from substantial._engine.state import ExecutionState
from substantial.codec import decode_payload
from substantial.errors import (
    ChildRunIdTaken,
    InvalidArguments,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
)
from substantial.protocol import substantial_pb2 as pb

__all__ = ["EventApplier"]

#: How a mismatch names each kind of logged event.
_LOGGED = {
    "started": "the run's start",
    "step_completed": "a step result",
    "step_attempt_failed": "a failed step attempt",
    "timer_started": "a timer start",
    "timer_fired": "a timer firing",
    "event_received": "a received event",
    "cancel_requested": "a cancellation",
    "version_marked": "a version marker",
    "child_started": "a child run's start",
    "child_ended": "a child run's end",
    "completed": "the run's completion",
    "failed": "the run's failure",
    "cancelled": "the run's cancellation",
    "reverted": "the run's reversal",
    "continued_as": "the run's continuation",
    "terminated": "the run's termination",
}


class EventApplier(ExecutionState):
    """Applies logged and new events to the workflow and runs it until it blocks."""

    def replay(self, events: Iterable[pb.Event]) -> None:
        """
        Apply the stored log. Afterwards the workflow is blocked at the point the log
        reaches, and the execution is still in replay mode; call ``go_live`` next.

        :raises NonDeterminismError: if the code and the log disagree
        """
        self._stored = stored = list(events)
        self._cursor = 0
        with self._loop.running():  # not set and reset for each event
            while self._cursor < len(stored):
                event = stored[self._cursor]
                self._cursor += 1
                kind = event.WhichOneof("kind")
                if kind == "started" and self._cursor == len(stored):
                    self.replaying = False  # only a start is written by no agent's wake-up
                main = self._main
                if (self._fatal is not None or (main is not None and main.done())) and (
                    self.outcome is None
                ):  # the workflow ended (_ended()), and the log goes on
                    ended = self._terminal_event().WhichOneof("kind")
                    if kind != ended:
                        code = "nothing more: the workflow had already " + (ended or "ended")
                        logged = _LOGGED.get(kind or "?", kind or "?")
                        raise NonDeterminismError(self.run_id, None, logged, code)
                self._apply(event, kind)

    def _record(self, event: pb.Event) -> None:
        event.at_ms = max(self._clock_ms, self.now_ms)
        self.new_events.append(event)
        self._apply(event, event.WhichOneof("kind"))

    def _apply(self, event: pb.Event, kind: str | None) -> None:
        at_ms = event.at_ms
        if at_ms > self.now_ms:
            self.now_ms = at_ms
        self._history.add(event)
        if kind == "step_completed":
            self._on_step_completed(event.step_completed)
        elif kind == "started":
            self._on_started(event.started)
        elif kind == "step_attempt_failed":
            self._on_step_attempt_failed(event.step_attempt_failed)
        elif kind == "timer_started":
            timed = self._expect(event.timer_started.position, TimedCommand, kind)
            timed.fire_at_ms = event.timer_started.fire_at_ms
        elif kind == "timer_fired":
            self._on_timer_fired(self._expect(event.timer_fired.position, TimedCommand, kind))
        elif kind == "event_received":
            received = event.event_received
            if received.id in self.event_ids:
                return
            self.event_ids.add(received.id)
            value = decode_payload(received.value)
            self._deliver(received.name, value, self._history.last())
        elif kind == "cancel_requested":
            self.event_ids.add(event.cancel_requested.id)
            if not self._cancel_requested and self._main is not None:
                self._cancel_requested = True
                self._main.cancel()
        elif kind == "child_started":
            self._on_child_started(event.child_started)
        elif kind == "child_ended":
            self._on_child_ended(event.child_ended)
        elif kind == "version_marked":
            pass  # a marker no version() call consumed: that branch has been retired
        elif kind == "pause_changed":
            pass  # recorded between wake-ups, while the workflow waits: the agent's affair
        elif kind in TERMINAL_KINDS:
            self.outcome = event
        else:
            raise NonDeterminismError(
                self.run_id, None, f"an event this version cannot read ({kind})", "a known event"
            )
        if self._live:
            self._settle()
        else:
            self._loop.run_ready()  # what _settle does in replay mode, less a call

    def _on_started(self, started: pb.Started) -> None:
        if self._main is not None:
            raise NonDeterminismError(self.run_id, None, "a second start", "one start")
        self.started = started
        arguments: Any = decode_payload(started.args)
        args, kwargs = arguments
        self.rng.seed(started.seed)
        try:
            # A run started by name, from a process without the code, is checked here.
            self.workflow.check_arguments(tuple(args), kwargs)
        except InvalidArguments as exc:
            self._main = self._loop.create_task(_raise(exc))  # the run fails with it
            return
        coroutine = self.workflow.fn(self.context, *args, **kwargs)
        self._main = self._loop.create_task(coroutine)

    def _on_step_completed(self, step: pb.StepCompleted) -> None:
        key = step.key
        command = self._step_command(step.position, key, "step_completed", step.name)
        if key:
            self._history.tag_step(self._history.last(), key, command.position)
        if step.HasField("failure"):
            self._pending.pop(command.position, None)
            if not command.future.done():
                command.future.set_exception(error_from_failure(step.failure))
        else:
            if command.compensate_with is not None:
                self._compensations.append(command)
            value = decode_payload(step.result)
            del self._pending[command.position]  # _resolve, less a call
            command.future.set_result(value)  # found not done, above

    def _on_step_attempt_failed(self, attempt: pb.StepAttemptFailed) -> None:
        command = self._step_command(
            attempt.position, attempt.key, "step_attempt_failed", attempt.name
        )
        self._history.tag_step(self._history.last(), attempt.key, command.position)
        command.attempts = attempt.attempt
        command.retry_at_ms = attempt.retry_at_ms

    def _on_timer_fired(self, timed: TimedCommand) -> None:
        if isinstance(timed, ReceiveCommand):
            self._pending.pop(timed.position, None)
            timed.future.set_exception(
                TimeoutError(f"no event {timed.name!r} within {timed.seconds:g}s")
            )
        else:
            self._resolve(timed, None)

    def _on_child_started(self, started: pb.ChildStarted) -> None:
        child = self._expect(started.position, ChildCommand, "child_started")
        # A log from before long derived ids were shortened holds the long form.
        legacy = f"{self.run_id}-c{child.position}"
        derived = child.run_id == derived_run_id(self.run_id, f"-c{child.position}")
        # A fork's copied prefix names the child its original started under its own id.
        inherited = (
            derived and bool(self.started.forked_from) and (started.workflow == child.workflow)
        )
        if child.run_id != started.run_id and not (
            (derived and started.run_id == legacy) or inherited
        ):
            raise NonDeterminismError(
                self.run_id, child.position, f"child run {started.run_id!r}", child.describe()
            )
        if started.id_taken:
            self._pending.pop(child.position, None)
            child.future.set_exception(
                ChildRunIdTaken(started.run_id, self.run_id, started.id_owner)
            )
        else:
            self._resolve(child, started.run_id)

    def _on_child_ended(self, ended: pb.ChildEnded) -> None:
        if ended.id in self.event_ids:
            return
        self.event_ids.add(ended.id)
        future = self._children.get(ended.run_id)
        if future is None:  # it ended before its start reached this log: keep it
            self._child_outcomes[ended.run_id] = ended
        else:
            self._end_child(future, ended)

    def _end_child(self, future: asyncio.Future[Any], ended: pb.ChildEnded) -> None:
        if future.done():
            return
        if ended.cancelled:
            future.set_exception(RunCancelled(ended.run_id))
        elif ended.WhichOneof("outcome") == "failure":
            failure = ended.failure
            future.set_exception(
                RunFailed(ended.run_id, failure.type, failure.message, failure.traceback)
            )
        else:
            future.set_result(decode_payload(ended.result))

    # ---- checking an event against the code ----

    def _step_command(self, position: int, key: str, logged: str, name: str) -> SaveCommand:
        """The save a step record belongs to: by key for keyed steps, else by position."""
        if not key:
            command = self._pending.get(position)
            if (
                type(command) is SaveCommand
                and not command.future.done()
                and same_step(name, command.name)
            ):
                return command  # the usual case, checked as _expect would
            return self._expect(position, SaveCommand, logged, name)
        keyed = [
            command
            for command in self._pending.values()
            if isinstance(command, SaveCommand) and command.key == key and not command.future.done()
        ]
        if not keyed or not same_step(name, keyed[0].name):
            raise NonDeterminismError(
                self.run_id, position, f"{_LOGGED[logged]} of step {name!r} with key {key!r}",
                f"no save with that key; it is waiting on {self._waiting_on() or 'nothing'}",
            )  # fmt: skip
        return min(keyed, key=lambda command: command.position)

    def _expect(self, position: int, kind: type[C], logged: str, name: str = "") -> C:
        command = self._pending.get(position)
        if (
            isinstance(command, kind)
            and not command.future.done()
            # a receive without a timeout starts no timer: a logged timer cannot be its
            and not (logged.startswith("timer_") and getattr(command, "seconds", 0) is None)
            and (not name or not isinstance(command, SaveCommand) or same_step(name, command.name))
        ):
            return command
        what = _LOGGED.get(logged, logged)
        if name:
            what += f" of step {name!r}"
        if command is not None and not command.future.done():
            code = command.describe()
        elif self._ended():
            code = "nothing more: the workflow had already returned"
        elif position >= self._next_position:
            waiting = self._waiting_on() or "nothing recorded"
            code = "nothing at that position yet; it is waiting on " + waiting
        else:
            code = "a different primitive there"
        raise NonDeterminismError(self.run_id, position, what, code)

    def _waiting_on(self) -> str:
        """The commands the workflow waits on, as a mismatch names them."""
        return ", ".join(c.describe() for c in self._pending.values() if not c.future.done())

    # ---- resolving commands and running the workflow ----

    def _resolve(self, command: Command, value: Any) -> None:
        self._pending.pop(command.position, None)
        if not command.future.done():
            command.future.set_result(value)

    def _deliver(self, name: str, value: Any, entry: Entry) -> None:
        self._delivered[name].append((value, entry))
        self._history.tag_delivered(name, entry)
        for callback in list(self._handlers[name]):
            self._call_user(callback, value)
        queue = self._queues[name]
        queue.append((value, entry))
        for command in list(self._pending.values()):  # in position order: see _settle
            if command.future.done():
                continue
            if isinstance(command, ReceiveCommand) and command.name == name and queue:
                taken, taken_entry = queue.popleft()
                self._history.tag_taken(taken_entry, command.key)
                self._resolve(command, taken)
            elif isinstance(command, EnsureCommand) and self._check(command.predicate):
                self._resolve(command, True)

    def _check(self, predicate: Callable[[], bool]) -> bool:
        try:
            return bool(predicate())
        except Exception as exc:
            self._fatal = self._fatal or exc
            return False

    def _call_user(self, callback: Callable[[Any], object], value: Any) -> None:
        try:
            callback(value)
        except Exception as exc:
            self._fatal = self._fatal or exc

    def _ended(self) -> bool:
        return self._fatal is not None or (self._main is not None and self._main.done())

    def _settle(self) -> None:
        """Run the workflow until it blocks; when live, record what that produced."""
        self._loop.run_ready()
        if not self._live or self.outcome is not None:
            return
        if self._ended():
            self._record(self._terminal_event())
            return
        # Pending commands are in position order without a sort: each is added as issued,
        # with the next position (Primitives._register).
        for command in list(self._pending.values()):
            if (
                isinstance(command, TimedCommand)
                and command.seconds is not None
                and command.fire_at_ms is None
                and not command.future.done()
            ):
                fire_at = self._clock_ms + round(command.seconds * 1000)
                started = pb.TimerStarted(position=command.position, fire_at_ms=fire_at)
                self._record(pb.Event(timer_started=started))

    def _terminal_event(self) -> pb.Event:
        assert self._main is not None
        return terminal_event(
            self._main,
            self._fatal,
            run_id=self.run_id,
            started=self.started,
            max_payload=self.max_payload,
        )


async def _raise(error: Exception) -> NoReturn:
    raise error
