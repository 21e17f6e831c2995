"""
``ExecutionState``: what one wake-up of one run holds. The engine's other parts
(:mod:`~substantial._engine.applier`, :mod:`~substantial._engine.primitives`,
:mod:`~substantial._engine.replay`) each add one job on top of it.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from substantial._core import constants
from substantial._engine.compaction import Entry, History
from substantial._engine.loop import DeterministicLoop
from substantial.protocol import substantial_pb2 as pb

if TYPE_CHECKING:
    from substantial._engine.commands import Command, SaveCommand
    from substantial._engine.context import Context
    from substantial._engine.workflow import Workflow

__all__ = ["ExecutionState"]


class ExecutionState:
    """One wake-up of one run: the workflow coroutine, its commands and its new events."""

    #: What the workflow function receives (made by :class:`~.primitives.Primitives`).
    context: Context

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
        #: Whether the workflow code is re-running what an earlier wake-up already ran
        #: (``Context.log`` is silent then).
        self.replaying = True
        #: Whether new events are recorded (after ``go_live``).
        self._live = False
        #: The run's logical time: that of the last event applied.
        self.now_ms = 0
        #: The agent's clock at its last call: new events are stamped with it.
        self._clock_ms = 0
        #: Events recorded by this wake-up that are not yet taken for committing.
        self.new_events: list[pb.Event] = []
        #: Events of this wake-up that the agent committed (kept by the agent).
        self.committed: list[pb.Event] = []
        #: The terminal event (completed, failed, ...) once the run has ended.
        self.outcome: pb.Event | None = None
        self.rng = random.Random()
        #: Ids of the sent events, cancellations and child ends applied.
        self.event_ids: set[str] = set()
        #: The run's Started event, once applied.
        self.started = pb.Started()
        #: The stored log being replayed, and how far it has been applied.
        self._stored: list[pb.Event] = []
        self._cursor = 0
        #: Every event applied, each with the slot it fills.
        self._history = History(run_id)

        self._loop = DeterministicLoop(lambda: self.now_ms)  # type: ignore[abstract]
        self._main: asyncio.Task[Any] | None = None
        #: Commands the workflow issued that wait for the log, by position.
        self._pending: dict[int, Command] = {}
        self._next_position = 0
        self._queues: defaultdict[str, deque[tuple[Any, Entry]]] = defaultdict(deque)
        self._delivered: defaultdict[str, list[tuple[Any, Entry]]] = defaultdict(list)
        self._handlers: defaultdict[str, list[Callable[[Any], object]]] = defaultdict(list)
        self._compensations: list[SaveCommand] = []
        self._children: dict[str, asyncio.Future[Any]] = {}
        #: Ends of children whose start this log has not reached yet.
        self._child_outcomes: dict[str, pb.ChildEnded] = {}
        #: What a handler or an ``ensure`` predicate raised: it fails the run.
        self._fatal: BaseException | None = None
        self._cancel_requested = False
        self._closing = False

    @property
    def history(self) -> list[Entry]:
        """Every event applied, with the slot it fills (see :mod:`.compaction`)."""
        return self._history.entries

    @property
    def compact_requested(self) -> bool:
        """Whether the workflow compacted its history since the agent last took it."""
        return self._history.compact_requested

    @property
    def compactions(self) -> int:
        """How many times this wake-up compacted the history."""
        return self._history.compactions
