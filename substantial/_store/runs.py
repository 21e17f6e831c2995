"""
:class:`RunStore`: the runs on top of a :class:`~substantial.backends.Backend`, as the
engine and agents use them. Key layout: :mod:`substantial._store.keys`; the log:
:mod:`substantial._store.segments`; leases: :mod:`substantial._store.leases`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence

from substantial._core.clock import Clock, VirtualClock, now_ms
from substantial._core.runids import MAX_RUN_ID_LENGTH, check_run_id
from substantial._core.status import FINAL_PB
from substantial._store import leases, segments
from substantial._store.keys import (
    BUCKETS,
    DEFAULT_QUEUE,
    DEFAULT_ROUTE,
    SCHEDULE_PREFIX,
    Route,
    ScheduleEntry,
    inbox_key,
    inbox_prefix,
    is_flat_schedule_key,
    lease_key,
    log_prefix,
    meta_key,
    quarantine_key,
    quarantine_prefix,
    queue_paused_key,
    schedule_bound,
    schedule_key,
    schedule_parts,
    schedule_prefix,
    segment_key,
    snapshot_prefix,
)
from substantial._store.leases import Lease
from substantial._store.payloads import DEFAULT_POLICY, PayloadPolicy, open_records, seal
from substantial._store.records import FORMAT_VERSION, parse_record
from substantial._store.segments import StoredLog
from substantial.backends.base import Backend
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

# Names other modules know from here (the key functions moved to keys.py in the split).
__all__ = [
    "FORMAT_VERSION",
    "SCHEDULE_PREFIX",
    "Clock",
    "Lease",
    "Route",
    "RunStore",
    "ScheduleEntry",
    "StoredLog",
    "VirtualClock",
    "check_run_id",
    "inbox_prefix",
    "lease_key",
    "log_prefix",
    "meta_key",
    "now_ms",
    "quarantine_key",
    "quarantine_prefix",
    "schedule_key",
    "segment_key",
    "snapshot_prefix",
]

log = logging.getLogger("substantial.agent")


class RunStore:
    """Reads and writes runs in the key layout. Holds no state of its own."""

    def __init__(
        self, backend: Backend, clock: Clock | None = None, payloads: PayloadPolicy | None = None
    ) -> None:
        self.backend = backend
        self.clock = clock or Clock()
        #: how payloads are stored: payload codecs, blob threshold
        self.payloads = payloads or DEFAULT_POLICY

    # ---- log (substantial._store.segments) ----

    async def append(self, run_id: str, seq: int, events: Sequence[pb.Event]) -> bool:
        """Write segment ``seq``, the fencing point: :func:`segments.append`."""
        return await segments.append(self.backend, run_id, seq, events, self.payloads)

    async def read_log(self, run_id: str) -> StoredLog:
        """
        Read a run's log: :func:`segments.read_log`.

        :raises CorruptLog: if a segment is unreadable, foreign, newer or missing
        """
        return await segments.read_log(self.backend, run_id)

    async def write_snapshot(self, run_id: str, log: StoredLog) -> None:
        """Store the log read as one snapshot: :func:`segments.write_snapshot`."""
        await segments.write_snapshot(self.backend, run_id, log, self.payloads)

    async def write_compacted(self, run_id: str, seq: int, events: list[pb.Event]) -> None:
        """Store a compacted history at ``seq``: :func:`segments.write_compacted`."""
        await segments.write_compacted(self.backend, run_id, seq, events, self.payloads)

    # ---- inbox ----

    async def post(self, run_id: str, entry: pb.InboxEntry, route: Route | None = None) -> None:
        """
        Put an event in the run's inbox, then ask for an agent at once.

        :param route: the agents to ask (default: the run's, read from its records)
        """
        key = inbox_key(run_id, entry.sent_at_ms, entry.id)
        await self.backend.create(key, await seal(self.backend, run_id, entry, self.payloads))
        if route is None:
            route = await self.route_of(run_id)
        await self.schedule(run_id, entry.sent_at_ms, "e", route)

    async def route_of(self, run_id: str) -> Route:
        """
        The queue and workflow of a run, from its summary or else its first segment (a
        run that has neither yet: the default queue, for any agent).
        """
        meta = None
        with contextlib.suppress(CorruptLog):  # a summary is a hint: go to the log
            meta = await self.read_meta(run_id)
        if meta is not None and meta.workflow:
            return Route.of(meta.queue, meta.workflow, meta.priority)
        entry = await self.backend.get(segment_key(run_id, 0))
        if entry is not None:
            try:
                first = parse_record(pb.Segment, entry[0], run_id, segment_key(run_id, 0))
            except CorruptLog:
                return Route()
            if first.events and first.events[0].WhichOneof("kind") == "started":
                started = first.events[0].started
                return Route.of(started.queue, started.workflow, started.priority)
        return Route()

    async def read_inbox(
        self, run_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[tuple[str, pb.InboxEntry]]:
        """
        The run's unmerged events in arrival order, with their keys.

        :param after: only entries after this key
        :param limit: at most this many (the first ones)
        """
        prefix = inbox_prefix(run_id)
        if limit is None:
            keys = await self.backend.list_all(prefix, after=after)
        else:
            keys = await self.backend.list(prefix, after=after, limit=limit)
        entries = await self.backend.get_many(keys)
        found = [
            (key, parse_record(pb.InboxEntry, entry[0], run_id, key))
            for key, entry in zip(keys, entries, strict=True)
            if entry is not None
        ]
        await open_records(self.backend, run_id, [entry for _, entry in found])
        return found

    # ---- meta ----

    async def read_meta(self, run_id: str) -> pb.RunMeta | None:
        meta, _ = await self.read_meta_version(run_id)
        return meta

    async def read_meta_version(self, run_id: str) -> tuple[pb.RunMeta | None, str | None]:
        """The run's summary and its version (for :meth:`write_meta`), or ``(None, None)``."""
        entry = await self.backend.get(meta_key(run_id))
        if entry is None:
            return None, None
        meta = parse_record(pb.RunMeta, entry[0], run_id, meta_key(run_id))
        await open_records(self.backend, run_id, [meta])
        return meta, entry[1]

    async def write_meta(
        self,
        meta: pb.RunMeta,
        *,
        current: tuple[pb.RunMeta | None, str | None] | None = None,
    ) -> str | None:
        """
        Write a run's summary unless a summary of a later segment is already there.
        Returns the version written (None: not written, a later one is there).

        :param current: the summary the caller read and its version (``(None, None)``: it
            read none, e.g. a run it just created). The first attempt is then one
            conditional write (``replace`` of that version, or ``create``) instead of a
            read and a write; if the summary changed since, it falls back to reading it.

        Only a summary of a finished run is written durably (``durable``: an ``fsync`` on
        files): the log restores any other one lost to a power loss (the run's schedule
        entry wakes an agent that rewrites it), but ``Handle.result`` waits for the
        summary to say the run ended before it reads the end from the log. Where the
        store recovers from reboots (:meth:`hints_recovered`), not even that one, unless
        it holds replayed state (a status, search attributes) that no wake-up rebuilds.
        """
        key = meta_key(meta.run_id)
        data = await seal(self.backend, meta.run_id, meta, self.payloads)
        durable = meta.status in FINAL_PB and (
            _not_rebuilt(meta) or not await self.hints_recovered()
        )
        if current is not None:
            stored, version = current
            if stored is not None and stored.log_seq > meta.log_seq:
                return None
            if version is None:
                if (written := await self.backend.create(key, data, durable=durable)) is not None:
                    return written
            elif (
                written := await self.backend.replace(key, data, version, durable=durable)
            ) is not None:
                return written
        for _ in range(10):
            entry = await self.backend.get(key)
            if entry is None:
                if (written := await self.backend.create(key, data, durable=durable)) is not None:
                    return written
                continue
            try:
                stored = parse_record(pb.RunMeta, entry[0], meta.run_id, key)
            except CorruptLog:  # a summary is a hint: an unreadable one is overwritten
                pass
            else:
                if stored.log_seq > meta.log_seq:
                    return None
            if (
                written := await self.backend.replace(key, data, entry[1], durable=durable)
            ) is not None:
                return written
        return None  # ten writers in a row got there first: a hint, the next one wins

    async def hints_recovered(self) -> bool:
        """Whether a start's entry and an end's summary are hints (``Backend.reboots``)."""
        reboots = self.backend.reboots
        return reboots is not None and await reboots.covered()

    # ---- schedule ----

    async def schedule(
        self,
        run_id: str,
        due_ms: int,
        tag: str = "t",
        route: Route = DEFAULT_ROUTE,
        *,
        durable: bool = True,
    ) -> ScheduleEntry:
        """
        Ask for an agent to look at ``run_id`` at ``due_ms``; the entry written.

        :param route: the run's queue and workflow: which agents the entry is for
        :param durable: False for an entry that recovery after a reboot rewrites

        :param tag: ``t`` for the run's own next wake-up: written with create, the same key
            however often it is repeated. Any other tag (at most 4 characters) says why and
            gets a random suffix, so that no request reuses the key of one an agent read
            and is about to delete as consumed (two in the same millisecond would).
        """
        # Empty: the key says it all, and a key is never reused (see ``tag``); the files
        # backend makes an empty file in place, with one fsync instead of two.
        data = b""
        if tag != "t":
            tag = f"{tag}{uuid.uuid4().hex[:8]}"
        key = schedule_key(due_ms, run_id, tag, route)
        if tag == "t":
            await self.backend.create(key, data, durable=durable)
        else:
            await self.backend.put(key, data, durable=durable)
        return ScheduleEntry(key, run_id, due_ms, route)  # what parsing the key would give

    async def due(
        self,
        now: int,
        *,
        after: str | None = None,
        limit: int = 64,
        queue: str = DEFAULT_QUEUE,
        horizon_ms: int | None = None,
        paused: set[str] | None = None,
    ) -> tuple[list[ScheduleEntry], int | None, bool]:
        """
        Schedule entries of ``queue`` due at ``now``, earliest first, reading at most
        ``limit`` keys (twice that while a page of entries of the flat layout sleeps:
        see keys.py).

        :param horizon_ms: read no entry due later than this past ``now`` (the time
            buckets of the future stay unread on the files backend); None: read on
        :param paused: queues seen paused: ``queue`` is added to it or taken out of it, as
            this read (the first page: no ``after``) found it
        :return: the due entries; the due time of the first entry not yet due, if one
            was read; and whether more due entries may follow
        """
        prefix = schedule_prefix(queue)
        before = None if horizon_ms is None else schedule_bound(queue, now + horizon_ms)
        keys = await self.backend.list_before(prefix, before, after=after, limit=limit)
        if after is None and keys and keys[0] == queue_paused_key(queue):
            if paused is not None:
                paused.add(queue)
            return [], None, False  # a paused queue: nothing of it is due
        if after is None and paused is not None:
            paused.discard(queue)
        due, first_later = await self._due_of(keys, now)
        if first_later is None:
            return due, None, len(keys) == limit
        if not is_flat_schedule_key(first_later.key, queue):
            return due, first_later.due_ms, False
        # A sleeper of the flat layout: the rest of that layout sleeps too; the buckets next
        # (already in this page if it holds all the index up to the bound).
        if len(keys) < limit:
            keys = [key for key in keys if not is_flat_schedule_key(key, queue)]
        else:
            keys = await self.backend.list_before(prefix + BUCKETS, before, limit=limit)
        bucketed, later = await self._due_of(keys, now)
        next_due = first_later.due_ms if later is None else min(later.due_ms, first_later.due_ms)
        return due + bucketed, next_due, later is None and len(keys) == limit

    async def _due_of(
        self, keys: list[str], now: int
    ) -> tuple[list[ScheduleEntry], ScheduleEntry | None]:
        """The entries of ``keys`` due at ``now`` (in order), and the first not due."""
        due: list[ScheduleEntry] = []
        for key in keys:
            entry = ScheduleEntry.parse(key)
            if entry is None:
                if schedule_parts(key) is not None:  # shaped as one, but naming no run
                    await self._drop_nameless(key)
                continue
            if entry.due_ms > now:
                return due, entry
            due.append(entry)
        return due, None

    async def _drop_nameless(self, key: str) -> None:
        """Delete a schedule key whose run id breaks the rule: it can wake no run."""
        log.warning("deleting schedule key %r: its run id breaks the run-id rule", key)
        try:
            await self.backend.delete(key)
        except ValueError as exc:  # a key this backend cannot even address
            log.warning("could not delete schedule key %r: %s", key, exc)

    async def delete(self, keys: Sequence[str]) -> None:
        """
        Delete consumed schedule entries or merged inbox entries, concurrently (absent
        ones are no error), not durably: one that comes back after a power loss wakes
        its run once more, or is merged again, which the event's id makes a no-op.
        """
        await segments.delete_keys(self.backend, keys, durable=False)

    # ---- leases (substantial._store.leases) ----

    async def acquire(self, run_id: str, owner: str, ttl_ms: int) -> Lease | None:
        """
        Take the run's lease if it is free or expired.

        :return: the lease, or None if another agent holds it
        """
        return await leases.acquire(self.backend, self.clock, run_id, owner, ttl_ms)

    async def renew(self, lease: Lease, ttl_ms: int) -> Lease | None:
        """:return: the renewed lease, or None if it was lost"""
        return await leases.renew(self.backend, self.clock, lease, ttl_ms)

    async def release(self, lease: Lease) -> None:
        await leases.release(self.backend, lease)

    async def lease_holder(self, run_id: str) -> pb.Lease | None:
        return await leases.lease_holder(self.backend, run_id)


def _not_rebuilt(meta: pb.RunMeta) -> bool:
    """
    Whether a wake-up of the ended run could not rebuild this summary from the log: it
    holds replayed state (a status, search attributes), or its run is an older
    version's (an id over 200 characters), which recovery after a reboot skips.
    """
    return (
        meta.HasField("custom_status")
        or bool(meta.attributes)
        or len(meta.run_id) > MAX_RUN_ID_LENGTH
    )
