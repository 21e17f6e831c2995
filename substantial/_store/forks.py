"""
Forks on a backend: where a fork's log is cut from its original's, writing the fork, and
the records that tell an original of its forks.

A fork is a new run whose segment 0 holds the original's start (same workflow,
arguments, start time and seed, so the copied events replay the same) and the
original's events before the cut. Writing that segment with create-if-absent is the
one atomic step, as for ``start``; the original's log is never written.

The original learns of a fork from a record beside its log, ``runs/{run}/forks/{fork}``,
written *before* the fork's segment 0: a kill between the two leaves a record whose
fork has no log, which readers skip, instead of a fork its original cannot name.
"""

from __future__ import annotations

from dataclasses import dataclass

from substantial._store.keys import Route, fork_key, forks_prefix, segment_key
from substantial._store.records import parse_record
from substantial._store.runs import RunStore, StoredLog
from substantial.errors import CorruptLog, ForkError
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Fork", "cut_at_end", "cut_at_step", "forks_of", "write_fork"]

#: The events that carry a position (``#N`` in ``substantial show``).
_POSITIONAL = ("step_completed", "step_attempt_failed", "timer_started", "timer_fired",
               "child_started")  # fmt: skip


@dataclass(frozen=True)
class Fork:
    """
    A fork of a run, as its record and its log say.

    :ivar run_id: the fork
    :ivar step: the position its log was cut at
    :ivar at_ms: when it was made
    :ivar retry: whether ``retry()`` made it
    """

    run_id: str
    step: int
    at_ms: int
    retry: bool


def position(event: pb.Event) -> int | None:
    """The position an event is recorded for, if it has one."""
    kind = event.WhichOneof("kind")
    if kind in _POSITIONAL:
        return int(getattr(event, kind).position)
    return None


def cut_at_step(run_id: str, stored: StoredLog, step: int) -> int:
    """
    Where a fork at ``step`` cuts the log: the index of the first event recorded for
    that position (a failed attempt, a result, a timer's start or firing, a child's
    start). Events of other positions recorded before it are kept.

    :raises ForkError: if nothing is recorded at ``step``, or the cut is not sound
    """
    for index, event in enumerate(stored.events):
        if position(event) == step:
            _check_cut(run_id, stored, index, f"#{step}")
            return index
    recorded = sorted({p for p in map(position, stored.events) if p is not None})
    shown = ", ".join(f"#{p}" for p in recorded[:20]) or "none"
    raise ForkError(
        run_id,
        f"its log records nothing at #{step} (a save, sleep, receive timeout or child "
        f"records its position; recorded: {shown})",
    )


def cut_at_end(run_id: str, stored: StoredLog) -> int:
    """The cut that keeps the whole log but its terminal event."""
    index = len(stored.events) - 1
    _check_cut(run_id, stored, index, "its end")
    return index


def _check_cut(run_id: str, stored: StoredLog, index: int, where: str) -> None:
    """
    :raises ForkError: if events before ``index`` were compacted away (a compacted
        snapshot's segments all end at the same index), or a child started before the
        cut had not ended by it: its end goes to the original, never to the fork
    """
    compacted = 0
    for end, following in zip(stored.segment_ends, stored.segment_ends[1:], strict=False):
        if end == following:
            compacted = end
    if index < compacted:
        first = next((p for p in map(position, stored.events[compacted:]) if p is not None), None)
        after = f" (#{first} or later)" if first is not None else ""
        raise ForkError(
            run_id,
            f"its history before {where} was compacted, so the log no longer holds what came "
            f"before it; fork at a step recorded after the compaction{after}",
        )
    prefix = stored.events[:index]
    ended = {e.child_ended.run_id for e in prefix if e.WhichOneof("kind") == "child_ended"}
    for event in prefix:
        child = event.child_started
        if event.WhichOneof("kind") != "child_started" or child.id_taken or child.detached:
            continue
        if child.run_id not in ended:
            raise ForkError(
                run_id,
                f"its child run {child.run_id!r}, started at #{child.position}, had not ended "
                f"before {where}, and a fork never hears of its end; fork at "
                f"#{child.position} or before",
            )


async def write_fork(
    store: RunStore,
    original: str,
    stored: StoredLog,
    *,
    cut: int,
    step: int,
    fork_id: str,
    retry: bool = False,
) -> bool:
    """
    Write the fork ``fork_id`` of ``original``: its record beside the original, a
    schedule entry, then its segment 0 (create-if-absent: the atomic step), then its
    summary. Repeating it after a crash, or racing it, makes one fork.

    :param stored: the original's log as read; ``stored.events[1:cut]`` are copied
    :return: whether this call created the fork (False: it existed already)
    :raises ForkError: if ``fork_id`` names a run that is not this same fork
    """
    if await _existing(store, original, fork_id, cut):
        return False
    at = store.clock.now_ms()
    started = pb.Started()
    started.CopyFrom(stored.events[0].started)
    for name in ("parent_run_id", "continued_from", "chain_root", "chain_index", "detached"):
        started.ClearField(name)  # a fork is a run of its own: no parent, no chain
    started.run_id = fork_id
    started.forked_from = original
    started.fork_step = step
    started.forked_at_ms = at
    started.fork_events = cut
    first = pb.Event(at_ms=stored.events[0].at_ms, started=started)
    record = pb.ForkRecord(run_id=fork_id, step=step, at_ms=at, retry=retry)
    await store.backend.create(fork_key(original, fork_id), record.SerializeToString())
    route = Route.of(started.queue, started.workflow, started.priority)  # the original's
    await store.schedule(fork_id, at, "s", route)  # first, as start does: segment 0 runs
    if not await store.append(fork_id, 0, [first, *stored.events[1:cut]]):
        if await _existing(store, original, fork_id, cut):
            return False
        raise ForkError(original, f"run id {fork_id!r} was taken meanwhile")  # pragma: no cover
    meta = pb.RunMeta(
        run_id=fork_id, workflow=started.workflow, args=started.args, created_ms=at,
        updated_ms=at, status=pb.RUN_STATUS_PENDING, log_seq=0, forked_from=original,
        fork_step=step, queue=started.queue, priority=started.priority,
    )  # fmt: skip
    await store.write_meta(meta, current=(None, None))
    return True


async def _existing(store: RunStore, original: str, fork_id: str, cut: int) -> bool:
    """
    Whether ``fork_id`` is already this fork (same original, same cut).

    :raises ForkError: if it is another run
    """
    entry = await store.backend.get(segment_key(fork_id, 0))
    if entry is None:
        return False
    started = _started(fork_id, entry[0])
    if started is not None and started.forked_from == original and started.fork_events == cut:
        return True
    raise ForkError(original, f"run id {fork_id!r} is taken by another run; choose another")


def _started(run_id: str, data: bytes) -> pb.Started | None:
    try:
        segment = parse_record(pb.Segment, data, run_id, segment_key(run_id, 0))
    except CorruptLog:
        return None
    if segment.events and segment.events[0].WhichOneof("kind") == "started":
        return segment.events[0].started
    return None


async def forks_of(store: RunStore, run_id: str) -> list[Fork]:
    """
    The forks of ``run_id``, oldest first: its fork records whose fork's log exists and
    names this run as its origin (a record left by a fork that died before its log, or
    of a fork deleted since, is skipped).
    """
    backend = store.backend
    keys = await backend.list_all(forks_prefix(run_id))
    records = await backend.get_many(keys)
    found: list[Fork] = []
    for key, entry in zip(keys, records, strict=True):
        if entry is None:
            continue
        try:
            record = parse_record(pb.ForkRecord, entry[0], run_id, key)
        except CorruptLog:
            continue
        first = await backend.get(segment_key(record.run_id, 0)) if record.run_id else None
        started = _started(record.run_id, first[0]) if first is not None else None
        if started is not None and started.forked_from == run_id:
            found.append(Fork(record.run_id, started.fork_step, record.at_ms, record.retry))
    return sorted(found, key=lambda fork: (fork.at_ms, fork.run_id))
