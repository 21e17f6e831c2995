"""
After a reboot, wake every unfinished run once (see ``substantial.backends._boot``).

Where the store recovers from reboots, a run's start entry and its final summary are
written without a flush, so a power loss can undo them: a started run then has no entry
to wake it, or an ended run a summary that says it is still going while its last entry's
deletion held. Each agent checks at its start whether the machine rebooted since the
store last recovered; the first to see it gives every run whose summary does not say it
ended an entry due now, then records the boot. A wake-up of a run with nothing to do
reads its log and rewrites its summary (a sleeping run schedules its timer again).
Agents that do it at once give a run two entries, which is harmless.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import anyio
from google.protobuf.message import DecodeError

from substantial._core.status import FINAL_PB
from substantial._ops.listing import iter_run_ids
from substantial._store.keys import Route, meta_key
from substantial._store.runs import RunStore
from substantial.errors import BackendRefused, BackendUnavailable, CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["recover_after_reboot", "wake_unfinished_runs"]

log = logging.getLogger("substantial.agent")

#: How many runs' summaries are looked at together.
BATCH = 200
#: Seconds between tries while the store is unreachable.
RETRY_SECONDS = 5.0


async def recover_after_reboot(store: RunStore, kick: Callable[[], None] = lambda: None) -> None:
    """
    If the machine rebooted since the store last recovered: wake every unfinished run,
    then record the boot. Retries while the store is unreachable; runs as a background
    task of the agent (writes stay flushed until it is done).

    :param kick: tells this process's agent to poll now (runs were woken)
    """
    reboots = store.backend.reboots
    if reboots is None:
        return
    while True:
        try:
            boot = await reboots.pending()
            if boot is None:
                return
            woken = await wake_unfinished_runs(store)
            await reboots.mark(boot)
        except (BackendUnavailable, BackendRefused, OSError) as exc:
            log.warning("recovery after a reboot: %s; retrying", exc)
            await anyio.sleep(RETRY_SECONDS)
            continue
        if woken:
            kick()
            log.info("recovery after a reboot: woke %d unfinished run(s)", woken)
        return


async def wake_unfinished_runs(store: RunStore) -> int:
    """Give every run whose summary does not say it ended an entry due now; how many."""
    woken = 0
    batch: list[str] = []
    async for run_id in iter_run_ids(store.backend):
        batch.append(run_id)
        if len(batch) == BATCH:
            woken += await _wake(store, batch)
            batch = []
    return woken + await _wake(store, batch)


async def _wake(store: RunStore, run_ids: Sequence[str]) -> int:
    entries = await store.backend.get_many([meta_key(run_id) for run_id in run_ids])
    woken = 0
    for run_id, entry in zip(run_ids, entries, strict=True):
        meta = None
        if entry is not None:
            with contextlib.suppress(DecodeError):  # unreadable: the wake-up rewrites it
                meta = pb.RunMeta.FromString(entry[0])
        if meta is not None and meta.run_id == run_id and meta.status in FINAL_PB:
            continue
        if meta is not None and meta.run_id == run_id and meta.workflow:
            route = Route.of(meta.queue, meta.workflow, meta.priority)
        else:
            route = Route()  # for any agent: its wake-up sends it on to its own
            with contextlib.suppress(CorruptLog):  # parked by its wake-up, as any
                route = await store.route_of(run_id)
        await store.schedule(run_id, store.clock.now_ms(), "boot", route)
        woken += 1
    return woken
