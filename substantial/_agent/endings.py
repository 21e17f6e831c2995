"""What a run sets off in other runs: children it starts, and what its end sets off."""

from __future__ import annotations

import logging

from substantial._client.client import Client
from substantial._core.runids import is_stored_run_id
from substantial._engine.commands import ChildCommand, failure_from_exception
from substantial._engine.replay import open_children
from substantial.errors import CorruptLog, RunNotFound, RunReverted, RunTerminated
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Endings"]

log = logging.getLogger("substantial.agent")


class Endings:
    """
    Starts a run's children, and does what a run's end sets off: its continuation
    starts, its parent hears of it, its children that are not detached are cancelled.
    Each is safe to repeat.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._store = client.store

    async def start_child(self, parent_run_id: str, child: ChildCommand) -> str | None:
        """
        Start a child run. If its id is taken, it is this parent's child only if that
        run's start names this parent (an agent died before recording the start).

        :return: None if the child is this parent's; else the parent of the run that
            holds the id (``""``: a top-level run), which is left alone
        """
        started = pb.Started(
            run_id=child.run_id,
            workflow=child.workflow,
            args=child.args,
            parent_run_id=parent_run_id,
            detached=child.detached,
        )
        if await self._client.create_run(started):
            return None
        try:
            stored = await self._store.read_log(child.run_id)
        except CorruptLog as exc:
            log.warning(
                "run %s: child id %r is taken by a run: %s", parent_run_id, child.run_id, exc
            )
            return ""
        if not stored.events:  # deleted since (gc): this wake-up fails, the next creates it
            raise RunNotFound(child.run_id)
        owner = stored.events[0].started.parent_run_id
        return None if owner == parent_run_id else owner

    async def after_end(self, run_id: str, events: list[pb.Event]) -> None:
        """Do what the end of run ``run_id`` (whose whole log is ``events``) sets off."""
        started = events[0].started
        last = events[-1]
        kind = last.WhichOneof("kind")
        now = self._store.clock.now_ms()
        posted = False
        if kind == "continued_as" and _names_run(run_id, last.continued_as.run_id):
            await self._start_continuation(run_id, started, last.continued_as)
        elif kind != "continued_as" and _names_run(run_id, started.parent_run_id):
            await self._tell_parent(run_id, started, last, now)
            posted = True
        for child_id in open_children(events):
            if not _names_run(run_id, child_id):
                continue
            cancel = pb.InboxEntry(id=f"parent-ended-{run_id}", sent_at_ms=now, cancel=True)
            await self._store.post(child_id, cancel)
            posted = True
        if posted:  # a local agent takes the parent or children at once (a start kicks itself)
            self._client.notifier.kick()

    async def _start_continuation(
        self, run_id: str, started: pb.Started, link: pb.ContinuedAs
    ) -> None:
        await self._client.create_run(
            pb.Started(
                run_id=link.run_id,
                workflow=link.workflow,
                args=link.args,
                continued_from=run_id,
                chain_root=started.chain_root or run_id,
                chain_index=started.chain_index + 1,
                parent_run_id=started.parent_run_id,
                detached=started.detached,
            )
        )

    async def _tell_parent(
        self, run_id: str, started: pb.Started, last: pb.Event, now: int
    ) -> None:
        kind = last.WhichOneof("kind")
        child_id = started.chain_root or run_id  # the id the parent knows
        ended = pb.ChildEnded(run_id=child_id, cancelled=kind == "cancelled")
        if kind == "completed":
            ended.result.CopyFrom(last.completed.result)
        elif kind == "failed":
            ended.failure.CopyFrom(last.failed.failure)
        elif kind == "reverted":
            ended.failure.CopyFrom(failure_from_exception(RunReverted(child_id)))
        elif kind == "terminated":
            error = RunTerminated(child_id, last.terminated.reason)
            ended.failure.CopyFrom(failure_from_exception(error))
        entry = pb.InboxEntry(id=f"child-ended-{child_id}", sent_at_ms=now, child_ended=ended)
        await self._store.post(started.parent_run_id, entry)


def _names_run(run_id: str, other: str) -> bool:
    """Whether an id that run ``run_id``'s log names can be a run (``""``: none named)."""
    if other and not is_stored_run_id(other):
        log.error("run %s: its log names run id %r, which breaks the run-id rule", run_id, other)
    return bool(other) and is_stored_run_id(other)
