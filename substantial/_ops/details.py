"""Describing one run: its summary, its history event by event, its inbox and lease."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from substantial._client.handle import HistoryEvent
from substantial._core.clock import now_ms
from substantial._ops.listing import RunSummary, get_run
from substantial._ops.values import safe_plain, time_of
from substantial._store.forks import Fork, forks_of
from substantial._store.keys import inbox_prefix
from substantial._store.quarantine import QuarantinedEntry, list_quarantined
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.protocol import substantial_pb2 as pb

__all__ = ["RunDetails", "describe_run"]


@dataclass(frozen=True)
class RunDetails:
    """
    Everything stored about one run.

    :ivar summary: its summary record
    :ivar history: its log, one entry per event, values as plain data
    :ivar inbox: events sent to it and not yet merged into its log
    :ivar lease_owner: the agent working on it now, if any
    :ivar lease_expires: when that lease runs out
    :ivar quarantined: inbox entries set aside because the agent could not merge them
    :ivar forks: the forks of this run (``Handle.fork``, ``retry``), oldest first
    """

    summary: RunSummary
    history: list[HistoryEvent]
    inbox: int = 0
    lease_owner: str = ""
    lease_expires: datetime | None = None
    quarantined: list[QuarantinedEntry] = field(default_factory=list)
    forks: list[Fork] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything above as a JSON-compatible dict (times as ISO 8601 strings)."""
        expires = (
            self.lease_expires.isoformat() if self.lease_owner and self.lease_expires else None
        )
        return {
            **self.summary.to_json(),
            "agent": self.lease_owner or None,
            "lease_expires": expires,
            "inbox": self.inbox,
            "set_aside": [{"key": e.key, "reason": e.reason} for e in self.quarantined],
            "forks": [{"run_id": f.run_id, "step": f.step, "retry": f.retry} for f in self.forks],
            "history": [
                {"segment": e.segment, "at": e.at.isoformat(), "kind": e.kind, **e.details}
                for e in self.history
            ],
        }


async def describe_run(backend: Backend, run_id: str) -> RunDetails:
    """
    Read a run's summary, log, inbox and lease.

    :raises RunNotFound: if the run has neither a summary nor a log
    :raises CorruptLog: if a log segment cannot be read
    """
    summary = await get_run(backend, run_id)
    store = RunStore(backend)
    stored = await store.read_log(run_id)
    history: list[HistoryEvent] = []
    segment = 0
    for index, event in enumerate(stored.events):
        while index >= stored.segment_ends[segment]:
            segment += 1
        history.append(_history_event(event, segment))
    inbox = len(await backend.list_all(inbox_prefix(run_id)))
    lease = await store.lease_holder(run_id)
    return RunDetails(
        summary=summary,
        history=history,
        inbox=inbox,
        lease_owner=lease.owner if lease is not None and lease.expires_ms > now_ms() else "",
        lease_expires=time_of(lease.expires_ms) if lease is not None else None,
        quarantined=await list_quarantined(backend, run_id),
        forks=await forks_of(store, run_id),
    )


def _history_event(event: pb.Event, segment: int) -> HistoryEvent:
    kind = event.WhichOneof("kind") or "unknown"
    body = getattr(event, kind)
    details: dict[str, Any] = {}
    for descriptor, value in body.ListFields():
        if isinstance(value, pb.Payload):
            details[descriptor.name] = safe_plain(value)
        elif isinstance(value, pb.Failure):
            details[descriptor.name] = {"type": value.type, "message": value.message}
        elif isinstance(value, bytes):
            details[descriptor.name] = value.hex()
        else:
            details[descriptor.name] = value
    at = time_of(event.at_ms) or datetime.fromtimestamp(0, UTC)
    return HistoryEvent(segment, at, kind, details)
