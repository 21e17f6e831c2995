"""
The run layout on top of a :class:`~substantial.backends.Backend`.

Key layout::

    runs/{run}/meta                     RunMeta: a summary, rebuilt from the log if lost
    runs/{run}/log/{seq:012d}           Segment: immutable, written with create (fencing)
    runs/{run}/inbox/{ms:015d}-{id}     InboxEntry: sent, not yet merged into the log
    runs/{run}/quarantine/{ms}-{id}     an inbox entry set aside: unreadable, or undecodable
    schedule/{due_ms:015d}-{run}~{tag}  ScheduleEntry: look at this run at that time
    leases/{run}                        Lease: who works on the run, until when

A schedule key carries a tag after ``~``: ``t`` for the run's own next wake-up (written
with create, so repeating it is harmless), ``s`` for a start, and a random tag for each
send, so a send never reuses a key an agent is about to delete.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
from google.protobuf.message import DecodeError

from substantial.backends.base import Backend
from substantial.constants import LEASE_MAX_AHEAD
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb
from substantial.runids import check_run_id, is_stored_run_id

__all__ = [
    "FORMAT_VERSION",
    "Clock",
    "Lease",
    "RunStore",
    "ScheduleEntry",
    "StoredLog",
    "VirtualClock",
    "check_run_id",
    "now_ms",
]

#: The segment format this code writes; segments from a newer format are refused.
FORMAT_VERSION = 1

log = logging.getLogger("substantial.agent")

SCHEDULE_PREFIX = "schedule/"


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class Clock:
    """Where agents and handles read the time: the wall clock, unless a test says so."""

    def now_ms(self) -> int:
        return now_ms()

    def skip_to(self, when_ms: int) -> bool:
        """
        Called by an idle agent whose next timer is due at ``when_ms``. A clock that can
        jump there does, and returns True (the agent polls again at once); the wall
        clock cannot, and the agent waits.
        """
        return False


class VirtualClock(Clock):
    """
    A clock that moves only when told. An agent on a virtual clock, finding nothing to
    do, jumps it to the next due timer instead of waiting (see ``substantial.testing``).
    """

    def __init__(self, start_ms: int | None = None, *, auto_advance: bool = True) -> None:
        self._now = now_ms() if start_ms is None else start_ms
        #: Whether an idle agent may jump this clock to its next timer.
        self.auto_advance = auto_advance

    def now_ms(self) -> int:
        return self._now

    def advance_to(self, when_ms: int) -> None:
        self._now = max(self._now, when_ms)

    def skip_to(self, when_ms: int) -> bool:
        if not self.auto_advance:
            return False
        self.advance_to(when_ms)
        return True


def meta_key(run_id: str) -> str:
    return f"runs/{run_id}/meta"


def log_prefix(run_id: str) -> str:
    return f"runs/{run_id}/log/"


def segment_key(run_id: str, seq: int) -> str:
    return f"runs/{run_id}/log/{seq:012d}"


def snapshot_prefix(run_id: str) -> str:
    return f"runs/{run_id}/snapshot/"


def snapshot_key(run_id: str, seq: int) -> str:
    return f"runs/{run_id}/snapshot/{seq:012d}"


def inbox_prefix(run_id: str) -> str:
    return f"runs/{run_id}/inbox/"


def quarantine_prefix(run_id: str) -> str:
    return f"runs/{run_id}/quarantine/"


def quarantine_key(run_id: str, inbox_key: str) -> str:
    """Where the inbox entry ``inbox_key`` is kept once it is set aside."""
    return quarantine_prefix(run_id) + inbox_key.rpartition("/")[2]


def lease_key(run_id: str) -> str:
    return f"leases/{run_id}"


def schedule_key(due_ms: int, run_id: str, tag: str) -> str:
    return f"{SCHEDULE_PREFIX}{max(due_ms, 0):015d}-{run_id}~{tag}"


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``schedule/`` key: run ``run_id`` wants an agent at ``due_ms``."""

    key: str
    run_id: str
    due_ms: int

    @classmethod
    def parse(cls, key: str) -> ScheduleEntry | None:
        """
        :return: the entry, or None if ``key`` is no schedule key or names no run (its
            run id breaks the rule: ``..``, ``order-42/``)
        """
        parts = _schedule_parts(key)
        if parts is None or not is_stored_run_id(parts[1]):
            return None
        return cls(key, parts[1], int(parts[0]))


def _schedule_parts(key: str) -> tuple[str, str] | None:
    """A schedule key's due time and run id, if it has the shape of one."""
    body = key[len(SCHEDULE_PREFIX) :]
    due, dash, rest = body[:15], body[15:16], body[16:]
    run_id, tilde, _tag = rest.rpartition("~")
    if not (due.isdigit() and dash == "-" and tilde):
        return None
    return due, run_id


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


@dataclass(frozen=True)
class Lease:
    """A lease this agent holds on a run."""

    run_id: str
    owner: str
    version: str
    expires_ms: int


class RunStore:
    """Reads and writes runs in the key layout above. Holds no state of its own."""

    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self.backend = backend
        self.clock = clock or Clock()

    # ---- log ----

    async def append(self, run_id: str, seq: int, events: Sequence[pb.Event]) -> bool:
        """
        Write segment ``seq``. This is the fencing point: of two agents that both read
        the log up to ``seq - 1``, only one can write ``seq``.

        :return: False if segment ``seq`` already exists
        """
        segment = pb.Segment(format=FORMAT_VERSION, run_id=run_id, seq=seq, events=events)
        version = await self.backend.create(segment_key(run_id, seq), segment.SerializeToString())
        return version is not None

    async def read_log(self, run_id: str) -> StoredLog:
        """
        Read a run's log. A compaction may delete the snapshot or segments being read;
        then the read starts again.

        :raises CorruptLog: as :meth:`_read_log_once`
        """
        for _ in range(4):
            try:
                return await self._read_log_once(run_id)
            except _Vanished:
                continue
        return await self._read_log_once(run_id)

    async def _read_log_once(self, run_id: str) -> StoredLog:
        """
        Reads the newest snapshot, if any, and the segments after it.

        :raises CorruptLog: if a segment does not parse, belongs to another run, comes
            from a newer format, or a segment number is missing
        """
        events: list[pb.Event] = []
        ends: list[int] = []
        seq = -1
        snapshot_seq = -1
        after = None
        snapshots = await self.backend.list(snapshot_prefix(run_id))
        snapshot = await self.backend.get(snapshots[-1]) if snapshots else None
        if snapshots and snapshot is None:
            raise _Vanished
        if snapshot is not None:
            key = snapshots[-1]
            segment = _parse(pb.Segment, snapshot[0], run_id, key)
            _check_segment(segment, run_id, key, int(key.rsplit("/", 1)[1]))
            events.extend(segment.events)
            ends.extend(segment.segment_ends)
            seq = snapshot_seq = segment.seq
            after = segment_key(run_id, seq)
        keys = await self.backend.list_all(log_prefix(run_id), after=after)
        entries = await self.backend.get_many(keys)
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:  # deleted under us: by a compaction, or a gc of a finished run
                raise _Vanished
            seq += 1
            segment = _parse(pb.Segment, entry[0], run_id, key)
            if key != segment_key(run_id, seq):
                raise CorruptLog(run_id, key, f"segment {seq} is missing before it")
            _check_segment(segment, run_id, key, seq)
            events.extend(segment.events)
            ends.append(len(events))
        if events and events[0].WhichOneof("kind") != "started":
            raise CorruptLog(run_id, segment_key(run_id, 0), "the log does not begin with a start")
        return StoredLog(events, seq, ends, snapshot_seq)

    async def write_snapshot(self, run_id: str, log: StoredLog) -> None:
        """
        Store segments ``0..log.last_seq`` as one object, then drop older snapshots.
        Safe to race: every writer of a snapshot of ``seq`` writes the same events.
        """
        snapshot = pb.Segment(
            format=FORMAT_VERSION,
            run_id=run_id,
            seq=log.last_seq,
            events=log.events,
            segment_ends=log.segment_ends,
        )
        key = snapshot_key(run_id, log.last_seq)
        await self.backend.put(key, snapshot.SerializeToString())
        older = await self.backend.list(snapshot_prefix(run_id))
        await self.delete([other for other in older if other < key])

    async def write_compacted(self, run_id: str, seq: int, events: list[pb.Event]) -> None:
        """
        Store a compacted history as the snapshot at ``seq`` and delete the segments
        before ``seq``. Segment ``seq`` itself stays: it is what fences a stale agent
        that read the log up to ``seq - 1``.

        An agent that went stale before an *earlier* point could still create a segment
        number below ``seq``, now free. Readers never see it (they read the newest
        snapshot and only the segments after it), summaries are guarded by log
        position, its inbox deletions touch only events the live agents merged since,
        and the children it starts are the ones the run starts (ids derive from the
        position). The one stray effect left: if its stale replay ended the run with
        ``continue_using``, it can start that continuation. It takes an agent stalled
        across a whole compaction interval, past its lease.
        """
        await self.write_snapshot(run_id, StoredLog(events, seq, [len(events)] * (seq + 1)))
        keys = await self.backend.list_all(log_prefix(run_id))
        await self.delete([key for key in keys if key < segment_key(run_id, seq)])

    # ---- inbox ----

    async def post(self, run_id: str, entry: pb.InboxEntry) -> None:
        """Put an event in the run's inbox, then ask for an agent at once."""
        key = f"{inbox_prefix(run_id)}{entry.sent_at_ms:015d}-{entry.id}"
        await self.backend.create(key, entry.SerializeToString())
        await self.schedule(run_id, entry.sent_at_ms, uuid.uuid4().hex[:12])

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
        return [
            (key, _parse(pb.InboxEntry, entry[0], run_id, key))
            for key, entry in zip(keys, entries, strict=True)
            if entry is not None
        ]

    # ---- meta ----

    async def read_meta(self, run_id: str) -> pb.RunMeta | None:
        meta, _ = await self.read_meta_version(run_id)
        return meta

    async def read_meta_version(self, run_id: str) -> tuple[pb.RunMeta | None, str | None]:
        """The run's summary and its version (for :meth:`write_meta`), or ``(None, None)``."""
        entry = await self.backend.get(meta_key(run_id))
        if entry is None:
            return None, None
        return _parse(pb.RunMeta, entry[0], run_id, meta_key(run_id)), entry[1]

    async def write_meta(
        self,
        meta: pb.RunMeta,
        *,
        current: tuple[pb.RunMeta | None, str | None] | None = None,
    ) -> None:
        """
        Write a run's summary unless a summary of a later segment is already there.

        :param current: the summary the caller read and its version (``(None, None)``: it
            read none, e.g. a run it just created). The first attempt is then one
            conditional write (``replace`` of that version, or ``create``) instead of a
            read and a write; if the summary changed since, it falls back to reading it.
        """
        key = meta_key(meta.run_id)
        data = meta.SerializeToString()
        if current is not None:
            stored, version = current
            if stored is not None and stored.log_seq > meta.log_seq:
                return
            if version is None:
                if await self.backend.create(key, data) is not None:
                    return
            elif await self.backend.replace(key, data, version) is not None:
                return
        for _ in range(10):
            entry = await self.backend.get(key)
            if entry is None:
                if await self.backend.create(key, data) is not None:
                    return
                continue
            try:
                stored = _parse(pb.RunMeta, entry[0], meta.run_id, key)
            except CorruptLog:  # a summary is a hint: an unreadable one is overwritten
                pass
            else:
                if stored.log_seq > meta.log_seq:
                    return
            if await self.backend.replace(key, data, entry[1]) is not None:
                return

    # ---- schedule ----

    async def schedule(self, run_id: str, due_ms: int, tag: str = "t") -> None:
        """Ask for an agent to look at ``run_id`` at ``due_ms``."""
        data = pb.ScheduleEntry(nonce=uuid.uuid4().hex).SerializeToString()
        key = schedule_key(due_ms, run_id, tag)
        if tag == "t":
            await self.backend.create(key, data)
        else:
            await self.backend.put(key, data)

    async def due(
        self, now: int, *, after: str | None = None, limit: int = 64
    ) -> tuple[list[ScheduleEntry], int | None, bool]:
        """
        Schedule entries due at ``now``, earliest first, reading at most ``limit`` keys.

        :return: the due entries; the due time of the first entry not yet due, if one
            was read; and whether more due entries may follow
        """
        keys = await self.backend.list(SCHEDULE_PREFIX, after=after, limit=limit)
        due: list[ScheduleEntry] = []
        for key in keys:
            entry = ScheduleEntry.parse(key)
            if entry is None:
                if _schedule_parts(key) is not None:  # shaped as one, but naming no run
                    await self._drop_nameless(key)
                continue
            if entry.due_ms > now:
                return due, entry.due_ms, False
            due.append(entry)
        return due, None, len(keys) == limit

    async def _drop_nameless(self, key: str) -> None:
        """Delete a schedule key whose run id breaks the rule: it can wake no run."""
        log.warning("deleting schedule key %r: its run id breaks the run-id rule", key)
        try:
            await self.backend.delete(key)
        except ValueError as exc:  # a key this backend cannot even address
            log.warning("could not delete schedule key %r: %s", key, exc)

    async def delete(self, keys: Sequence[str]) -> None:
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(self.backend.delete, key)

    # ---- leases ----

    async def acquire(self, run_id: str, owner: str, ttl_ms: int) -> Lease | None:
        """
        Take the run's lease if it is free or expired.

        :return: the lease, or None if another agent holds it
        """
        key = lease_key(run_id)
        now = self.clock.now_ms()
        expires = now + ttl_ms
        data = _lease_bytes(owner, expires)
        version = await self.backend.create(key, data)
        if version is None:
            current = await self.backend.get(key)
            if current is None:
                version = await self.backend.create(key, data)
            else:
                if _lease_holds(current[0], run_id, now, ttl_ms):
                    return None
                version = await self.backend.replace(key, data, current[1])
        return None if version is None else Lease(run_id, owner, version, expires)

    async def renew(self, lease: Lease, ttl_ms: int) -> Lease | None:
        """:return: the renewed lease, or None if it was lost"""
        expires = self.clock.now_ms() + ttl_ms
        version = await self.backend.replace(
            lease_key(lease.run_id), _lease_bytes(lease.owner, expires), lease.version
        )
        return None if version is None else Lease(lease.run_id, lease.owner, version, expires)

    async def release(self, lease: Lease) -> None:
        await self.backend.delete(lease_key(lease.run_id), lease.version)

    async def lease_holder(self, run_id: str) -> pb.Lease | None:
        entry = await self.backend.get(lease_key(run_id))
        if entry is None:
            return None
        return _parse(pb.Lease, entry[0], run_id, lease_key(run_id))


class _Vanished(Exception):
    """A record disappeared while the log was being read."""


def _check_segment(segment: pb.Segment, run_id: str, key: str, seq: int) -> None:
    if segment.format > FORMAT_VERSION:
        raise CorruptLog(
            run_id, key, f"written in format {segment.format}, this code reads up to "
            f"{FORMAT_VERSION}: upgrade substantial",
        )  # fmt: skip
    if segment.run_id != run_id or segment.seq != seq:
        raise CorruptLog(
            run_id, key, f"foreign segment: it says run {segment.run_id!r} segment {segment.seq}"
        )


def _lease_holds(data: bytes, run_id: str, now_ms: int, ttl_ms: int) -> bool:
    """
    Whether a stored lease still keeps other agents off its run. A lease is a hint:
    one that does not parse, or that claims the run further ahead than any live agent
    could (``LEASE_MAX_AHEAD`` lease lengths past this clock), protects nothing and is
    taken over, with a warning. The log stays safe either way: every write to it is
    create-if-absent of the next segment.
    """
    try:
        held = pb.Lease.FromString(data)
    except DecodeError as exc:
        log.warning("run %s: unreadable lease record taken over (%s)", run_id, exc)
        return False
    if held.expires_ms <= now_ms:
        return False
    ahead = held.expires_ms - now_ms
    if ahead > LEASE_MAX_AHEAD * ttl_ms:
        log.warning(
            "run %s: the lease of %r expires %.0fs ahead of this clock, more than %d lease "
            "lengths: treated as expired (is that agent's clock ahead?)",
            run_id, held.owner, ahead / 1000, LEASE_MAX_AHEAD,
        )  # fmt: skip
        return False
    return True


def _lease_bytes(owner: str, expires_ms: int) -> bytes:
    lease = pb.Lease(owner=owner, expires_ms=expires_ms, token=uuid.uuid4().hex)
    return lease.SerializeToString()


_M = TypeVar("_M", pb.Segment, pb.InboxEntry, pb.RunMeta, pb.Lease)


def _parse(kind: type[_M], data: bytes, run_id: str, key: str) -> _M:
    try:
        return kind.FromString(data)
    except DecodeError as exc:
        raise CorruptLog(run_id, key, f"not a {kind.__name__} record ({exc})") from None
