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
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from substantial import compaction, constants
from substantial.codec import decode_payload, encode_payload
from substantial.commands import (
    C,
    ChildCommand,
    Command,
    EnsureCommand,
    ReceiveCommand,
    SaveCommand,
    SleepCommand,
    TimedCommand,
    callable_name,
    error_from_failure,
    failure_from_exception,
    same_step,
)
from substantial.context import ChildHandle, Context, RetryPolicy
from substantial.errors import (
    ChildRunIdTaken,
    CodecError,
    CompensationFailed,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    StepFailed,
)
from substantial.loop import DeterministicLoop
from substantial.protocol import substantial_pb2 as pb
from substantial.runids import derived_run_id
from substantial.workflow import Workflow

__all__ = ["TERMINAL_KINDS", "Execution", "SaveCommand", "failure_from_exception"]


class _Suspend(BaseException):
    """Unwinds a workflow coroutine the engine is done with. Never reaches user code's
    ``except Exception``."""


class _Reverted(BaseException):
    """Ends a workflow whose compensations ran."""


class _ContinueAs(BaseException):
    """Ends a workflow that continues as a new run."""

    def __init__(self, workflow: str, args: pb.Payload) -> None:
        super().__init__(workflow)
        self.workflow = workflow
        self.payload = args


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
}

TERMINAL_KINDS = frozenset({"completed", "failed", "cancelled", "reverted", "continued_as"})


class Execution:
    """One wake-up of one run: the workflow coroutine, its commands and its new events."""

    def __init__(
        self,
        run_id: str,
        workflow: Workflow[Any],
        *,
        max_payload: int = constants.MAX_PAYLOAD_BYTES,
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        #: The most bytes an encoded value this run writes may take.
        self.max_payload = max_payload
        self.context = Context(self)
        #: Whether the workflow code is re-running what an earlier wake-up already ran
        #: (``Context.log`` is silent then).
        self.replaying = True
        #: Whether new events are recorded (after :meth:`go_live`).
        self._live = False
        #: The run's logical time: that of the last event applied.
        self.now_ms = 0
        #: Events recorded by this wake-up that are not yet taken for committing.
        self.new_events: list[pb.Event] = []
        #: Events of this wake-up that the agent committed (kept by the agent).
        self.committed: list[pb.Event] = []
        #: The terminal event (completed, failed, ...) once the run has ended.
        self.outcome: pb.Event | None = None
        self.rng = random.Random()
        self.event_ids: set[str] = set()
        #: The run's Started event, once applied.
        self.started = pb.Started()
        #: The last value given to ``Context.set_status``, and whether there was one.
        self.custom_status: Any = None
        self.has_custom_status = False
        #: Answers ``Context.version`` gave, by change id.
        self.versions: dict[str, bool] = {}

        self._loop = DeterministicLoop(lambda: self.now_ms)  # type: ignore[abstract]
        self._main: asyncio.Task[Any] | None = None
        self._pending: dict[int, Command] = {}
        self._next_position = 0
        self._clock_ms = 0
        self._stored: list[pb.Event] = []
        self._cursor = 0
        self._queues: defaultdict[str, deque[tuple[Any, compaction.Entry]]] = defaultdict(deque)
        self._delivered: defaultdict[str, list[tuple[Any, compaction.Entry]]] = defaultdict(list)
        self._handlers: defaultdict[str, list[Callable[[Any], object]]] = defaultdict(list)
        self._compensations: list[SaveCommand] = []
        self._children: dict[str, asyncio.Future[Any]] = {}
        self._child_outcomes: dict[str, pb.ChildEnded] = {}
        self._fatal: BaseException | None = None
        self._cancel_requested = False
        self._closing = False
        #: Every event applied, with the slot it fills (see :mod:`substantial.compaction`).
        self.history: list[compaction.Entry] = []
        #: Whether the workflow called ``compact()`` since the last compaction.
        self.compact_requested = False
        #: How many times this wake-up compacted the history.
        self.compactions = 0
        self._order = 0
        self._compacted_size = 0
        self._checked = 0  # history entries compact() has checked
        self._keyed = False  # whether a checked entry was keyed
        self._handler_keys: dict[str, str] = {}

    # ---- the primitives, called from workflow code through Context ----

    def _command_future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._closing:
            future.set_exception(_Suspend())
        return future

    def _register(self, command: Command) -> asyncio.Future[Any]:
        if not command.future.done():
            self._pending[command.position] = command
        return command.future

    def _position(self) -> int:
        position = self._next_position
        self._next_position += 1
        return position

    def save(
        self,
        fn: Callable[[], Any],
        retry: RetryPolicy | None,
        timeout: float | None,
        compensate_with: Callable[[], Any] | None,
        key: str | None = None,
    ) -> asyncio.Future[Any]:
        command = SaveCommand(
            self._position(),
            self._command_future(),
            fn=fn,
            name=callable_name(fn),
            retry=retry,
            timeout=timeout,
            compensate_with=compensate_with,
            key=key or "",
        )
        return self._register(command)

    def sleep(self, seconds: float) -> asyncio.Future[Any]:
        return self._register(SleepCommand(self._position(), self._command_future(), seconds))

    def receive(
        self, name: str, timeout: float | None, key: str | None = None
    ) -> asyncio.Future[Any]:
        command = ReceiveCommand(
            self._position(), self._command_future(), timeout, name=name, key=key or ""
        )
        queue = self._queues[name]
        if queue and not command.future.done():
            value, entry = queue.popleft()
            self._took(command, entry)
            command.future.set_result(value)
        return self._register(command)

    def _took(self, command: ReceiveCommand, entry: compaction.Entry) -> None:
        if command.key:
            entry.cover = ("recv", command.key, entry.order)
        else:
            entry.received_unkeyed = True

    def ensure(self, predicate: Callable[[], bool]) -> asyncio.Future[Any]:
        command = EnsureCommand(self._position(), self._command_future(), predicate)
        if not command.future.done() and self._check(predicate):
            command.future.set_result(True)
        return self._register(command)

    def add_handler(
        self, name: str, callback: Callable[[Any], object], key: str | None = None
    ) -> None:
        self._handlers[name].append(callback)
        if key:
            self._handler_keys[name] = key
        for value, entry in list(self._delivered[name]):
            if key and entry.cover is None and not entry.received_unkeyed:
                entry.cover = ("handle", key, entry.order)
            self._call_user(callback, value)

    def compact(self) -> None:
        """
        Compact the history here, where the workflow's state is what replaying the
        compacted history gives; the agent stores it at a later commit.

        :raises CompactionError: if an unkeyed record follows a keyed one
        """
        if not self._live:
            return  # replaying a compaction already done
        fresh = self.history[self._checked :]
        self._keyed = compaction.check(self.run_id, fresh, self._keyed)
        self._checked = len(self.history)
        if len(self.history) < self._compacted_size + constants.COMPACT_MIN_RECORDS:
            return  # a later call compacts; any call is as good a point as another
        self.history = compaction.compacted(self.history)
        self._compacted_size = self._checked = len(self.history)
        self.compact_requested = True

    def take_compacted(self) -> list[pb.Event]:
        """The history as compacted at the last ``compact()``, plus what followed."""
        self.compact_requested = False
        self.compactions += 1
        return [entry.event for entry in self.history]

    def set_status(self, value: Any) -> None:
        self.custom_status = value
        self.has_custom_status = True

    def version(self, change_id: str) -> bool:
        """True where this code path is new to the run, False where the log predates it."""
        answer = self.versions.get(change_id)
        if answer is not None:
            return answer
        if self._cursor < len(self._stored):
            following = self._stored[self._cursor]
            answer = (
                following.WhichOneof("kind") == "version_marked"
                and following.version_marked.change_id == change_id
            )
            if answer:
                self._cursor += 1
        else:
            # At the live edge: the new code decides, and the answer is recorded. Not
            # through _record: this runs inside the workflow's own step.
            marker = pb.Event(version_marked=pb.VersionMarked(change_id=change_id))
            marker.at_ms = max(self._clock_ms, self.now_ms)
            self.new_events.append(marker)
            answer = True
        self.versions[change_id] = answer
        return answer

    async def revert(self) -> NoReturn:
        original = sys.exc_info()[1]
        for step in reversed(self._compensations):
            assert step.compensate_with is not None
            try:
                await self.save(step.compensate_with, step.retry, step.timeout, None)
            except StepFailed as exc:
                raise CompensationFailed(step.name, exc, original) from None
        raise _Reverted()

    def continue_using(self, workflow: str, args: pb.Payload) -> NoReturn:
        raise _ContinueAs(workflow, args)

    async def start_child(
        self, workflow: str, args: pb.Payload, run_id: str | None, detached: bool
    ) -> ChildHandle[Any]:
        position = self._position()
        child_id = run_id if run_id is not None else derived_run_id(self.run_id, f"-c{position}")
        command = ChildCommand(position, self._command_future(), workflow, args, child_id, detached)
        child_id = await self._register(command)  # the id the log recorded
        result = self._children.get(child_id)
        if result is None:
            result = self._children[child_id] = self._loop.create_future()
            ended = self._child_outcomes.pop(child_id, None)
            if ended is not None:
                self._end_child(result, ended)
        return ChildHandle(child_id, result)

    # ---- driving: replay ----

    def replay(self, events: Iterable[pb.Event]) -> None:
        """
        Apply the stored log. Afterwards the workflow is blocked at the point the log
        reaches, and the execution is still in replay mode; call :meth:`go_live` next.

        :raises NonDeterminismError: if the code and the log disagree
        """
        self._stored = list(events)
        self._cursor = 0
        while self._cursor < len(self._stored):
            event = self._stored[self._cursor]
            self._cursor += 1
            kind = event.WhichOneof("kind") or "?"
            if kind == "started" and self._cursor == len(self._stored):
                # Only a start is written by no agent: no wake-up ran the code after it.
                self.replaying = False
            if self._ended() and self.outcome is None:
                ended = self._terminal_event().WhichOneof("kind")
                if kind != ended:
                    code = "nothing more: the workflow had already " + (ended or "ended")
                    raise NonDeterminismError(self.run_id, None, _LOGGED.get(kind, kind), code)
            self._apply(event)

    def go_live(self, now_ms: int) -> None:
        """Leave replay mode: from now on new work is recorded in :attr:`new_events`."""
        self.replaying = False
        self._live = True
        self._clock_ms = now_ms
        self._settle()

    # ---- driving: live ----

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
        events, self.new_events = self.new_events, []
        return events

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

    def waiting_for_events(self) -> bool:
        waiting = any(
            isinstance(command, ReceiveCommand | EnsureCommand) and not command.future.done()
            for command in self._pending.values()
        )
        return waiting or any(not future.done() for future in self._children.values())

    def close(self) -> None:
        """Unwind the workflow coroutine, running its ``finally`` blocks but no new work."""
        self._closing = True
        self.replaying = True  # finally blocks run again on the next wake-up
        futures = [command.future for command in self._pending.values()]
        for future in [*futures, *self._children.values()]:
            if not future.done():
                future.set_exception(_Suspend())
        self._loop.run_ready()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_ready()
        self._pending.clear()

    # ---- applying events ----

    def _record(self, event: pb.Event) -> None:
        event.at_ms = max(self._clock_ms, self.now_ms)
        self.new_events.append(event)
        self._apply(event)

    def _apply(self, event: pb.Event) -> None:
        self.now_ms = max(self.now_ms, event.at_ms)
        entry = compaction.Entry(event, self._order)
        self._order += 1
        self.history.append(entry)
        kind = event.WhichOneof("kind")
        if kind == "started":
            self._on_started(event.started)
        elif kind == "step_completed":
            self._on_step_completed(event.step_completed, entry)
        elif kind == "step_attempt_failed":
            self._on_step_attempt_failed(event.step_attempt_failed, entry)
        elif kind == "timer_started":
            timed = self._expect(event.timer_started.position, TimedCommand, kind)
            timed.fire_at_ms = event.timer_started.fire_at_ms
        elif kind == "timer_fired":
            timed = self._expect(event.timer_fired.position, TimedCommand, kind)
            if isinstance(timed, ReceiveCommand):
                self._pending.pop(timed.position, None)
                timed.future.set_exception(
                    TimeoutError(f"no event {timed.name!r} within {timed.seconds:g}s")
                )
            else:
                self._resolve(timed, None)
        elif kind == "event_received":
            received = event.event_received
            if received.id in self.event_ids:
                return
            self.event_ids.add(received.id)
            self._deliver(received.name, decode_payload(received.value), entry)
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
        elif kind in TERMINAL_KINDS:
            self.outcome = event
        else:
            raise NonDeterminismError(
                self.run_id, None, f"an event this version cannot read ({kind})", "a known event"
            )
        self._settle()

    def _on_started(self, started: pb.Started) -> None:
        if self._main is not None:
            raise NonDeterminismError(self.run_id, None, "a second start", "one start")
        self.started = started
        arguments: Any = decode_payload(started.args)
        args, kwargs = arguments
        self.rng.seed(started.seed)
        coroutine = self.workflow.fn(self.context, *args, **kwargs)
        self._main = self._loop.create_task(coroutine)

    def _step_command(self, position: int, key: str, logged: str, name: str) -> SaveCommand:
        """The save a step record belongs to: by key for keyed steps, else by position."""
        if not key:
            return self._expect(position, SaveCommand, logged, name)
        keyed = [
            command
            for command in self._pending.values()
            if isinstance(command, SaveCommand) and command.key == key and not command.future.done()
        ]
        if not keyed or not same_step(name, keyed[0].name):
            waiting = ", ".join(c.describe() for c in self._pending.values() if not c.future.done())
            raise NonDeterminismError(
                self.run_id, position, f"{_LOGGED[logged]} of step {name!r} with key {key!r}",
                f"no save with that key; it is waiting on {waiting or 'nothing'}",
            )  # fmt: skip
        return min(keyed, key=lambda command: command.position)

    def _on_step_completed(self, step: pb.StepCompleted, entry: compaction.Entry) -> None:
        command = self._step_command(step.position, step.key, "step_completed", step.name)
        if step.key:
            entry.cover = ("save", step.key, command.position)
        if step.WhichOneof("outcome") == "failure":
            self._pending.pop(command.position, None)
            if not command.future.done():
                command.future.set_exception(error_from_failure(step.failure))
        else:
            if command.compensate_with is not None:
                self._compensations.append(command)
            self._resolve(command, decode_payload(step.result))

    def _on_step_attempt_failed(
        self, attempt: pb.StepAttemptFailed, entry: compaction.Entry
    ) -> None:
        command = self._step_command(
            attempt.position, attempt.key, "step_attempt_failed", attempt.name
        )
        if attempt.key:
            entry.cover = ("save", attempt.key, command.position)
        command.attempts = attempt.attempt
        command.retry_at_ms = attempt.retry_at_ms

    def _on_child_started(self, started: pb.ChildStarted) -> None:
        child = self._expect(started.position, ChildCommand, "child_started")
        # A log from before long derived ids were shortened holds the long form.
        legacy = f"{self.run_id}-c{child.position}"
        derived = child.run_id == derived_run_id(self.run_id, f"-c{child.position}")
        if child.run_id != started.run_id and not (derived and started.run_id == legacy):
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
            waiting = [c.describe() for c in self._pending.values() if not c.future.done()]
            code = "nothing at that position yet; it is waiting on " + (
                ", ".join(waiting) or "nothing recorded"
            )
        else:
            code = "a different primitive there"
        raise NonDeterminismError(self.run_id, position, what, code)

    def _resolve(self, command: Command, value: Any) -> None:
        self._pending.pop(command.position, None)
        if not command.future.done():
            command.future.set_result(value)

    def _deliver(self, name: str, value: Any, entry: compaction.Entry) -> None:
        self._delivered[name].append((value, entry))
        handler_key = self._handler_keys.get(name)
        if handler_key:
            entry.cover = ("handle", handler_key, entry.order)
        for callback in list(self._handlers[name]):
            self._call_user(callback, value)
        queue = self._queues[name]
        queue.append((value, entry))
        for command in sorted(self._pending.values(), key=lambda c: c.position):
            if command.future.done():
                continue
            if isinstance(command, ReceiveCommand) and command.name == name and queue:
                taken, taken_entry = queue.popleft()
                self._took(command, taken_entry)
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
        for command in sorted(self._pending.values(), key=lambda c: c.position):
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
        error = self._fatal
        if error is None and self._main.cancelled():
            return pb.Event(cancelled=pb.Cancelled())
        if error is None:
            error = self._main.exception()
        if isinstance(error, asyncio.CancelledError):
            return pb.Event(cancelled=pb.Cancelled())
        if isinstance(error, _Reverted):
            return pb.Event(reverted=pb.Reverted())
        if isinstance(error, _ContinueAs):
            root = self.started.chain_root or self.run_id
            next_id = derived_run_id(root, f".{self.started.chain_index + 1}")
            continued = pb.ContinuedAs(run_id=next_id, workflow=error.workflow, args=error.payload)
            return pb.Event(continued_as=continued)
        if error is None:
            try:
                result = encode_payload(self._main.result(), where="result", limit=self.max_payload)
            except CodecError as exc:
                error = exc
            else:
                return pb.Event(completed=pb.Completed(result=result))
        return pb.Event(failed=pb.Failed(failure=failure_from_exception(error)))


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
