"""
Helpers for testing workflows.

``WorkflowEnvironment`` runs workflows in-process on the memory backend with a virtual
clock: when the agent has nothing to do, the clock jumps to the next timer, so a
workflow that sleeps for 30 days finishes in milliseconds::

    async with WorkflowEnvironment(reminder) as env:
        handle = await env.start(reminder, "alice")
        assert await handle.result() == "reminded alice"
        assert env.now() - started >= timedelta(days=30)

``Replayer`` checks workflow code against saved logs in a unit test, the way a deploy
gate would::

    Replayer(order).replay(handle_history_or_events)   # raises NonDeterminismError
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from substantial._client.handle import Handle
from substantial._conductor import Conductor
from substantial._core.clock import VirtualClock
from substantial._engine.replay import Execution
from substantial._engine.workflow import Workflow
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.backends.memory import MemoryBackend
from substantial.errors import UnknownWorkflow
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Replayer", "WorkflowEnvironment"]

R = TypeVar("R")


class WorkflowEnvironment:
    """
    An in-process conductor and agent on a virtual clock, for tests.

    :param workflows: the workflows to register
    :param backend: storage (default: a fresh :class:`MemoryBackend`)
    :param start: the virtual clock's starting time (default: now)
    :param skip_time: whether the clock jumps to the next timer whenever the agent is
        idle; turn off (or use :meth:`time_skipping`) while a test still has events to
        send that a timer must not overtake
    """

    def __init__(
        self,
        *workflows: Workflow[Any],
        backend: Backend | None = None,
        start: datetime | None = None,
        skip_time: bool = True,
    ) -> None:
        start_ms = None if start is None else round(start.timestamp() * 1000)
        self.clock = VirtualClock(start_ms, auto_advance=skip_time)
        self.backend = backend or MemoryBackend()
        self.conductor = Conductor(
            self.backend, clock=self.clock, lease=60, poll_interval=0.05, shutdown_grace=1
        )
        self.conductor.register(*workflows)

    async def __aenter__(self) -> WorkflowEnvironment:
        await self.conductor.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.conductor.__aexit__(exc_type, exc, tb)

    async def start(
        self, wf: Workflow[R] | str, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Handle[R]:
        """Start a run; see :meth:`Conductor.start`."""
        return await self.conductor.start(wf, *args, run_id=run_id, **kwargs)

    def handle(self, run_id: str) -> Handle[Any]:
        return self.conductor.handle(run_id)

    def now(self) -> datetime:
        """The virtual time."""
        return datetime.fromtimestamp(self.clock.now_ms() / 1000, UTC)

    @contextmanager
    def time_skipping(self, enabled: bool = True) -> Iterator[None]:
        """Turn time skipping on (or off) for the ``with`` block."""
        before = self.clock.auto_advance
        self.clock.auto_advance = enabled
        try:
            yield
        finally:
            self.clock.auto_advance = before


class Replayer:
    """
    Replays stored logs against the current workflow code, writing nothing.

    :param workflows: the code to check, found by each log's workflow name
    """

    def __init__(self, *workflows: Workflow[Any]) -> None:
        self._workflows = {wf.name: wf for wf in workflows}

    def replay(self, events: Iterable[pb.Event], run_id: str = "replay") -> pb.Event | None:
        """
        Replay one run's events.

        :return: the run's end event, if the log reached one
        :raises NonDeterminismError: if the code does not replay the log
        :raises UnknownWorkflow: if no workflow of the log's name was given
        """
        events = list(events)
        name = events[0].started.workflow if events else ""
        workflow = self._workflows.get(name)
        if workflow is None:
            raise UnknownWorkflow(name, list(self._workflows), run_id)
        execution = Execution(events[0].started.run_id or run_id, workflow)
        try:
            execution.replay(events)
        finally:
            execution.close()
        return execution.outcome

    def replay_segments(self, folder: str | Path) -> pb.Event | None:
        """Replay a run saved as segment files (``*.segment``, in name order)."""
        paths = sorted(Path(folder).glob("*.segment"))
        segments = [pb.Segment.FromString(path.read_bytes()) for path in paths]
        return self.replay(event for segment in segments for event in segment.events)

    async def replay_run(self, backend: Backend, run_id: str) -> pb.Event | None:
        """Replay a run stored on ``backend``."""
        stored = await RunStore(backend).read_log(run_id)
        return self.replay(stored.events, run_id)
