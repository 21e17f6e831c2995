"""
The summary writer: after a wake-up, bring a run's summary (``runs/{run}/meta``, a hint
rebuilt from the log) up to date with the state the log left the run in.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from substantial._core.attributes import AttributeValue, from_pb, to_pb
from substantial._core.status import END_STATUS, STATUS_TO_PB, RunStatus
from substantial._store.attrs import unindex, write_index
from substantial._store.hints import rebuilt
from substantial._store.runs import RunStore, StoredLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["RunSummary", "SummaryChange"]

log = logging.getLogger("substantial.agent")


@dataclass(frozen=True)
class SummaryChange:
    """What a write sets in a run's summary, over what was read."""

    #: the run's status now
    status: RunStatus
    #: the log's last segment
    seq: int
    #: the terminal event, for a run that ended: its result, failure or continuation
    end: pb.Event | None = None
    #: when a sleeping run wakes up, a waiting one times out, a parked one is retried
    wake_at_ms: int | None = None
    #: what a waiting run waits for (see ``Execution.waiting_for``)
    waiting_for: tuple[str, ...] = ()
    #: the encoded value of the run's last ``Context.set_status``, if it set one
    published: pb.Payload | None = None
    #: why agents hold the run off (status ``parked``)
    parked_reason: str = ""
    #: the run's log, to fill in a summary that could not be read
    stored: StoredLog | None = None
    #: the run's search attributes now (None: as the summary read says)
    attributes: Mapping[str, AttributeValue] | None = None


class RunSummary:
    """
    A run's summary as a wake-up read it, and the writes that update it.

    :param meta: the summary read (None: none, or unreadable)
    :param version: its version as read; a write then starts with one conditional write
    :param agent: the name of the agent that writes it
    """

    def __init__(
        self,
        store: RunStore,
        run_id: str,
        meta: pb.RunMeta | None,
        version: str | None,
        *,
        agent: str,
    ) -> None:
        self._store = store
        self.run_id = run_id
        self.agent = agent
        self.meta = meta
        self.version = version

    def says(self, status: RunStatus) -> bool:
        """Whether the summary read has this status."""
        return self.meta is not None and self.meta.status == STATUS_TO_PB[status]

    async def record_state(
        self,
        seq: int,
        outcome: pb.Event | None,
        *,
        wake: int | None,
        waiting: list[str],
        published: pb.Payload | None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """
        Write the state a wake-up left the run in (ended, sleeping until ``wake``,
        waiting for events, or running), unless the summary already says so; with its
        search attributes, indexed before the summary shows them. (A summary the wake-up
        found missing was rebuilt from its log when read: ``hints.trusted_summary``.)
        """
        known = from_pb(self.meta.attributes) if self.meta is not None else {}
        if attributes is not None and dict(attributes) == known:
            attributes = None  # unchanged: no index writes, and no summary write for them
        if attributes is not None:
            await write_index(self._store.backend, self.run_id, attributes, known)
        await self._record(seq, outcome, wake, waiting, published, attributes)
        if attributes is not None:
            await unindex(self._store.backend, self.run_id, known, attributes)

    async def _record(
        self,
        seq: int,
        outcome: pb.Event | None,
        wake: int | None,
        waiting: list[str],
        published: pb.Payload | None,
        attributes: Mapping[str, AttributeValue] | None,
    ) -> None:
        if outcome is not None:
            status = END_STATUS[outcome.WhichOneof("kind") or ""]
            change = SummaryChange(
                status, seq, end=outcome, published=published, attributes=attributes
            )
            await self.write(change)
            log.info("run %s %s", self.run_id, status.value)
            return
        if wake is not None:
            status = RunStatus.SLEEPING
        elif waiting:
            status = RunStatus.WAITING
        else:
            status = RunStatus.RUNNING
        meta = self.meta
        if (
            meta is not None
            and self.says(status)
            and meta.wake_at_ms == (wake or 0)
            and list(meta.waiting_for) == waiting
            and (published is None or meta.custom_status == published)
            and attributes is None
        ):
            return
        if not self.says(status):
            log.info("run %s %s", self.run_id, status.value)  # one line per state change
        change = SummaryChange(
            status,
            seq,
            wake_at_ms=wake,
            waiting_for=tuple(waiting),
            published=published,
            attributes=attributes,
        )
        await self.write(change)

    async def write(self, change: SummaryChange) -> None:
        """Write the summary read, with ``change`` applied."""
        updated = pb.RunMeta()
        if self.meta is not None:
            updated.CopyFrom(self.meta)
        elif change.stored is not None and change.stored.events:
            updated.CopyFrom(rebuilt(self.run_id, change.stored))
        updated.run_id = self.run_id
        updated.status = STATUS_TO_PB[change.status]
        updated.updated_ms = self._store.clock.now_ms()
        updated.log_seq = max(change.seq, 0)
        updated.wake_at_ms = change.wake_at_ms or 0
        updated.parked_reason = change.parked_reason
        updated.agent = self.agent
        del updated.waiting_for[:]
        updated.waiting_for.extend(change.waiting_for)
        end = change.end
        kind = end.WhichOneof("kind") if end is not None else None
        if end is not None and kind == "completed":
            updated.result.CopyFrom(end.completed.result)
        elif end is not None and kind == "failed":
            updated.failure.CopyFrom(end.failed.failure)
        elif end is not None and kind == "continued_as":
            updated.continued_as = end.continued_as.run_id
        if change.published is not None:
            updated.custom_status.CopyFrom(change.published)
        if change.attributes is not None:
            del updated.attributes[:]
            updated.attributes.extend(to_pb(change.attributes))
        current = (self.meta, self.version) if self.version else None
        written = await self._store.write_meta(updated, current=current)
        if written is not None:  # the next write of this wake-up is one conditional write
            self.meta, self.version = updated, written
