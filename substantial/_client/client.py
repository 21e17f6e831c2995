"""
The client: register workflows, start runs, hand out handles. Works with no agent in the
process; the agent of a :class:`~substantial.Conductor` uses it to start continuations
and children, and to look up the workflows it may run.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import anyio

from substantial._client.handle import Handle
from substantial._core.notify import Notifier
from substantial._engine.workflow import Workflow
from substantial._store.keys import DEFAULT_QUEUE, Route, check_name
from substantial._store.runs import Lease, RunStore, ScheduleEntry, StoredLog, check_run_id
from substantial.codec import encode_payload
from substantial.errors import CodecError, NotAWorkflow, UnknownWorkflow
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Client", "LocalAgent", "NewRun"]

log = logging.getLogger("substantial.client")

R = TypeVar("R")


@dataclass(frozen=True)
class NewRun:
    """A run as the start that created it wrote it: what its first wake-up would read."""

    #: its log: segment 0, the start
    stored: StoredLog
    #: its summary and that summary's version (None, None: not written)
    meta: pb.RunMeta | None
    version: str | None


class LocalAgent(Protocol):
    """
    The agent of this process, as a start sees it: it may take a run the start writes
    at once, under a lease the start takes in its name, so that no poll, claim or read
    of the run stands between the start and its first step.
    """

    @property
    def owner(self) -> str:
        """The name leases are taken in."""

    @property
    def lease_ms(self) -> int:
        """How long the lease a start takes lasts (ms)."""

    def reserve(self, run_id: str, route: Route) -> bool:
        """Whether the agent will take this run: if so, it keeps a place for it."""

    def hand(self, lease: Lease, entry: ScheduleEntry, new: NewRun | None) -> bool:
        """Start the run's wake-up (``new``: the run as just written); False if it cannot."""

    def unreserve(self, run_id: str) -> None:
        """Give up the place :meth:`reserve` kept."""


class Client:
    """
    Starts runs of registered workflows on one store and hands out :class:`Handle` s.

    :param store: where runs live
    :param max_payload: the most bytes one encoded value may take (arguments, events)
    """

    def __init__(self, store: RunStore, *, max_payload: int) -> None:
        self.store = store
        self.max_payload = max_payload
        #: Registered workflows by name.
        self.registry: dict[str, Workflow[Any]] = {}
        #: Wakes a local agent on start and send, and local result() waiters on a change.
        self.notifier = Notifier()
        #: Runs this client is writing right now: a local agent leaves them alone.
        self.starting: set[str] = set()
        #: The agent of this process while it serves, which takes the runs started here.
        self.local_agent: LocalAgent | None = None
        #: Queues this process saw paused (its agent's last polls, its own pauses).
        self.paused_queues: set[str] = set()

    def register(self, *workflows: Workflow[Any], replace: bool = False) -> None:
        """
        Make workflows startable (and runnable by a local agent).

        :param replace: let a workflow take the place of another of the same name (new
            code for the same runs, as a deploy would bring)
        :raises NotAWorkflow: for a function without ``@workflow``, or a second workflow
            under a name already registered (without ``replace``)
        """
        for wf in workflows:
            _require_workflow(wf, "register()")
            known = self.registry.get(wf.name)
            if known is not None and known.fn is not wf.fn and not replace:
                raise NotAWorkflow(
                    f"two workflows named {wf.name!r}: {_where(known)} and {_where(wf)}; "
                    "give one another name with @workflow(name=...), or register(..., "
                    "replace=True) to put new code in the place of the old"
                )
            if wf.fn.__module__ == "__main__" and wf.name.startswith("__main__."):
                log.warning(
                    "workflow %r is named after the script that defines it: a worker that "
                    "imports the file (--app) knows it by another name and never runs these "
                    "runs; give it a name with @workflow(name=...)",
                    wf.name,
                )
            self.registry[wf.name] = wf

    def lookup(self, wf: Workflow[Any] | str) -> Workflow[Any]:
        """
        The registered workflow of that name.

        :raises UnknownWorkflow: if it is not registered
        """
        name = wf if isinstance(wf, str) else wf.name
        found = self.registry.get(name)
        if found is None:
            raise UnknownWorkflow(name, list(self.registry))
        return found

    async def start(
        self,
        wf: Workflow[R] | str,
        *args: Any,
        run_id: str | None = None,
        queue: str | None = None,
        concurrency_key: str | None = None,
        priority: int = 0,
        **kwargs: Any,
    ) -> Handle[R]:
        """Start a run; see :meth:`substantial.Conductor.start`."""
        if isinstance(wf, str) and wf not in self.registry:
            # Started by name from a process without its code: the agent that runs it
            # checks the arguments (a bad one fails the run with InvalidArguments).
            name = wf
        else:
            workflow = self.lookup(_require_workflow(wf, "start()"))
            workflow.check_arguments(args, kwargs)
            name = workflow.name
        try:
            payload = encode_payload([list(args), kwargs], where="args", limit=self.max_payload)
        except CodecError:
            _name_the_argument(self.registry.get(name), args, kwargs)
            raise
        run_id = check_run_id(run_id) if run_id is not None else uuid.uuid4().hex
        changed = self.notifier.watch(run_id)  # before the agent can see the run
        started = pb.Started(run_id=run_id, workflow=name, args=payload)
        if queue is not None:
            started.queue = check_name(queue, "queue")
        if concurrency_key is not None:
            started.concurrency_key = concurrency_key
        if not (isinstance(priority, int) and 0 <= priority <= 9):
            raise ValueError(f"priority must be an int from 0 to 9, got {priority!r}")
        started.priority = priority
        created, taken = await self._create(started)
        return Handle(
            self.store,
            run_id,
            self.notifier,
            created=changed if created else None,
            taken=taken,
            max_payload=self.max_payload,
        )

    async def create_run(self, started: pb.Started) -> bool:
        """
        Write a new run (schedule entry, segment 0, summary), or nothing if it exists.

        :return: whether this call created it
        """
        created, _ = await self._create(started)
        return created

    async def _create(self, started: pb.Started) -> tuple[bool, bool]:
        """:meth:`create_run`; and whether this process's agent took the run at once."""
        run_id = started.run_id
        at = self.store.clock.now_ms()
        started.seed = os.urandom(16)
        registered = self.registry.get(started.workflow)
        if not started.queue and registered is not None and registered.queue != DEFAULT_QUEUE:
            started.queue = registered.queue
        route = Route.of(started.queue, started.workflow, started.priority)
        agent = self.local_agent
        if agent is not None and not agent.reserve(run_id, route):
            agent = None
        self.starting.add(run_id)  # the local agent leaves it alone until it is written
        lease: Lease | None = None
        taken = False
        try:
            # Schedule first: a start that dies after writing segment 0 still gets run.
            # A run the local agent takes is due when the lease taken for it expires:
            # no other agent looks at it before, and any does if this process dies.
            # The lease goes with it: one left by a start that died before the entry is
            # written only expires.
            # Where the first agent after a reboot wakes every unfinished run, the entry
            # need not be flushed: a crash that undoes it is followed by that wake-up.
            durable = not await self.store.hints_recovered()
            if agent is None:
                entry = await self.store.schedule(run_id, at, "s", route, durable=durable)
            else:
                entry, lease = await _both(
                    self.store.schedule(run_id, at + agent.lease_ms, "s", route, durable=durable),
                    self.store.acquire(run_id, agent.owner, agent.lease_ms),
                )
            event = pb.Event(at_ms=at, started=started)
            created = await self.store.append(run_id, 0, [event])
            meta, version = None, None
            if created:
                meta = pb.RunMeta(
                    run_id=run_id, workflow=started.workflow, args=started.args, created_ms=at,
                    updated_ms=at, status=pb.RUN_STATUS_PENDING, log_seq=0,
                    parent_run_id=started.parent_run_id, chain_root=started.chain_root,
                    queue=started.queue, priority=started.priority,
                )  # fmt: skip
                version = await self.store.write_meta(meta, current=(None, None))
            if agent is not None and lease is not None:
                new = NewRun(StoredLog([event], 0, [1], sealed=False), meta, version)
                taken = agent.hand(lease, entry, new if created else None)
        finally:
            self.starting.discard(run_id)
            if agent is not None and not taken:
                agent.unreserve(run_id)
        if agent is not None and not taken:  # no lease, or the agent stopped: any agent's now
            if lease is not None:
                await self.store.release(lease)
            await self.store.schedule(run_id, self.store.clock.now_ms(), "s", route)
        if not taken:
            self.notifier.kick()
        return created, taken

    def handle(self, run_id: str) -> Handle[Any]:
        """A handle to an existing run, from any process."""
        return Handle(self.store, run_id, self.notifier, max_payload=self.max_payload)


W = TypeVar("W", bound="Workflow[Any] | str")
A = TypeVar("A")
B = TypeVar("B")


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await both at once; an error of either is raised as itself (the first's first)."""
    results: list[Any] = [None, None]

    async def one(index: int, awaitable: Awaitable[Any]) -> None:
        try:
            results[index] = await awaitable
        except Exception as exc:  # raised below, not in an ExceptionGroup
            results[index] = _Failed(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 0, first)
        tg.start_soon(one, 1, second)
    for result in results:
        if isinstance(result, _Failed):
            raise result.error
    return results[0], results[1]


@dataclass(frozen=True)
class _Failed:
    error: Exception


def _require_workflow(wf: W, where: str) -> W:
    if isinstance(wf, Workflow | str):
        return wf
    what = getattr(wf, "__qualname__", None) or repr(wf)
    hint = "; decorate it with @workflow" if callable(wf) else ""
    raise NotAWorkflow(f"{where} takes a @workflow function or a workflow name, not {what}{hint}")


def _where(wf: Workflow[Any]) -> str:
    return f"{wf.fn.__module__}.{wf.fn.__qualname__}"


def _name_the_argument(
    workflow: Workflow[Any] | None, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Raise the codec's error for the first argument it cannot encode, by its name."""
    names = list(workflow.signature.parameters)[1:] if workflow is not None else []
    for index, value in enumerate(args):
        name = names[index] if index < len(names) else f"#{index}"
        encode_payload(value, where=f"argument {name!r}")
    for name, value in kwargs.items():
        encode_payload(value, where=f"argument {name!r}")
