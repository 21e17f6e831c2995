"""
``Context``: the primitives a workflow calls.

Every method here is deterministic on replay: results recorded in the run's log are
returned as recorded, and anything new is recorded before the workflow moves past it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar, overload

from substantial import _allow
from substantial.codec import encode_payload
from substantial.runids import check_run_id

if TYPE_CHECKING:
    import asyncio

    from substantial.replay import Execution
    from substantial.workflow import Workflow

__all__ = ["ChildHandle", "Context", "RetryPolicy"]

T = TypeVar("T")
R = TypeVar("R")


class ChildHandle(Generic[R]):
    """
    A child run started with :meth:`Context.start_child`, seen from its parent workflow.

    :ivar run_id: the child's run id
    """

    def __init__(self, run_id: str, outcome: asyncio.Future[Any]) -> None:
        self.run_id = run_id
        self._outcome = outcome

    def __repr__(self) -> str:
        return f"<ChildHandle run_id={self.run_id!r}>"

    async def result(self) -> R:
        """
        Wait for the child to end, durably.

        :raises RunFailed: if the child failed
        :raises RunCancelled: if the child was cancelled
        """
        result: R = await self._outcome
        return result


@dataclass(frozen=True)
class RetryPolicy:
    """
    How a failing ``save`` step is retried. Waits between attempts are durable: the run
    is released while it waits, and a crash does not reset the attempt count.

    :ivar max_attempts: attempts in all, the first one included (``1``: no retry)
    :ivar initial_interval: wait before the second attempt, in seconds
    :ivar backoff_coefficient: each further wait is this many times the previous one
    :ivar max_interval: the longest wait, in seconds
    :ivar non_retryable: exception types (or their names) that end the step at once
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    backoff_coefficient: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException] | str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ValueError("RetryPolicy intervals cannot be negative")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be at least 1")

    def delay_after(self, attempt: int) -> float:
        """The wait in seconds after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_interval * self.backoff_coefficient ** (attempt - 1)
        return float(min(delay, self.max_interval))

    def retries(self, error: BaseException, attempt: int) -> bool:
        """Whether a step that failed with ``error`` on ``attempt`` gets another attempt."""
        if attempt >= self.max_attempts:
            return False
        for kind in self.non_retryable:
            if isinstance(kind, str):
                if kind in (type(error).__name__, type(error).__qualname__):
                    return False
            elif isinstance(error, kind):
                return False
        return True


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that stays silent while the run is replaying events already recorded."""

    def __init__(self, execution: Execution) -> None:
        super().__init__(logging.getLogger("substantial.workflow"), {})
        self._execution = execution

    def isEnabledFor(self, level: int) -> bool:
        return not self._execution.replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("run_id", self._execution.run_id)
        extra.setdefault("workflow", self._execution.workflow.name)
        kwargs["extra"] = extra
        return f"[{self._execution.run_id}] {msg}", kwargs


class Context:
    """
    What a workflow function receives as its first argument.

    Workflow code must be deterministic: given the same recorded results and events it
    must call the same primitives in the same order. Side effects (network, files,
    clocks, randomness) belong inside :meth:`save`, or use :meth:`now`, :meth:`random`
    and :meth:`uuid4`, which replay their first answers.
    """

    def __init__(self, execution: Execution) -> None:
        self._execution = execution
        self._log = _ReplayAwareLogger(execution)

    @property
    def run_id(self) -> str:
        """This run's id."""
        return self._execution.run_id

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with the run id, silent while replaying recorded history."""
        return self._log

    @overload
    async def save(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        compensate_with: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        key: str | None = None,
    ) -> T: ...
    @overload
    async def save(
        self,
        fn: Callable[[], T],
        *,
        compensate_with: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        key: str | None = None,
    ) -> T: ...
    async def save(
        self,
        fn: Callable[[], Any],
        *,
        compensate_with: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        key: str | None = None,
    ) -> Any:
        """
        Run a step once and record its result; on replay, return the recorded result.

        The step may run more than once if an agent dies before recording it
        (at-least-once), but its result is recorded once and every replay sees it.

        :param fn: a function of no arguments, sync (run in a worker thread) or async;
            the classes its return annotation names may be in its result (see
            :func:`~substantial.codec.register_type` for others)
        :param compensate_with: the step's inverse, run by ``revert()``
        :param retry: how to retry a failing step; default: one attempt
        :param timeout: bound on one attempt, in seconds; an attempt that takes longer
            fails with ``TimeoutError``
        :param key: a slot name: ``compact()`` keeps only the newest result of each slot
        :return: the step's result, decoded from the log
        :raises StepFailed: when the step failed and has no attempts left (the same
            error on every replay)
        :raises CodecError: if the step's result cannot be encoded
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        _allow.note_function(fn, return_only=True)
        return await self._execution.save(fn, retry, seconds, compensate_with, key)

    async def sleep(self, duration: timedelta | float) -> None:
        """
        Sleep durably: the run is released and resumes after ``duration``, even if every
        agent restarts in between.

        :param duration: a ``timedelta`` or seconds
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if seconds < 0:
            raise ValueError(f"cannot sleep for a negative duration ({seconds}s)")
        await self._execution.sleep(seconds)

    async def receive(
        self, name: str, *, timeout: float | timedelta | None = None, key: str | None = None
    ) -> Any:
        """
        Wait for the next event called ``name`` that no earlier ``receive`` took.

        Events are taken in the order they arrived.

        :param timeout: give up after this long (a durable timer), in seconds
        :param key: a slot name: ``compact()`` keeps only the newest event it took
        :return: the event's value
        :raises TimeoutError: if ``timeout`` passed first
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        return await self._execution.receive(name, seconds, key)

    def handle(
        self, name: str, callback: Callable[[Any], object], *, key: str | None = None
    ) -> None:
        """
        Call ``callback(value)`` for every event called ``name``: those that arrived
        before this call too, in arrival order, and each new one before the workflow
        continues past any primitive.
        """
        self._execution.add_handler(name, callback, key)

    async def ensure(self, predicate: Callable[[], bool]) -> bool:
        """
        Wait until ``predicate()`` holds; it is checked now and after each event arrives.

        :return: ``True``
        """
        return bool(await self._execution.ensure(predicate))

    def now(self) -> datetime:
        """The run's current time (aware, UTC): the time of the last recorded event."""
        return datetime.fromtimestamp(self._execution.now_ms / 1000, UTC)

    def random(self) -> float:
        """A float in [0, 1) from the run's own seeded generator; replays identically."""
        return self._execution.rng.random()

    def uuid4(self) -> uuid.UUID:
        """A random UUID from the run's own seeded generator; replays identically."""
        return uuid.UUID(int=self._execution.rng.getrandbits(128), version=4)

    def set_status(self, value: Any) -> None:
        """
        Publish a small value (progress, a stage name) that ``Handle.query()`` returns
        from outside without replaying. Kept after each wake-up of the run.

        :raises CodecError: if ``value`` cannot be encoded or is over the payload limit
        """
        encode_payload(value, where="status", limit=self._execution.max_payload)  # fail here
        self._execution.set_status(value)

    def version(self, change_id: str) -> bool:
        """
        Branch safely on a code change under live runs.

        ``True`` where a run reaches this point with the new code, ``False`` where the
        run's log was recorded before the change. The answer is recorded, so it never
        flips. Once no live run answers ``False``
        (``substantial versions --app APP CHANGE_ID`` lists them), delete the old branch
        and the call.
        """
        return self._execution.version(change_id)

    async def revert(self) -> NoReturn:
        """
        Undo the run: run the ``compensate_with`` of every completed ``save``, newest
        first, each as a durable step with the step's retry policy, then end the run as
        *reverted* (``RunReverted`` from ``Handle.result()``).

        :raises CompensationFailed: if a compensation fails for good; the run then
            ends failed, naming both that error and the one being handled, if any
        """
        await self._execution.revert()

    async def continue_using(self, workflow: Workflow[Any], *args: Any, **kwargs: Any) -> NoReturn:
        """
        End this run and continue as a new run of ``workflow`` with a fresh log. Handles
        to this run follow the chain: ``result()`` waits for its end.

        :raises InvalidArguments: if the arguments do not fit ``workflow``
        :raises CodecError: if an argument cannot be encoded, or they are over the payload
            limit
        """
        workflow.check_arguments(args, kwargs)
        payload = encode_payload(
            [list(args), kwargs], where="args", limit=self._execution.max_payload
        )
        self._execution.continue_using(workflow.name, payload)

    async def start_child(
        self,
        workflow: Workflow[R],
        *args: Any,
        run_id: str | None = None,
        detached: bool = False,
        **kwargs: Any,
    ) -> ChildHandle[R]:
        """
        Start a child run and return a handle to await later. Children are cancelled
        when their parent ends, unless ``detached``.

        :param run_id: the child's run id (default: derived from this run and position);
            an idempotency key among this run's children
        :raises InvalidRunId: if ``run_id`` breaks the run-id rule (nothing is recorded)
        :raises ChildRunIdTaken: if ``run_id`` names an existing run that is not this
            run's child; that run is left alone
        :raises InvalidArguments: if the arguments do not fit ``workflow``
        :raises CodecError: if an argument cannot be encoded, or they are over the payload
            limit
        """
        if run_id is not None:
            check_run_id(run_id, f"child of run {self.run_id!r}")
        workflow.check_arguments(args, kwargs)
        payload = encode_payload(
            [list(args), kwargs], where="args", limit=self._execution.max_payload
        )
        return await self._execution.start_child(workflow.name, payload, run_id, detached)

    async def child(
        self,
        workflow: Workflow[R],
        *args: Any,
        run_id: str | None = None,
        detached: bool = False,
        **kwargs: Any,
    ) -> R:
        """
        Run a child workflow and return its result.

        :raises InvalidRunId: as :meth:`start_child`
        :raises ChildRunIdTaken: as :meth:`start_child`
        :raises RunFailed: if the child failed
        :raises RunCancelled: if the child was cancelled
        """
        handle = await self.start_child(workflow, *args, run_id=run_id, detached=detached, **kwargs)
        return await handle.result()

    def compact(self) -> None:
        """
        Bound this run's history: keep only the newest record of each ``key=`` slot
        (and drop events already taken), so a workflow that loops for ever stores and
        replays a fixed amount. The agent writes the compacted history as a snapshot
        and deletes the old segments. On replay the loop runs once more with the newest
        values, which brings it back to where it was; see :mod:`substantial.compaction`.

        :raises CompactionError: if an unkeyed ``save``, ``sleep``, timeout or child
            comes after the first keyed record
        """
        self._execution.compact()
