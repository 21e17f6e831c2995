"""
``Primitives``: what workflow code calls through its :class:`~.context.Context`. Each
call gets the next position and becomes a command whose future the log (or, live, the
agent) resolves; see :mod:`~substantial._engine.applier`.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from substantial._core import constants
from substantial._core.attributes import AttributeValue
from substantial._core.runids import derived_run_id
from substantial._engine.applier import EventApplier
from substantial._engine.children import ChildHandle
from substantial._engine.commands import (
    ChildCommand,
    Command,
    EnsureCommand,
    ReceiveCommand,
    SaveCommand,
    SleepCommand,
    callable_name,
)
from substantial._engine.context import Context
from substantial._engine.outcome import ContinueAs, Reverted, Suspend
from substantial.errors import CompensationFailed, StepFailed
from substantial.protocol import substantial_pb2 as pb

if TYPE_CHECKING:
    from substantial._core.retry import RetryPolicy
    from substantial._engine.workflow import Workflow

__all__ = ["Primitives"]


class Primitives(EventApplier):
    """The primitives a :class:`~.context.Context` forwards to (its ``Engine``)."""

    def __init__(
        self,
        run_id: str,
        workflow: Workflow[Any],
        *,
        max_payload: int = constants.MAX_PAYLOAD_BYTES,
    ) -> None:
        super().__init__(run_id, workflow, max_payload=max_payload)
        self.context = Context(self)
        #: The last value given to ``Context.set_status``, and whether there was one.
        self.custom_status: Any = None
        self.has_custom_status = False
        #: The run's search attributes as ``Context.set_attributes`` left them.
        self.attributes: dict[str, AttributeValue] = {}
        #: Answers ``Context.version`` gave, by change id.
        self.versions: dict[str, bool] = {}

    def _command_future(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.Future(loop=self._loop)
        if self._closing:
            future.set_exception(Suspend())
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
        limit: str | None = None,
    ) -> asyncio.Future[Any]:
        position = self._next_position  # _position(), less a call: one per step
        self._next_position = position + 1
        command = SaveCommand(
            position,
            self._command_future(),
            fn=fn,
            name=callable_name(fn),
            retry=retry,
            timeout=timeout,
            compensate_with=compensate_with,
            key=key or "",
            limit=limit or "",
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
            self._history.tag_taken(entry, command.key)
            command.future.set_result(value)
        return self._register(command)

    def ensure(self, predicate: Callable[[], bool]) -> asyncio.Future[Any]:
        command = EnsureCommand(self._position(), self._command_future(), predicate)
        if not command.future.done() and self._check(predicate):
            command.future.set_result(True)
        return self._register(command)

    def add_handler(
        self, name: str, callback: Callable[[Any], object], key: str | None = None
    ) -> None:
        self._handlers[name].append(callback)
        self._history.add_handler(name, key)
        for value, entry in list(self._delivered[name]):
            self._history.tag_handled(entry, key)
            self._call_user(callback, value)

    def compact(self) -> None:
        """
        Compact the history here, where the workflow's state is what replaying the
        compacted history gives; the agent stores it at a later commit.

        :raises CompactionError: if an unkeyed record follows a keyed one
        """
        if self._live:  # else: replaying a compaction already done
            self._history.compact()

    def set_status(self, value: Any) -> None:
        self.custom_status = value
        self.has_custom_status = True

    def set_attributes(self, attributes: dict[str, AttributeValue | None]) -> None:
        for name, value in attributes.items():
            if value is None:
                self.attributes.pop(name, None)
            else:
                self.attributes[name] = value

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
        raise Reverted()

    def continue_using(self, workflow: str, args: pb.Payload) -> NoReturn:
        raise ContinueAs(workflow, args)

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
