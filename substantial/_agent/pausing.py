"""
Pausing a run: ``Handle.pause()`` and ``resume()`` ask through the run's inbox; the next
agent to wake the run records the answer in its log (the log says whether a run is
paused), and leaves a paused run alone without running its code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from substantial._agent.leases import LeaseHolder
from substantial._agent.summary import RunSummary, SummaryChange
from substantial._core.status import RunStatus
from substantial._store.keys import Route, flat_schedule_key, schedule_key
from substantial._store.runs import RunStore, StoredLog
from substantial.errors import LeaseLost
from substantial.protocol import substantial_pb2 as pb

__all__ = ["is_paused", "leave_paused", "settle"]

log = logging.getLogger("substantial.agent")


def is_paused(events: Sequence[pb.Event]) -> bool:
    """Whether the last pause or resume in ``events`` was a pause."""
    for event in reversed(events):
        if event.WhichOneof("kind") == "pause_changed":
            return event.pause_changed.paused
    return False


async def settle(
    store: RunStore,
    holder: LeaseHolder,
    stored: StoredLog,
    entries: Sequence[tuple[str, pb.InboxEntry]],
) -> tuple[StoredLog, bool, list[str]]:
    """
    Carry out the pause and resume requests among the inbox ``entries``: the last one
    wins, and is recorded as the log's next segment if it changes the run's state (so a
    request merged twice, after a crash, changes nothing).

    :return: the log with that segment; whether the run is paused now; the keys of the
        requests carried out, to delete
    :raises LeaseLost: if another agent wrote that segment
    """
    run_id = holder.lease.run_id
    requests = [(key, entry) for key, entry in entries if entry.HasField("pause_change")]
    paused = is_paused(stored.events)
    if not requests:
        return stored, paused, []
    wanted = requests[-1][1].pause_change.paused
    if wanted != paused:
        event = pb.Event(at_ms=store.clock.now_ms(), pause_changed=pb.PauseChange(paused=wanted))
        seq = stored.last_seq + 1
        if holder.lost or not await store.append(run_id, seq, [event]):
            raise LeaseLost(run_id, f"segment {seq} was written by another agent")
        log.info("run %s %s", run_id, "paused" if wanted else "resumed")
        events = [*stored.events, event]
        stored = StoredLog(events, seq, [*stored.segment_ends, len(events)], stored.snapshot_seq)
    return stored, wanted, [key for key, _ in requests]


async def leave_paused(
    store: RunStore, summary: RunSummary, route: Route, seq: int, consumed: list[str]
) -> None:
    """
    Leave a paused run: its summary says ``paused``, its timer entry and the entries
    this wake-up answered are dropped (``resume()`` wakes it, and replay finds its timers).
    """
    meta = summary.meta
    if not summary.says(RunStatus.PAUSED):
        await summary.write(SummaryChange(RunStatus.PAUSED, seq))
    if meta is not None and meta.wake_at_ms:
        wake = (meta.wake_at_ms, summary.run_id, "t", route)
        await store.delete([schedule_key(*wake), flat_schedule_key(*wake)])  # either layout
    await store.delete(consumed)
