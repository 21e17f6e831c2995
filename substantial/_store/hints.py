"""
A run's summary (``runs/{run}/meta``) is a hint; its log is the truth. Whoever reads a
summary on a run's behalf reads it here: an unreadable summary counts as absent (and is
overwritten, replacing the garbage version), one that contradicts the log is rebuilt
from the log, and nothing final is decided from a summary's word alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from google.protobuf.message import DecodeError

from substantial._core.status import END_STATUS as _END_STATUS
from substantial._core.status import STATUS_TO_PB
from substantial._store.keys import log_prefix, meta_key, segment_key
from substantial._store.payloads import open_records
from substantial._store.runs import RunStore, StoredLog
from substantial.backends.base import Backend
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "END_STATUS",
    "last_segment_ends",
    "log_end",
    "read_summary",
    "rebuilt",
    "summary_from_log",
    "trusted_summary",
]

log = logging.getLogger("substantial.agent")

#: A log's terminal event kind -> the status its summary shows.
END_STATUS = {kind: STATUS_TO_PB[status] for kind, status in _END_STATUS.items()}


async def read_summary(store: RunStore, run_id: str) -> tuple[pb.RunMeta | None, str | None]:
    """
    The run's summary and its version. An unreadable summary, or one that names another
    run, comes back as ``(None, version)``: absent, but a write replaces that version.
    """
    entry = await store.backend.get(meta_key(run_id))
    if entry is None:
        return None, None
    try:
        meta = pb.RunMeta.FromString(entry[0])
    except DecodeError:
        meta = None
    if meta is None or meta.run_id != run_id:
        log.warning("run %s: its summary %s is unreadable; rebuilt from the log", run_id,
                    meta_key(run_id))  # fmt: skip
        return None, entry[1]
    await open_records(store.backend, run_id, [meta])
    return meta, entry[1]


def rebuilt(run_id: str, stored: StoredLog) -> pb.RunMeta:
    """A summary of what the log's start says, at the log's last segment, status unset."""
    meta = pb.RunMeta(run_id=run_id, log_seq=max(stored.last_seq, 0))
    if stored.events and stored.events[0].WhichOneof("kind") == "started":
        first = stored.events[0]
        meta.workflow = first.started.workflow
        meta.args.CopyFrom(first.started.args)
        # A fork keeps its original's start time (replay sees it); it was made later.
        meta.created_ms = first.started.forked_at_ms or first.at_ms
        meta.updated_ms = stored.events[-1].at_ms
        meta.parent_run_id = first.started.parent_run_id
        meta.chain_root = first.started.chain_root
        meta.queue = first.started.queue
        meta.priority = first.started.priority
        meta.forked_from = first.started.forked_from
        meta.fork_step = first.started.fork_step
    return meta


def summary_from_log(run_id: str, stored: StoredLog) -> pb.RunMeta:
    """:func:`rebuilt`, with the status and outcome of the log's end (pending if none)."""
    meta = rebuilt(run_id, stored)
    meta.status = pb.RUN_STATUS_PENDING
    last = stored.events[-1] if stored.events else None
    kind = last.WhichOneof("kind") if last is not None else None
    if last is not None and kind in END_STATUS:
        meta.status = END_STATUS[kind]
        if kind == "completed":
            meta.result.CopyFrom(last.completed.result)
        elif kind == "failed":
            meta.failure.CopyFrom(last.failed.failure)
        elif kind == "continued_as":
            meta.continued_as = last.continued_as.run_id
    return meta


async def trusted_summary(
    store: RunStore,
    run_id: str,
    meta: pb.RunMeta | None,
    version: str | None,
    stored: StoredLog,
) -> pb.RunMeta | None:
    """
    The summary an agent that read ``stored`` may build on: ``meta`` itself, or, when it
    is missing or unreadable (``meta`` None) or claims a segment the log does not have, a
    summary rebuilt from the log (to be written over ``version``).
    """
    if meta is None:
        # Unreadable, or not written yet (an agent got to a run between its start's
        # segment 0 and its summary): rebuilt, so the summary an agent writes names the
        # run's workflow and start, which `list --workflow` and time filters read.
        return rebuilt(run_id, stored) if stored.events else None
    if meta.log_seq <= stored.last_seq:
        return meta
    # The summary is of a later segment than the log read: another agent moved on (this
    # one is stale, and its commit will fail), or the summary lies.
    later = await store.backend.list(log_prefix(run_id), after=segment_key(run_id, stored.last_seq),
                                     limit=1)  # fmt: skip
    if later:
        return meta
    log.warning("run %s: its summary claims segment %d, the log ends at %d; rebuilt from the log",
                run_id, meta.log_seq, stored.last_seq)  # fmt: skip
    return rebuilt(run_id, stored)


async def log_end(store: RunStore, run_id: str, meta: pb.RunMeta) -> pb.Event | None:
    """
    The log's terminal event, if the log ends in one; checks a summary that claims the run
    ended. Costs one read (the segment the summary names) when the summary is right;
    otherwise the whole log is read. A log that cannot be read has no end here.
    """
    entry = await store.backend.get(segment_key(run_id, meta.log_seq))
    if entry is not None:
        try:
            segment = pb.Segment.FromString(entry[0])
        except DecodeError:
            segment = None
        if (
            segment is not None
            and segment.run_id == run_id
            and segment.seq == meta.log_seq
            and segment.events
            and segment.events[-1].WhichOneof("kind") in END_STATUS
        ):
            end = segment.events[-1]  # nothing follows a terminal segment: it is the end
            await open_records(store.backend, run_id, [end])
            return end
    try:
        stored = await store.read_log(run_id)
    except CorruptLog:
        return None
    if stored.events and stored.events[-1].WhichOneof("kind") in END_STATUS:
        return stored.events[-1]
    return None


async def last_segment_ends(backend: Backend, run_id: str, run_keys: Sequence[str]) -> bool:
    """Whether the run's last log segment (of its keys ``run_keys``) ends in a terminal event."""
    segments = [key for key in run_keys if key.startswith(log_prefix(run_id))]
    entry = await backend.get(segments[-1]) if segments else None
    if entry is None:
        return False
    try:
        segment = pb.Segment.FromString(entry[0])
    except DecodeError:
        return False
    return (
        segment.run_id == run_id
        and bool(segment.events)
        and segment.events[-1].WhichOneof("kind") in END_STATUS
    )
