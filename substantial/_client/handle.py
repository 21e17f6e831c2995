"""The client side of a run: send it events, read its status, history and result."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import anyio

from substantial._client import forking
from substantial._core.constants import (
    MAX_PAYLOAD_BYTES,
    RESULT_POLL_MAX_SECONDS,
    RESULT_POLL_MIN_SECONDS,
)
from substantial._core.notify import Notifier, Watch
from substantial._core.status import STATUS_FROM_PB, RunStatus
from substantial._store import forks, hints
from substantial._store.runs import Route, RunStore, check_run_id
from substantial.codec import decode_payload, encode_payload
from substantial.errors import (
    BackendUnavailable,
    RunCancelled,
    RunFailed,
    RunFinished,
    RunNotFound,
    RunReverted,
    RunTerminated,
)
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Handle", "HistoryEvent"]

log = logging.getLogger("substantial.client")

R = TypeVar("R")


@dataclass(frozen=True)
class HistoryEvent:
    """
    One event of a run's log, decoded for people and tools.

    :ivar segment: the log segment it was recorded in; ``-1`` for an event of kind
        ``forked``, which is not in the log: a fork of this run (``run_id``, ``step``,
        ``retry``), recorded beside it
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
        created: Watch | None = None,
        taken: bool = False,
        max_payload: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self._store = store
        self._max_payload = max_payload
        self._notifier = notifier or Notifier()
        self.run_id = check_run_id(run_id)
        # Set by a local start() that created the run: the notifier's watch of the run,
        # from before it was written. Until it fires the run is known to be pending, so
        # result() waits on it before its first read; ``taken``: this process's agent
        # took the run at its start, and tells its end, so result() waits longer.
        self._created = created
        self._first_wait = RESULT_POLL_MAX_SECONDS if taken else RESULT_POLL_MIN_SECONDS

    def __repr__(self) -> str:
        return f"<Handle run_id={self.run_id!r}>"

    async def send(self, name: str, value: object = None) -> None:
        """
        Deliver an event to this run; it sees it at its next ``receive``/``handle``.

        :param name: the name ``c.receive()`` or ``c.handle()`` listens on
        :raises CodecError: if ``value`` cannot be encoded, or is over the payload limit
            (checked before anything is written)
        :raises RunNotFound: if the run does not exist
        :raises RunFinished: if the run has ended already
        """
        payload = encode_payload(value, where=f"event {name!r}", limit=self._max_payload)
        entry = pb.InboxEntry(name=name, value=payload)
        await self._post(entry, f"event {name!r}")

    async def cancel(self) -> None:
        """
        Ask the run to stop: ``asyncio.CancelledError`` is raised in the workflow at its
        current primitive, so its ``finally`` blocks (and steps in them) run; the run then
        ends ``CANCELLED``.

        :raises RunNotFound: if the run does not exist
        :raises RunFinished: if the run has ended already
        """
        await self._post(pb.InboxEntry(cancel=True), "the cancellation")

    async def terminate(self, reason: str = "") -> None:
        """
        End the run at once as ``terminated``, without running any more of its code:
        no ``finally`` block, no compensation. The way out for a run nobody can replay
        (its workflow is gone, or its code no longer fits its log). The next agent that
        polls carries it out, whether or not it knows the workflow; a step running then
        finishes first. Children that are not detached are cancelled, and a parent
        hears of it as a :class:`~substantial.RunTerminated` error.

        :param reason: kept in the log, shown by ``substantial show``
        :raises RunNotFound: if the run does not exist
        :raises RunFinished: if the run has ended already
        """
        request = pb.TerminateRequest(reason=reason)
        await self._post(pb.InboxEntry(terminate=request), "the termination", any_agent=True)

    async def pause(self) -> None:
        """
        Pause the run: once an agent has taken the request (status ``paused``), no agent
        runs its code until :meth:`resume`. A step running then finishes first. The run
        still accepts events (and cancellations), which wait in its inbox; timers that
        fall due meanwhile fire on resume. Any agent of the run's queue carries it out,
        whether or not it knows the workflow. Pausing a paused run changes nothing.

        :raises RunNotFound: if the run does not exist
        :raises RunFinished: if the run has ended already
        """
        change = pb.PauseChange(paused=True)
        await self._post(pb.InboxEntry(pause_change=change), "the pause", any_agent=True)

    async def resume(self) -> None:
        """
        Resume a paused run where it was: events that arrived meanwhile are merged in
        the order they were sent, and due timers fire. Resuming a run that is not paused
        changes nothing.

        :raises RunNotFound: if the run does not exist
        :raises RunFinished: if the run has ended already
        """
        await self._post(pb.InboxEntry(pause_change=pb.PauseChange(paused=False)), "the resume")

    async def fork(self, at_step: int, run_id: str | None = None) -> Handle[R]:
        """
        Start a new run whose log is this run's up to, not including, the first record of
        the step at position ``at_step`` (``#N`` in ``substantial show``): that step and
        what follows run again with the code agents have today; what came before is
        replayed, not re-executed. This run is never written; its ``history()`` and
        ``substantial show`` list its forks, and the fork's start names this run.

        Events recorded before the cut (sent events, timers, steps of other positions
        that finished first) stay in the fork. A fork whose code no longer replays the
        copied prefix is parked with the usual ``NonDeterminismError`` reason.

        :param at_step: the position to cut at: a ``save``, ``sleep``, ``receive`` with a
            timeout, or child, whose position the log records
        :param run_id: the fork's id (default: a random one); forking again with the same
            id and step returns the same fork
        :raises ForkError: if nothing is recorded at ``at_step``, the history before it
            was compacted, a child started before it had not ended by then, or ``run_id``
            names another run
        :raises RunNotFound: if this run does not exist
        """
        fork_id = await forking.fork(self._store, self.run_id, at_step, run_id)
        return self._other(fork_id)

    async def retry(self, run_id: str | None = None) -> Handle[R]:
        """
        Fork a failed run at the step it failed at, so that step and the rest run again
        with today's code (deploy the fix first): :meth:`fork` at the step whose failure
        failed the run, or, for a run that failed in its own code, at the end of its log.

        :param run_id: the fork's id (default: ``{run}-retry``, so retrying twice makes
            one fork, and a bulk retry that was interrupted can simply run again)
        :raises ForkError: if the run has not failed, or as :meth:`fork`
        :raises RunNotFound: if this run does not exist
        """
        fork_id = await forking.retry(self._store, self.run_id, run_id)
        return self._other(fork_id)

    def _other(self, run_id: str) -> Handle[Any]:
        self._notifier.kick()
        return Handle(self._store, run_id, self._notifier, max_payload=self._max_payload)

    async def _post(self, entry: pb.InboxEntry, what: str, *, any_agent: bool = False) -> None:
        meta = await self._require_meta()
        status = STATUS_FROM_PB.get(meta.status)
        if status is not None and status.finished:
            # The summary is a hint: only an end the log has refuses the event. A run
            # that ends between this check and the write below drops it, as it would
            # had it arrived a moment later.
            end = await hints.log_end(self._store, self.run_id, meta)
            if end is not None:
                kind = end.WhichOneof("kind") or ""
                continued = end.continued_as.run_id if kind == "continued_as" else ""
                raise RunFinished(self.run_id, kind, what, continued)
        entry.id = _event_id()
        entry.sent_at_ms = self._store.clock.now_ms()
        route = Route.of(meta.queue, meta.workflow, meta.priority)
        await self._store.post(self.run_id, entry, route.any_agent() if any_agent else route)
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
        :raises RunTerminated: if the run was ended with ``terminate()``
        :raises TimeoutError: if ``timeout`` passed first
        :raises RunNotFound: if the run does not exist

        A storage outage while it waits is waited out (logged once), as agents do.
        A run that continued as a new run (``continue_using``) is followed to the end of
        its chain. The outcome is read from the run's log: its summary only says when to
        look (one extra read), and a summary that claims an end the log does not have is
        ignored, and rewritten by an agent.
        """
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            return await self._wait_for_result()
        raise TimeoutError(f"run {self.run_id!r} has not finished after {timeout:g}s")

    async def _wait_for_result(self) -> R:
        delay = RESULT_POLL_MIN_SECONDS
        run_id = self.run_id
        watch, self._created = self._created, None
        if watch is not None and not watch.is_set():
            with anyio.move_on_after(self._first_wait):
                await watch.wait()
        repaired: set[str] = set()
        outage = False
        while True:
            # The end this process's agent committed to the log, if a watch told it.
            end = watch.end if watch is not None else None
            watch = self._notifier.watch(run_id)
            if end is None:
                try:
                    finished, end = await self._read_end(run_id)
                except BackendUnavailable as exc:  # waited out, like the agents do
                    if not outage:
                        log.warning("waiting for run %s: %s; retrying", run_id, exc)
                    outage = True
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RESULT_POLL_MAX_SECONDS)
                    continue
                outage = False
            else:
                finished = True
            if end is not None and end.WhichOneof("kind") == "continued_as":
                run_id = end.continued_as.run_id
                delay = RESULT_POLL_MIN_SECONDS
                watch = None
                continue
            if end is not None:
                return _outcome(run_id, end)  # type: ignore[no-any-return]
            if finished and run_id not in repaired:
                # It says the run ended and the log does not: an agent rewrites it.
                repaired.add(run_id)
                route = await self._store.route_of(run_id)
                await self._store.schedule(run_id, self._store.clock.now_ms(), "fix", route)
                self._notifier.kick()
            with anyio.move_on_after(delay):
                await watch.wait()
            delay = min(delay * 2, RESULT_POLL_MAX_SECONDS)

    async def _read_end(self, run_id: str) -> tuple[bool, pb.Event | None]:
        """Whether the summary says the run ended, and the end its log holds if so."""
        meta = await self._require_meta(run_id)
        status = STATUS_FROM_PB.get(meta.status)
        # The summary is a hint: an end it reports is taken from the log.
        finished = status is not None and status.finished
        return finished, await hints.log_end(self._store, run_id, meta) if finished else None

    async def history(self) -> list[HistoryEvent]:
        """
        The run's stored log, decoded, then one ``forked`` entry per fork of it (not in
        the log: see :class:`HistoryEvent`). A fork's own ``started`` entry names its
        original (``forked_from``, ``fork_step``).

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
        for fork in await forks.forks_of(self._store, self.run_id):
            at = datetime.fromtimestamp(fork.at_ms / 1000, UTC)
            details = {"run_id": fork.run_id, "step": fork.step, "retry": fork.retry}
            history.append(HistoryEvent(-1, at, "forked", details))
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


def _outcome(run_id: str, end: pb.Event) -> Any:
    """The result a run's terminal event (not a continuation) gives, or the error it raises."""
    kind = end.WhichOneof("kind")
    if kind == "completed":
        return decode_payload(end.completed.result)
    if kind == "failed":
        failure = end.failed.failure
        raise RunFailed(run_id, failure.type, failure.message, failure.traceback)
    if kind == "cancelled":
        raise RunCancelled(run_id)
    if kind == "reverted":
        raise RunReverted(run_id)
    if kind == "terminated":
        raise RunTerminated(run_id, end.terminated.reason)
    raise AssertionError(f"run {run_id}: {kind!r} is no end")


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
