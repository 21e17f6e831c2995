"""
``Context``: the primitives a workflow calls.

Every method here is deterministic on replay: results recorded in the run's log are
returned as recorded, and anything new is recorded before the workflow moves past it.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, TypeVar, cast, overload

from substantial import _allow
from substantial._core.attributes import AttributeValue, check_attributes
from substantial._core.retry import RetryPolicy
from substantial._core.runids import check_run_id
from substantial._engine.children import ChildHandle
from substantial.codec import encode_payload

if TYPE_CHECKING:
    import asyncio
    import random

    from substantial._engine.workflow import Workflow
    from substantial.protocol import substantial_pb2 as pb

__all__ = ["Context", "Engine"]

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    """
    The execution a :class:`Context` belongs to, as the Context sees it: the run's state
    it reads and the primitives it forwards to, which number each call and check it
    against the log. :class:`substantial._engine.replay.Execution` is the one engine.
    """

    run_id: str
    workflow: Workflow[Any]
    max_payload: int
    #: Whether the workflow re-runs what an earlier wake-up already ran.
    replaying: bool
    #: The run's logical time: that of the last event applied.
    now_ms: int
    rng: random.Random

    def save(
        self,
        fn: Callable[[], Any],
        retry: RetryPolicy | None,
        timeout: float | None,
        compensate_with: Callable[[], Any] | None,
        key: str | None = None,
        limit: str | None = None,
    ) -> asyncio.Future[Any]: ...
    def sleep(self, seconds: float) -> asyncio.Future[Any]: ...
    def receive(
        self, name: str, timeout: float | None, key: str | None = None
    ) -> asyncio.Future[Any]: ...
    def add_handler(
        self, name: str, callback: Callable[[Any], object], key: str | None = None
    ) -> None: ...
    def ensure(self, predicate: Callable[[], bool]) -> asyncio.Future[Any]: ...
    def set_status(self, value: Any) -> None: ...
    def set_attributes(self, attributes: dict[str, AttributeValue | None]) -> None: ...
    def version(self, change_id: str) -> bool: ...
    async def revert(self) -> NoReturn: ...
    def continue_using(self, workflow: str, args: pb.Payload) -> NoReturn: ...
    async def start_child(
        self, workflow: str, args: pb.Payload, run_id: str | None, detached: bool
    ) -> ChildHandle[Any]: ...
    def compact(self) -> None: ...


class _ReplayAwareLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that stays silent while the run is replaying events already recorded."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(logging.getLogger("substantial.workflow"), {})
        self._engine = engine

    def isEnabledFor(self, level: int) -> bool:
        return not self._engine.replaying and self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("run_id", self._engine.run_id)
        extra.setdefault("workflow", self._engine.workflow.name)
        kwargs["extra"] = extra
        return f"[{self._engine.run_id}] {msg}", kwargs


class Context:
    """
    What a workflow function receives as its first argument.

    Workflow code must be deterministic: given the same recorded results and events it
    must call the same primitives in the same order. Side effects (network, files,
    clocks, randomness) belong inside :meth:`save`, or use :meth:`now`, :meth:`random`
    and :meth:`uuid4`, which replay their first answers.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._log = _ReplayAwareLogger(engine)

    @property
    def run_id(self) -> str:
        """This run's id."""
        return self._engine.run_id

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
        limit: str | None = None,
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
        limit: str | None = None,
    ) -> T: ...
    async def save(
        self,
        fn: Callable[[], Any],
        *,
        compensate_with: Callable[[], Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | timedelta | None = None,
        key: str | None = None,
        limit: str | None = None,
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
        :param limit: the name of a limit set with ``Conductor.set_limit``: each attempt
            waits for a free slot and rate token of it, durably (the run is released
            while it waits, status ``sleeping``); an unknown name limits nothing
        :return: the step's result, decoded from the log
        :raises StepFailed: when the step failed and has no attempts left (the same
            error on every replay)
        :raises CodecError: if the step's result cannot be encoded
        """
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        _allow.note_function(fn, return_only=True)
        return await self._engine.save(fn, retry, seconds, compensate_with, key, limit)

    async def sleep(self, duration: timedelta | float) -> None:
        """
        Sleep durably: the run is released and resumes after ``duration``, even if every
        agent restarts in between.

        :param duration: a ``timedelta`` or seconds
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
        if seconds < 0:
            raise ValueError(f"cannot sleep for a negative duration ({seconds}s)")
        await self._engine.sleep(seconds)

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
        return await self._engine.receive(name, seconds, key)

    def handle(
        self,
        name: str,
        callback: Callable[[Any], object] | Callable[[], object],
        *,
        key: str | None = None,
    ) -> None:
        """
        Call ``callback(value)`` for every event called ``name``: those that arrived
        before this call too, in arrival order, and each new one before the workflow
        continues past any primitive. A callback that takes no argument is called as
        ``callback()``: for events whose value does not matter, like ``"cancel"``.
        """
        self._engine.add_handler(name, _taking_value(callback), key)

    async def ensure(self, predicate: Callable[[], bool]) -> bool:
        """
        Wait until ``predicate()`` holds; it is checked now and after each event arrives.

        :return: ``True``
        """
        return bool(await self._engine.ensure(predicate))

    def now(self) -> datetime:
        """The run's current time (aware, UTC): the time of the last recorded event."""
        return datetime.fromtimestamp(self._engine.now_ms / 1000, UTC)

    def random(self) -> float:
        """A float in [0, 1) from the run's own seeded generator; replays identically."""
        return self._engine.rng.random()

    def uuid4(self) -> uuid.UUID:
        """A random UUID from the run's own seeded generator; replays identically."""
        return uuid.UUID(int=self._engine.rng.getrandbits(128), version=4)

    def set_status(self, value: Any) -> None:
        """
        Publish a small value (progress, a stage name) that ``Handle.query()`` returns
        from outside without replaying. Kept after each wake-up of the run.

        :raises CodecError: if ``value`` cannot be encoded or is over the payload limit
        """
        encode_payload(value, where="status", limit=self._engine.max_payload)  # fail here
        self._engine.set_status(value)

    def set_attributes(self, **attributes: str | int | float | None) -> None:
        """
        Set search attributes the run can be found by: ``substantial list --where
        customer=acme``, ``list_runs(backend, where={"customer": "acme"})``. Values are
        small strings and numbers; ``None`` removes one. Stored in plain text (not
        encrypted: they are meant to be searched), kept after each wake-up of the run.

        :raises InvalidAttribute: for a name that is not an identifier, or a value that
            is not a string (at most 256 characters), an int or a finite float
        """
        self._engine.set_attributes(check_attributes(attributes))

    def version(self, change_id: str) -> bool:
        """
        Branch safely on a code change under live runs.

        ``True`` where a run reaches this point with the new code, ``False`` where the
        run's log was recorded before the change. The answer is recorded, so it never
        flips. Once no live run answers ``False``
        (``substantial versions --app APP CHANGE_ID`` lists them), delete the old branch
        and the call.
        """
        return self._engine.version(change_id)

    async def revert(self) -> NoReturn:
        """
        Undo the run: run the ``compensate_with`` of every completed ``save``, newest
        first, each as a durable step with the step's retry policy, then end the run as
        *reverted* (``RunReverted`` from ``Handle.result()``).

        :raises CompensationFailed: if a compensation fails for good; the run then
            ends failed, naming both that error and the one being handled, if any
        """
        await self._engine.revert()

    async def continue_using(self, workflow: Workflow[Any], *args: Any, **kwargs: Any) -> NoReturn:
        """
        End this run and continue as a new run of ``workflow`` with a fresh log. Handles
        to this run follow the chain: ``result()`` waits for its end.

        :raises InvalidArguments: if the arguments do not fit ``workflow``
        :raises CodecError: if an argument cannot be encoded, or they are over the payload
            limit
        """
        workflow.check_arguments(args, kwargs)
        payload = encode_payload([list(args), kwargs], where="args", limit=self._engine.max_payload)
        self._engine.continue_using(workflow.name, payload)

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
        payload = encode_payload([list(args), kwargs], where="args", limit=self._engine.max_payload)
        return await self._engine.start_child(workflow.name, payload, run_id, detached)

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
        values, which brings it back to where it was; see :mod:`substantial._engine.compaction`.

        :raises CompactionError: if an unkeyed ``save``, ``sleep``, timeout or child
            comes after the first keyed record
        """
        self._engine.compact()


def _taking_value(
    callback: Callable[[Any], object] | Callable[[], object],
) -> Callable[[Any], object]:
    """``callback`` as a function of the event's value, which it may ignore."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # some builtins have none: they get the value
        return callback  # type: ignore[return-value]
    try:
        signature.bind(None)
    except TypeError:
        try:
            signature.bind()
        except TypeError:
            return callback  # type: ignore[return-value]  # calling it will say why
        takes_nothing = cast(Callable[[], object], callback)
        return lambda _value: takes_nothing()
    return callback  # type: ignore[return-value]
