"""
The agent: poll the schedule, lease a due run, replay it, execute new work, commit,
schedule its next wake-up, release. Any number of agents share one backend.

Clocks. Agents read their own wall clock (:func:`substantial._store.runs.now_ms`) for two
things only: whether a lease has expired, and whether a timer or schedule entry is due.
An agent whose clock is ``s`` ahead of another's sees that agent's leases expire ``s``
early and takes its runs over, so a step in flight may run again (at-least-once, as
after a crash); it also fires timers up to ``s`` early. An agent ``s`` behind sees leases
and timers ``s`` late, so work waits up to ``s`` longer, and its own leases look
expired to the others ``s`` early. Neither can corrupt a log or lose a run: every log
write is create-if-absent of the next segment number, which no clock decides, so a stale
agent's commit fails and it drops the run (``tests/test_agents.py`` runs agents at
-3, 0 and +3 lease lengths). Keep skew well under the lease length to avoid the repeats.
A lease expiring more than ``LEASE_MAX_AHEAD`` (5) lease lengths past a reader's clock
is treated as expired, so an agent that died with its clock a day ahead holds its runs
for one lease length, not a day; skew up to 4 lease lengths changes nothing else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from substantial._agent.endings import Endings
from substantial._agent.health import StoreTrouble
from substantial._agent.holdoffs import HoldOffs
from substantial._agent.limiter import Limiter
from substantial._agent.parts import AgentParts
from substantial._agent.poller import Poller
from substantial._agent.processor import RunProcessor
from substantial._agent.queues import ServedQueues
from substantial._agent.settings import AgentSettings, Setting
from substantial._agent.steps import StepRunner
from substantial._client.client import Client
from substantial._client.flow import FlowControl
from substantial._client.handle import Handle
from substantial._core import constants
from substantial._core.clock import Clock
from substantial._core.status import RunStatus
from substantial._engine.workflow import Workflow
from substantial._ops.listing import RunSummary, iter_runs
from substantial._payload_codecs import PayloadCodec, register_payload_codec
from substantial._store.payloads import PayloadPolicy
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Conductor"]

log = logging.getLogger("substantial.agent")
R = TypeVar("R")


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class Conductor(FlowControl):
    """
    Registers workflows, starts runs, and runs the agent that executes them.

    ::

        conductor = Conductor(FSBackend("./logs"))
        conductor.register(example)
        agent = conductor.run()                 # the agent, as an asyncio task
        handle = await conductor.start(example, 21)
        print(await handle.result())
        agent.cancel(); await agent

    or, with structured concurrency, ``async with Conductor(backend) as conductor:``
    runs the agent for the duration of the block.

    :param backend: a :class:`~substantial.backends.Backend`, or a URL for
        :func:`~substantial.backends.from_url`
    :param concurrency: how many runs this agent works on at once
    :param lease: how long this agent's claim on a run lasts unless renewed, in seconds
    :param park_retry: how long a run that no longer replays waits before a retry
    :param shutdown_grace: how long stopping the agent waits for in-flight steps
    :param name: this agent's name in leases and logs (default: host and pid)
    :param snapshot_every: compact a run's log into one snapshot object every this many
        segments, so resuming a long run does not read every segment (0: never)
    :param clock: where the agent reads the time; ``substantial.testing`` passes a
        virtual clock that jumps to the next timer when the agent is idle
    :param max_payload: the most bytes one encoded value may take: a run's arguments, an
        event's value sent through this conductor's handles, a step's or a run's result,
        a status; a larger one raises :class:`CodecError` before anything is written
    :param blob_threshold: a value whose stored bytes are larger than this is stored once
        as a content-addressed blob (``blobs/{sha256}``) and its log keeps the reference
    :param codecs: payload codecs applied in order to every stored value after the JSON
        codec, e.g. ``[ZstdCodec(), AESGCMCodec({"k1": key})]``; values written with
        other codecs or keys stay readable when those are registered too
    :param queues: the queues this agent serves (default: those of the workflows it
        registered, or ``["default"]`` while it registered none); it polls only their
        schedules, and claims only runs of workflows it registered
    """

    # Each lives in ``self._settings``, which every part of the agent reads.
    #: this agent's name in leases and logs
    name = Setting[str]()
    #: how many runs this agent works on at once
    concurrency = Setting[int]()
    #: how long a claim on a run lasts unless renewed, in seconds
    lease_seconds = Setting[float]()
    #: how long a run that no longer replays waits before a retry, in seconds
    park_retry = Setting[float]()
    #: how long stopping the agent waits for in-flight steps, in seconds
    shutdown_grace = Setting[float]()
    #: the longest wait between two polls of the schedule, in seconds
    poll_max = Setting[float]()
    #: compact a run's log into a snapshot every this many segments (0: never)
    snapshot_every = Setting[int]()

    def __init__(
        self,
        backend: Backend | str,
        *,
        concurrency: int = constants.CONCURRENCY,
        lease: float | timedelta = constants.LEASE_SECONDS,
        park_retry: float | timedelta = constants.PARK_RETRY_SECONDS,
        shutdown_grace: float | timedelta = constants.SHUTDOWN_GRACE_SECONDS,
        poll_interval: float | timedelta = constants.POLL_MAX_SECONDS,
        name: str | None = None,
        clock: Clock | None = None,
        snapshot_every: int = constants.SNAPSHOT_EVERY,
        max_payload: int = constants.MAX_PAYLOAD_BYTES,
        blob_threshold: int = constants.BLOB_THRESHOLD_BYTES,
        codecs: Sequence[PayloadCodec] = (),
        queues: list[str] | None = None,
    ) -> None:
        if isinstance(backend, str):
            from substantial.backends import from_url

            backend = from_url(backend)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if max_payload < 1:
            raise ValueError(f"max_payload must be at least 1 byte, got {max_payload}")
        if blob_threshold < 1:
            raise ValueError(f"blob_threshold must be at least 1 byte, got {blob_threshold}")
        for codec in codecs:
            register_payload_codec(codec)  # so this process reads what it writes
        self.backend = backend
        self.store = RunStore(backend, clock, PayloadPolicy(tuple(codecs), blob_threshold))
        self._settings = AgentSettings(
            name=name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}",
            concurrency=concurrency,
            lease_seconds=_seconds(lease),
            park_retry=_seconds(park_retry),
            shutdown_grace=_seconds(shutdown_grace),
            poll_max=max(_seconds(poll_interval), constants.POLL_MIN_SECONDS),
            snapshot_every=snapshot_every,
        )
        self._client = Client(self.store, max_payload=max_payload)
        self._limiter = Limiter(self.store)
        parts = AgentParts(
            settings=self._settings,
            client=self._client,
            holdoffs=HoldOffs(self._settings.park_retry),
            trouble=StoreTrouble(self._settings.name, log),
            steps=StepRunner(self._client),
            endings=Endings(self._client),
            limits=self._limiter,
        )
        self._processor = RunProcessor(parts)
        self._queues = ServedQueues(self._client, queues)
        self._poller = Poller(parts, self._processor, self._queues)
        self._serving = False
        self._tg_exit: Any = None

    @property
    def max_payload(self) -> int:
        """The most bytes one encoded value may take (see the class's parameters)."""
        return self._client.max_payload

    @max_payload.setter
    def max_payload(self, value: int) -> None:
        self._client.max_payload = value

    @property
    def blob_threshold(self) -> int:
        """The size from which a stored value goes to a blob (see the parameters)."""
        return self.store.payloads.blob_threshold

    @blob_threshold.setter
    def blob_threshold(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"blob_threshold must be at least 1 byte, got {value}")
        self.store.payloads = dataclasses.replace(self.store.payloads, blob_threshold=value)

    # ---- the client ----

    def register(self, *workflows: Workflow[Any], replace: bool = False) -> None:
        """
        Make workflows startable and runnable by this conductor's agent.

        :param replace: let a workflow take the place of a registered one of the same
            name (new code for its runs, as a deploy brings); without it that is an error
        :raises NotAWorkflow: for a function without ``@workflow``, or a name taken
        """
        self._client.register(*workflows, replace=replace)

    @property
    def workflows(self) -> list[Workflow[Any]]:
        """The registered workflows."""
        return list(self._client.registry.values())

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
        """
        Start a run of a registered workflow. Idempotent on ``run_id``: starting an id
        that exists returns a handle to that run and starts nothing.

        :param wf: the workflow, or a workflow name: a name this conductor has not
            registered starts a run for agents elsewhere, which check its arguments (a
            bad one fails the run with ``InvalidArguments``)
        :param run_id: the run's id (default: a random one); an idempotency key
        :param queue: the queue the run goes to (default: the workflow's own, or
            ``"default"`` for a workflow started by a name not registered here)
        :param concurrency_key: the key ``@workflow(concurrency_per_key=M)`` counts by
            (e.g. a tenant id): at most M runs of one key execute at once
        :param priority: 0-9; of the runs due in one queue, agents claim those of higher
            priority first (see "Flow control" in the README for how it meets limits)
        :raises ValueError: if ``priority`` is not an int from 0 to 9
        :raises UnknownWorkflow: if ``wf`` is a workflow not registered here
        :raises InvalidArguments: if the arguments do not fit the workflow's signature
        :raises CodecError: if an argument cannot be encoded, or the arguments are over
            the payload limit (checked before anything is written)
        """
        return await self._client.start(
            wf, *args, run_id=run_id, queue=queue, concurrency_key=concurrency_key,
            priority=priority, **kwargs,
        )  # fmt: skip

    def handle(self, run_id: str) -> Handle[Any]:
        """A handle to an existing run, from any process."""
        return self._client.handle(run_id)

    def runs(
        self,
        *,
        status: RunStatus | Iterable[RunStatus] | None = None,
        workflow: str | None = None,
        started_before: datetime | None = None,
        started_after: datetime | None = None,
        queue: str | None = None,
        page: int = 1000,
    ) -> AsyncIterator[RunSummary]:
        """
        The runs that match every filter given, as :class:`substantial.ops.RunSummary`
        values, in run id order: ``async for run in conductor.runs(status=...)``. Reads
        ``page`` runs' summaries per round, never their logs.

        :param status: only runs in this status (or one of these)
        :param workflow: only runs of this workflow name
        :param started_before: only runs started before this time
        :param started_after: only runs started at or after this time
        :param queue: only runs of this queue (``"default"``: those given none)
        """
        return iter_runs(self.backend, workflow, status, started_before, started_after,
                         queue=queue, read=page)  # fmt: skip

    # ---- the agent ----

    def run(self) -> asyncio.Task[None]:
        """
        Run the agent as an asyncio task in this process. Cancelling the task stops the
        agent gracefully; awaiting it afterwards raises nothing.
        """

        async def agent() -> None:
            try:
                await self.serve()
            except asyncio.CancelledError:
                return

        return asyncio.get_running_loop().create_task(
            agent(), name=f"substantial-agent-{self.name}"
        )

    async def __aenter__(self) -> Conductor:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg_exit = tg
        await tg.start(self.serve)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg_exit = self._tg_exit, None
        tg.cancel_scope.cancel()
        await tg.__aexit__(exc_type, exc, tb)

    async def _create_run(self, started: pb.Started) -> bool:
        return await self._client.create_run(started)

    @property
    def queues(self) -> list[str]:
        """
        The queues this conductor's agent serves (paused ones included). Set it to a
        list to serve those, or to None to serve the queues of the registered workflows.
        """
        return self._queues.names

    @queues.setter
    def queues(self, names: list[str] | None) -> None:
        self._queues = self._poller.queues = ServedQueues(self._client, names)

    @property
    def queues_given(self) -> list[str] | None:
        """The ``queues`` this conductor was given, or None (its workflows' queues)."""
        return self._queues.explicit

    def _forget_limit(self, name: str) -> None:
        self._limiter.forget(name)

    async def aclose(self) -> None:
        """Close the backend's connections."""
        await self.backend.aclose()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """
        The agent loop, for anyio task groups: ``await tg.start(conductor.serve)``.
        Returns or raises only through cancellation; stopping lets in-flight steps finish
        for up to ``shutdown_grace`` seconds, then releases every lease.
        """
        if self._serving:
            raise RuntimeError("this conductor's agent is already running")
        self._serving = True
        log.info("agent %s started", self.name)
        try:
            async with anyio.create_task_group() as work:
                task_status.started()
                try:
                    await self._poller.loop(work)
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._processor.drain()
        finally:
            self._serving = False
            log.info("agent %s stopped", self.name)

    async def _claim_due(self, work: TaskGroup) -> tuple[int, int | None]:
        """One poll of the schedule, as the agent loop does it (for tests)."""
        return await self._poller.claim_due(work)
