"""
The client: register workflows, start runs, hand out handles. Works with no agent in the
process; the agent of a :class:`~substantial.Conductor` uses it to start continuations
and children, and to look up the workflows it may run.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, TypeVar

from substantial._client.handle import Handle
from substantial._core.notify import Notifier
from substantial._engine.workflow import Workflow
from substantial._store.runs import RunStore, check_run_id
from substantial.codec import encode_payload
from substantial.errors import UnknownWorkflow
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Client"]

R = TypeVar("R")


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

    def register(self, *workflows: Workflow[Any]) -> None:
        """Make workflows startable (and runnable by a local agent)."""
        for wf in workflows:
            if not isinstance(wf, Workflow):
                raise TypeError(f"register() takes @workflow functions, got {wf!r}")
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
        self, wf: Workflow[R] | str, *args: Any, run_id: str | None = None, **kwargs: Any
    ) -> Handle[R]:
        """Start a run; see :meth:`substantial.Conductor.start`."""
        workflow = self.lookup(wf)
        workflow.check_arguments(args, kwargs)
        payload = encode_payload([list(args), kwargs], where="args", limit=self.max_payload)
        run_id = check_run_id(run_id) if run_id is not None else uuid.uuid4().hex
        changed = self.notifier.watch(run_id)  # before the agent can see the run
        started = pb.Started(run_id=run_id, workflow=workflow.name, args=payload)
        created = await self.create_run(started)
        return Handle(
            self.store,
            run_id,
            self.notifier,
            created=changed if created else None,
            max_payload=self.max_payload,
        )

    async def create_run(self, started: pb.Started) -> bool:
        """
        Write a new run (schedule entry, segment 0, summary), or nothing if it exists.

        :return: whether this call created it
        """
        run_id = started.run_id
        at = self.store.clock.now_ms()
        started.seed = os.urandom(16)
        self.starting.add(run_id)  # the local agent leaves it alone until it is written
        try:
            # Schedule first: a start that dies after writing segment 0 still gets run.
            await self.store.schedule(run_id, at, "s")
            created = await self.store.append(run_id, 0, [pb.Event(at_ms=at, started=started)])
            if created:
                meta = pb.RunMeta(
                    run_id=run_id, workflow=started.workflow, args=started.args, created_ms=at,
                    updated_ms=at, status=pb.RUN_STATUS_PENDING, log_seq=0,
                    parent_run_id=started.parent_run_id, chain_root=started.chain_root,
                )  # fmt: skip
                await self.store.write_meta(meta, current=(None, None))
        finally:
            self.starting.discard(run_id)
        self.notifier.kick()
        return created

    def handle(self, run_id: str) -> Handle[Any]:
        """A handle to an existing run, from any process."""
        return Handle(self.store, run_id, self.notifier, max_payload=self.max_payload)
