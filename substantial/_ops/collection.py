"""
Garbage collection: delete old finished runs, each with every key it left. The log
decides what is finished, never a summary alone.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from google.protobuf.message import DecodeError

from substantial._core.attributes import from_pb
from substantial._ops.blobs import drop_run_refs, sweep_blobs
from substantial._ops.listing import Progress, list_runs, no_progress
from substantial._store import hints
from substantial._store.attrs import unindex
from substantial._store.keys import (
    QUEUES_PREFIX,
    SCHEDULE_PREFIX,
    ScheduleEntry,
    lease_key,
    meta_key,
    run_prefix,
)
from substantial._store.runs import RunStore
from substantial.backends.base import Backend
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["GcResult", "gc"]

_DELETE_BATCH = 100
_GC_LEASE_MS = 60_000


@dataclass(frozen=True)
class GcResult:
    """
    What :func:`gc` deleted, or would delete.

    :ivar runs: the runs deleted (or, on a dry run, that would be)
    :ivar keys: how many keys that is (run and schedule keys; leases not counted)
    :ivar busy: finished runs left alone because an agent held their lease
    :ivar dry_run: whether nothing was deleted
    :ivar live: runs left alone because their summary says finished and their log does not
        (or cannot be read)
    :ivar blobs: the blobs (sha256) deleted because no run refers to them any more
    """

    runs: list[str] = field(default_factory=list)
    keys: int = 0
    busy: list[str] = field(default_factory=list)
    dry_run: bool = False
    live: list[str] = field(default_factory=list)
    blobs: list[str] = field(default_factory=list)


async def gc(
    backend: Backend,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Progress = no_progress,
) -> GcResult:
    """
    Delete finished runs (completed, failed, cancelled, reverted) whose summary was last
    written more than ``older_than`` ago: every key under ``runs/{run}/``, their schedule
    entries and their lease. A run is deleted only if its *log* ends in a terminal event
    (its last segment is read): a summary that says finished is not enough.

    Each run is deleted under a lease taken as ``gc``, so no agent works on it meanwhile;
    its summary goes last, so an interrupted gc is finished by the next one. Then every
    blob no run refers to any more is deleted (:func:`~substantial._ops.blobs.sweep_blobs`).

    :param older_than: minimum age of the run's last update
    :param dry_run: only report what would be deleted
    :param now: the current time (default: the wall clock)
    :param progress: called with the number of runs handled and the total
    :raises BackendUnavailable: if the storage cannot be reached
    """
    cutoff = (now or datetime.now(UTC)) - older_than
    old = [
        s.run_id
        for s in await list_runs(backend)
        if s.status.finished and s.updated is not None and s.updated < cutoff
    ]
    sweep = _Sweep(RunStore(backend), dry_run)
    if old:
        scheduled = await _schedule_keys(backend, set(old))
        for done, run_id in enumerate(old, start=1):
            await sweep.collect(run_id, scheduled.get(run_id, []))
            progress(done, len(old))
    else:
        progress(0, 0)
    blobs = await sweep_blobs(backend, dry_run=dry_run)
    return GcResult(sweep.deleted, sweep.keys, sweep.busy, dry_run, sweep.live, blobs)


async def _schedule_keys(backend: Backend, run_ids: set[str]) -> dict[str, list[str]]:
    """The schedule keys of each of ``run_ids`` that has any."""
    found: dict[str, list[str]] = {}
    keys = await backend.list_all(SCHEDULE_PREFIX) + await backend.list_all(QUEUES_PREFIX)
    for key in keys:
        entry = ScheduleEntry.parse(key)
        if entry is not None and entry.run_id in run_ids:
            found.setdefault(entry.run_id, []).append(key)
    return found


class _Sweep:
    """One gc pass: deletes (or counts) runs one at a time and keeps the tally."""

    def __init__(self, store: RunStore, dry_run: bool) -> None:
        self.store = store
        self.dry_run = dry_run
        self.owner = f"gc:{socket.gethostname()}:{os.getpid()}"
        self.deleted: list[str] = []
        self.busy: list[str] = []
        self.live: list[str] = []
        self.keys = 0

    async def collect(self, run_id: str, schedule_keys: list[str]) -> None:
        backend = self.store.backend
        try:
            run_keys = await backend.list_all(run_prefix(run_id))
            ends = await hints.last_segment_ends(backend, run_id, run_keys)
        except CorruptLog:  # a log that cannot be read does not say the run ended
            ends = False
        if not ends:
            self.live.append(run_id)
            return
        if not self.dry_run:
            lease = await self.store.acquire(run_id, self.owner, _GC_LEASE_MS)
            if lease is None:
                self.busy.append(run_id)
                return
            meta = meta_key(run_id)
            if not await _flush_summary(backend, meta):
                await self.store.release(lease)
                self.busy.append(run_id)
                return
            await drop_run_refs(backend, run_id, run_keys)
            await _drop_index(self.store, run_id)
            await _delete_all(backend, schedule_keys)
            await _delete_all(backend, [key for key in run_keys if key != meta])
            await _delete_all(backend, [key for key in run_keys if key == meta])
            await backend.delete(lease_key(run_id), lease.version)
            await backend.prune(f"runs/{run_id}/")
        self.keys += len(run_keys) + len(schedule_keys)
        self.deleted.append(run_id)


async def _flush_summary(backend: Backend, key: str) -> bool:
    """
    Where a final summary may not be on disk yet (``RunStore.write_meta``), flush it
    before the run's log is deleted, so that a crash in between leaves no "running"
    summary without a log. False if it changed meanwhile.
    """
    if backend.reboots is None or (summary := await backend.get(key)) is None:
        return True
    return await backend.replace(key, summary[0], summary[1]) is not None


async def _drop_index(store: RunStore, run_id: str) -> None:
    """Delete the run's search-attribute index entries (stale ones are pruned by searches)."""
    entry = await store.backend.get(meta_key(run_id))  # not read_meta: it reads blobs
    try:
        meta = pb.RunMeta.FromString(entry[0]) if entry is not None else None
    except DecodeError:
        return
    if meta is not None:
        await unindex(store.backend, run_id, from_pb(meta.attributes), {})


async def _delete_all(backend: Backend, keys: Sequence[str]) -> None:
    for start in range(0, len(keys), _DELETE_BATCH):
        async with anyio.create_task_group() as tg:
            for key in keys[start : start + _DELETE_BATCH]:
                tg.start_soon(backend.delete, key)
