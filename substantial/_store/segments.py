"""
A run's log on a backend: appending segments (the fencing point), reading the log back
from the newest snapshot on, and the writes of a compaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import anyio

from substantial._store.keys import log_prefix, segment_key, snapshot_key, snapshot_prefix
from substantial._store.payloads import (
    DEFAULT_POLICY,
    PayloadPolicy,
    maybe_sealed,
    open_records,
    seal,
)
from substantial._store.records import FORMAT_VERSION, check_segment, parse_record
from substantial.backends.base import Backend
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "StoredLog",
    "append",
    "delete_keys",
    "read_log",
    "write_compacted",
    "write_snapshot",
]


@dataclass(frozen=True)
class StoredLog:
    """
    A run's log as read: its events in order, the number of its last segment, and for
    each segment the index just past its last event.
    """

    events: list[pb.Event]
    last_seq: int
    segment_ends: list[int]
    #: the snapshot the log was read from (-1: none)
    snapshot_seq: int = -1
    #: whether a payload read may be sealed (in a blob, or encoded by a payload codec)
    sealed: bool = True


class _Vanished(Exception):
    """A record disappeared while the log was being read."""


async def append(
    backend: Backend,
    run_id: str,
    seq: int,
    events: Sequence[pb.Event],
    policy: PayloadPolicy = DEFAULT_POLICY,
) -> bool:
    """
    Write segment ``seq``. This is the fencing point: of two agents that both read the
    log up to ``seq - 1``, only one can write ``seq``. Its large payloads go to blobs
    first (:mod:`substantial._store.payloads`).

    :return: False if segment ``seq`` already exists
    """
    segment = pb.Segment(format=FORMAT_VERSION, run_id=run_id, seq=seq, events=events)
    data = await seal(backend, run_id, segment, policy)
    version = await backend.create(segment_key(run_id, seq), data)
    return version is not None


async def read_log(backend: Backend, run_id: str) -> StoredLog:
    """
    Read a run's log. A compaction may delete the snapshot or segments being read; then
    the read starts again.

    :raises CorruptLog: as :func:`_read_log_once`, or if a blob it refers to is missing
    """
    for _ in range(4):
        try:
            stored = await _read_log_once(backend, run_id)
            break
        except _Vanished:
            continue
    else:
        stored = await _read_log_once(backend, run_id)
    if stored.sealed:
        await open_records(backend, run_id, stored.events)
    return stored


async def _read_log_once(backend: Backend, run_id: str) -> StoredLog:
    """
    Reads the newest snapshot, if any, and the segments after it.

    :raises CorruptLog: if a segment does not parse, belongs to another run, comes from
        a newer format, or a segment number is missing
    """
    events: list[pb.Event] = []
    ends: list[int] = []
    sealed = False
    seq = -1
    snapshot_seq = -1
    after = None
    snapshots = await backend.list(snapshot_prefix(run_id))
    snapshot = await backend.get(snapshots[-1]) if snapshots else None
    if snapshots and snapshot is None:
        raise _Vanished
    if snapshot is not None:
        key = snapshots[-1]
        segment = parse_record(pb.Segment, snapshot[0], run_id, key)
        sealed = maybe_sealed(snapshot[0])
        check_segment(segment, run_id, key, int(key.rsplit("/", 1)[1]))
        events.extend(segment.events)
        ends.extend(segment.segment_ends)
        seq = snapshot_seq = segment.seq
        after = segment_key(run_id, seq)
    keys = await backend.list_all(log_prefix(run_id), after=after)
    entries = await backend.get_many(keys)
    for key, entry in zip(keys, entries, strict=True):
        if entry is None:  # deleted under us: by a compaction, or a gc of a finished run
            raise _Vanished
        seq += 1
        segment = parse_record(pb.Segment, entry[0], run_id, key)
        sealed = sealed or maybe_sealed(entry[0])
        if key != segment_key(run_id, seq):
            raise CorruptLog(run_id, key, f"segment {seq} is missing before it")
        check_segment(segment, run_id, key, seq)
        events.extend(segment.events)
        ends.append(len(events))
    if events and events[0].WhichOneof("kind") != "started":
        raise CorruptLog(run_id, segment_key(run_id, 0), "the log does not begin with a start")
    return StoredLog(events, seq, ends, snapshot_seq, sealed)


async def write_snapshot(
    backend: Backend, run_id: str, log: StoredLog, policy: PayloadPolicy = DEFAULT_POLICY
) -> None:
    """
    Store segments ``0..log.last_seq`` as one object, then drop older snapshots. Safe to
    race: every writer of a snapshot of ``seq`` writes the same events.
    """
    snapshot = pb.Segment(
        format=FORMAT_VERSION,
        run_id=run_id,
        seq=log.last_seq,
        events=log.events,
        segment_ends=log.segment_ends,
    )
    key = snapshot_key(run_id, log.last_seq)
    await backend.put(key, await seal(backend, run_id, snapshot, policy))
    older = await backend.list(snapshot_prefix(run_id))
    await delete_keys(backend, [other for other in older if other < key])


async def write_compacted(
    backend: Backend,
    run_id: str,
    seq: int,
    events: list[pb.Event],
    policy: PayloadPolicy = DEFAULT_POLICY,
) -> None:
    """
    Store a compacted history as the snapshot at ``seq`` and delete the segments before
    ``seq``. Segment ``seq`` itself stays: it is what fences a stale agent that read the
    log up to ``seq - 1``.

    An agent that went stale before an *earlier* point could still create a segment
    number below ``seq``, now free. Readers never see it (they read the newest snapshot
    and only the segments after it), summaries are guarded by log position, its inbox
    deletions touch only events the live agents merged since, and the children it starts
    are the ones the run starts (ids derive from the position). The one stray effect
    left: if its stale replay ended the run with ``continue_using``, it can start that
    continuation. It takes an agent stalled across a whole compaction interval, past its
    lease.
    """
    full = StoredLog(events, seq, [len(events)] * (seq + 1))
    await write_snapshot(backend, run_id, full, policy)
    keys = await backend.list_all(log_prefix(run_id))
    await delete_keys(backend, [key for key in keys if key < segment_key(run_id, seq)])


async def delete_keys(backend: Backend, keys: Sequence[str], *, durable: bool = True) -> None:
    """Delete ``keys`` concurrently (absent ones are no error)."""
    async with anyio.create_task_group() as tg:
        for key in keys:
            tg.start_soon(partial(backend.delete, key, durable=durable))
