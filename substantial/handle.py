"""The client side of a run: send it events, read its status, history and result."""

from __future__ import annotations

import enum
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import anyio

from substantial import hints
from substantial.codec import decode_payload, encode_payload
from substantial.constants import (
    MAX_PAYLOAD_BYTES,
    RESULT_POLL_MAX_SECONDS,
    RESULT_POLL_MIN_SECONDS,
)
from substantial.errors import RunCancelled, RunFailed, RunNotFound, RunReverted
from substantial.protocol import substantial_pb2 as pb
from substantial.runs import RunStore, check_run_id

__all__ = ["Handle", "HistoryEvent", "Notifier", "RunStatus"]

R = TypeVar("R")


class RunStatus(str, enum.Enum):
    """Where a run is in its life."""

    #: started; no agent has picked it up yet
    PENDING = "pending"
    #: an agent is working on it, or it has steps left to run
    RUNNING = "running"
    #: waiting for a timer (a sleep or a retry)
    SLEEPING = "sleeping"
    #: waiting for an event
    WAITING = "waiting"
    #: finished with a result
    COMPLETED = "completed"
    #: finished with an error
    FAILED = "failed"
    #: cancelled
    CANCELLED = "cancelled"
    #: its code no longer replays its log; agents retry it after a pause
    PARKED = "parked"
    #: its compensations ran after ``revert()``
    REVERTED = "reverted"
    #: it continued as a new run (``continue_using``); handles follow the chain
    CONTINUED = "continued"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.REVERTED,
    RunStatus.CONTINUED,
}

STATUS_TO_PB = {
    RunStatus.PENDING: pb.RUN_STATUS_PENDING,
    RunStatus.RUNNING: pb.RUN_STATUS_RUNNING,
    RunStatus.SLEEPING: pb.RUN_STATUS_SLEEPING,
    RunStatus.WAITING: pb.RUN_STATUS_WAITING,
    RunStatus.COMPLETED: pb.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: pb.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: pb.RUN_STATUS_CANCELLED,
    RunStatus.PARKED: pb.RUN_STATUS_PARKED,
    RunStatus.REVERTED: pb.RUN_STATUS_REVERTED,
    RunStatus.CONTINUED: pb.RUN_STATUS_CONTINUED,
}
STATUS_FROM_PB = {value: key for key, value in STATUS_TO_PB.items()}


class Notifier:
    """
    In-process wake-ups: a local ``start``/``send`` wakes the local agent at once, and a
    run that changes state wakes local ``result()`` waiters, so nothing in one process
    waits for a poll interval.
    """

    def __init__(self) -> None:
        self._watchers: dict[str, anyio.Event] = {}
        self._kick = anyio.Event()

    def watch(self, run_id: str) -> anyio.Event:
        event = self._watchers.get(run_id)
        if event is None or event.is_set():
            event = self._watchers[run_id] = anyio.Event()
        return event

    def changed(self, run_id: str) -> None:
        event = self._watchers.pop(run_id, None)
        if event is not None:
            event.set()

    def kick(self) -> None:
        self._kick.set()

    async def wait_kick(self, timeout: float) -> None:
        with anyio.move_on_after(timeout):
            await self._kick.wait()
        if self._kick.is_set():
            self._kick = anyio.Event()


@dataclass(frozen=True)
class HistoryEvent:
    """
    One event of a run's log, decoded for people and tools.

    :ivar segment: the log segment it was recorded in
    :ivar at: when it was recorded
    :ivar kind: ``started``, ``step_completed``, ``timer_fired``, ``event_received``, ...
    :ivar details: the event's fields, with values decoded
    """

    segment: int
    at: datetime
    kind: str
    details: dict[str, Any] = field(default_factory=dict)


class Handle(Generic[R]):
    """
    A run, seen from outside. Works in any process that can reach the backend, with or
    without an agent in it.
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        notifier: Notifier | None = None,
        *,
        created: anyio.Event | None = None,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self._store = store
        self._max_payload = max_payload
        self._notifier = notifier or Notifier()
        self.run_id = check_run_id(run_id)
        # Set by a local start() that created the run: the notifier's event for the run,
        # watched from before it was written. Until it fires the run is known to be
        # pending, so result() waits on it before its first read.
        self._created = created

    def __repr__(self) -> str:
        return f"<Handle run_id={self.run_id!r}>"

    async def send(self, name: str, value: object = None) -> None:
        """
        Deliver an event to this run; it sees it at its next ``receive``/``handle``.

        :param name: the name ``c.receive()`` or ``c.handle()`` listens on
        :raises CodecError: if ``value`` cannot be encoded, or is over the payload limit
            (checked before anything is written)
        :raises RunNotFound: if the run does not exist
        """
        payload = encode_payload(value, where=f"event {name!r}", limit=self._max_payload)
        entry = pb.InboxEntry(name=name, value=payload)
        await self._post(entry)

    async def cancel(self) -> None:
        """
        Ask the run to stop: ``asyncio.CancelledError`` is raised in the workflow at its
        current primitive, so its ``finally`` blocks (and steps in them) run; the run then
        ends ``CANCELLED``.

        :raises RunNotFound: if the run does not exist
        """
        await self._post(pb.InboxEntry(cancel=True))

    async def _post(self, entry: pb.InboxEntry) -> None:
        await self._require_meta()
        entry.id = _event_id()
        entry.sent_at_ms = self._store.clock.now_ms()
        await self._store.post(self.run_id, entry)
        self._notifier.kick()

    async def status(self) -> RunStatus:
        """
        :raises RunNotFound: if the run does not exist
        """
        meta = await self._require_meta()
        return STATUS_FROM_PB.get(meta.status, RunStatus.PENDING)

    async def result(self, timeout: float | None = None) -> R:
        """
        Wait for the run to finish and return its result.

        :param timeout: seconds to wait at most; ``None`` waits for ever
        :raises RunFailed: if the run's log ends in a failure (type name, message, traceback)
        :raises RunCancelled: if the run was cancelled
        :raises RunReverted: if the run undid its steps with ``revert()``
        :raises TimeoutError: if ``timeout`` passed first
        :raises RunNotFound: if the run does not exist

        A run that continued as a new run (``continue_using``) is followed to the end of
        its chain. The outcome is read from the run's log: its summary only says when to
        look (one extra read), and a summary that claims an end the log does not have is
        ignored, and rewritten by an agent.
        """
        delay = RESULT_POLL_MIN_SECONDS
        run_id = self.run_id
        created, self._created = self._created, None
        with anyio.fail_after(math.inf if timeout is None else timeout):
            if created is not None and not created.is_set():
                with anyio.move_on_after(delay):
                    await created.wait()
            repaired: set[str] = set()
            while True:
                changed = self._notifier.watch(run_id)
                meta = await self._require_meta(run_id)
                status = STATUS_FROM_PB.get(meta.status)
                # The summary is a hint: an end it reports is taken from the log.
                finished = status in _FINISHED
                end = await hints.log_end(self._store, run_id, meta) if finished else None
                kind = end.WhichOneof("kind") if end is not None else None
                if kind == "completed":
                    assert end is not None
                    result: R = decode_payload(end.completed.result)  # type: ignore[assignment]
                    return result
                if kind == "failed":
                    assert end is not None
                    failure = end.failed.failure
                    raise RunFailed(run_id, failure.type, failure.message, failure.traceback)
                if kind == "cancelled":
                    raise RunCancelled(run_id)
                if kind == "reverted":
                    raise RunReverted(run_id)
                if kind == "continued_as":
                    assert end is not None
                    run_id = end.continued_as.run_id
                    delay = RESULT_POLL_MIN_SECONDS
                    continue
                if finished and run_id not in repaired:
                    # It says the run ended and the log does not: an agent rewrites it.
                    repaired.add(run_id)
                    await self._store.schedule(run_id, self._store.clock.now_ms(), "fix")
                    self._notifier.kick()
                with anyio.move_on_after(delay):
                    await changed.wait()
                delay = min(delay * 2, RESULT_POLL_MAX_SECONDS)

    async def history(self) -> list[HistoryEvent]:
        """
        The run's stored log, decoded.

        :raises RunNotFound: if the run does not exist
        :raises CorruptLog: if a segment cannot be read
        """
        stored = await self._store.read_log(self.run_id)
        if not stored.events:
            raise RunNotFound(self.run_id)
        history = []
        segment = 0
        for index, event in enumerate(stored.events):
            while index >= stored.segment_ends[segment]:
                segment += 1
            history.append(_describe(event, segment))
        return history

    async def query(self) -> Any:
        """
        The last value the workflow published with ``Context.set_status()``, or None.
        Read from the run's summary: nothing is replayed.

        :raises RunNotFound: if the run does not exist
        """
        meta = await self._require_meta()
        return decode_payload(meta.custom_status) if meta.HasField("custom_status") else None

    async def _require_meta(self, run_id: str | None = None) -> pb.RunMeta:
        run_id = run_id or self.run_id
        meta, _ = await hints.read_summary(self._store, run_id)
        if meta is not None:
            return meta
        stored = await self._store.read_log(run_id)  # none, or unreadable: the log says
        if not stored.events:
            raise RunNotFound(run_id)
        return hints.summary_from_log(run_id, stored)


_last_id_ns = 0


def _event_id() -> str:
    """
    A new event id that sorts after every id this process made before: the inbox lists
    events sent in one millisecond by id, and they must come out in the order they were sent.
    """
    global _last_id_ns
    _last_id_ns = max(time.time_ns(), _last_id_ns + 1)
    return f"{_last_id_ns:020d}{uuid.uuid4().hex[:12]}"


def _describe(event: pb.Event, segment: int) -> HistoryEvent:
    kind = event.WhichOneof("kind") or "unknown"
    body = getattr(event, kind)
    details: dict[str, Any] = {}
    if "position" in body.DESCRIPTOR.fields_by_name:  # 0 is a position, not "unset"
        details["position"] = body.position
    for descriptor, value in body.ListFields():
        if isinstance(value, pb.Payload):
            details[descriptor.name] = decode_payload(value)
        elif isinstance(value, pb.Failure):
            details[descriptor.name] = {"type": value.type, "message": value.message}
        else:
            details[descriptor.name] = value
    return HistoryEvent(segment, datetime.fromtimestamp(event.at_ms / 1000, UTC), kind, details)
