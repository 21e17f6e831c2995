"""
After a reboot, wake every run that a power loss may have left unwoken (see
``substantial.backends._boot``).

Where the store recovers from reboots, a run's start entry and its final summary are
written without a flush, so a power loss can undo them: a started run then has no entry
to wake it, or an ended run a summary from before its end while the deletion of its last
entry held. Each agent checks at its start whether the machine rebooted since the store
last recovered; the first to see it gives each such run an entry due now, then records
the boot. A wake-up of a run whose log ended rewrites its summary from the log.

Which runs: those whose summary is missing, unreadable, pending or running (a start
entry may be gone), and those whose summary says sleeping, waiting, parked, queued or
paused while their log ends (a final summary may be gone). A summary that says the run
ended is right: it is written after the end is flushed. A run that sleeps, waits or is
held off has a flushed entry, or needs none, and is not woken.

One bad run never stops the recovery: a run it cannot read is woken (its wake-up parks
it if need be), a folder that names no run is skipped. If the store fails, it tries
again later from where it stopped; the boot is recorded only when every run is done.
Agents of one machine starting together take turns (a lock): the first wakes the runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import anyio
from google.protobuf.message import DecodeError

from substantial._agent.health import backoff, describe
from substantial._core.runids import MAX_RUN_ID_LENGTH, is_stored_run_id
from substantial._core.status import END_STATUS, FINAL_PB
from substantial._ops.listing import iter_run_ids
from substantial._store.keys import Route, log_prefix, meta_key, run_prefix, segment_key
from substantial._store.runs import RunStore
from substantial.backends.base import RecoveryBusy
from substantial.errors import BackendRefused, BackendUnavailable
from substantial.protocol import substantial_pb2 as pb

__all__ = ["recover_after_reboot", "wake_unfinished_runs"]

log = logging.getLogger("substantial.agent")

#: How many runs' summaries are read together.
BATCH = 200
#: Statuses under which a run has a flushed entry or needs none, unless its log ended.
SETTLED = frozenset(
    {pb.RUN_STATUS_SLEEPING, pb.RUN_STATUS_WAITING, pb.RUN_STATUS_PARKED,
     pb.RUN_STATUS_QUEUED, pb.RUN_STATUS_PAUSED}
)  # fmt: skip


async def recover_after_reboot(
    store: RunStore, kick: Callable[[], None] = lambda: None, *, retry: float = 1.0
) -> None:
    """
    If the machine rebooted since the store last recovered: wake the runs a power loss
    may have left unwoken, then record the boot. Runs in the background of an agent;
    never raises (a failure is logged and tried again, from where it stopped, after
    ``retry`` seconds, doubling up to a minute).

    :param kick: tells this process's agent to poll now (runs were woken)
    """
    reboots = store.backend.reboots
    if reboots is None:
        return
    after: list[str] = []  # the last run done, across tries
    attempt = 0
    while True:
        try:
            boot = await reboots.pending()
        except RecoveryBusy:  # another agent of this machine is at it: wait for it
            await anyio.sleep(retry)
            continue
        except Exception as exc:
            attempt = await _failed(exc, attempt, retry)
            continue
        if boot is None:
            return
        try:  # this task holds the recovery lock until it marks or releases
            woken = await wake_unfinished_runs(store, after)
            await reboots.mark(boot)
        except BaseException as exc:
            reboots.release()
            if not isinstance(exc, Exception):
                raise  # cancelled: the agent stops
            attempt = await _failed(exc, attempt, retry)
            continue
        if woken:
            kick()
        log.info("recovery after a reboot: woke %d run(s)", woken)
        return


async def _failed(exc: Exception, attempt: int, retry: float) -> int:
    """Log a failed try and wait before the next; the count of tries that failed."""
    attempt += 1
    log.warning("recovery after a reboot: %s; trying again", describe(exc),
                exc_info=attempt == 1)  # fmt: skip
    await anyio.sleep(backoff(retry, attempt, 60.0))
    return attempt


async def wake_unfinished_runs(store: RunStore, after: list[str] | None = None) -> int:
    """
    Give every run a power loss may have left unwoken an entry due now; how many.

    :param after: ``[run id]``: start past that run; kept up to date as runs are done,
        so that a call after a failure goes on from there
    """
    after = [] if after is None else after
    done = run_prefix(after[0]) if after else ""  # ids come in the order of their keys
    woken = 0
    batch: list[str] = []
    async for run_id in iter_run_ids(store.backend):
        if run_prefix(run_id) <= done:
            continue
        if not is_stored_run_id(run_id) or len(run_id) > MAX_RUN_ID_LENGTH:
            # Names no run, or one of a version that flushed every write (this one
            # refuses longer ids, derived ones included).
            log.warning("recovery after a reboot: skipped %r under runs/", run_id)
            continue
        batch.append(run_id)
        if len(batch) == BATCH:
            woken += await _wake(store, batch, after)
            batch = []
    return woken + await _wake(store, batch, after)


async def _wake(store: RunStore, run_ids: Sequence[str], after: list[str]) -> int:
    woken = 0
    for run_id, meta in zip(run_ids, await _summaries(store, run_ids), strict=True):
        if meta is None or not await _settled(store, run_id, meta):
            # A failure here is the store's (the id fits every key): tried again from here
            route = await _route(store, meta, run_id)
            await store.schedule(run_id, store.clock.now_ms(), "boot", route)
            woken += 1
        after[:] = [run_id]
    return woken


async def _summaries(store: RunStore, run_ids: Sequence[str]) -> list[pb.RunMeta | None]:
    """The runs' summaries; None for one missing, unreadable, or of another run."""
    keys = [meta_key(run_id) for run_id in run_ids]
    try:
        entries = await store.backend.get_many(keys)
    except (BackendUnavailable, BackendRefused):
        raise
    except Exception:  # one of them cannot be read (a damaged file): read each alone
        entries = []
        for key in keys:
            try:
                entries.append(await store.backend.get(key))
            except (BackendUnavailable, BackendRefused):
                raise
            except Exception:
                entries.append(None)
    found: list[pb.RunMeta | None] = []
    for run_id, entry in zip(run_ids, entries, strict=True):
        meta = None
        if entry is not None:
            with contextlib.suppress(DecodeError):
                meta = pb.RunMeta.FromString(entry[0])
        found.append(meta if meta is not None and meta.run_id == run_id else None)
    return found


async def _settled(store: RunStore, run_id: str, meta: pb.RunMeta) -> bool:
    """Whether the run needs no wake-up: it ended, or it is settled and its log goes on."""
    if meta.status in FINAL_PB:
        return True
    if meta.status not in SETTLED:
        return False
    try:
        later = await store.backend.list_all(
            log_prefix(run_id), after=segment_key(run_id, meta.log_seq)
        )
        entry = await store.backend.get(later[-1] if later else segment_key(run_id, meta.log_seq))
        segment = pb.Segment.FromString(entry[0]) if entry is not None else None
    except (BackendUnavailable, BackendRefused):
        raise
    except Exception:  # a log it cannot read: woken, and parked by its wake-up
        return False
    if segment is None or not segment.events:
        return False  # no log where its summary says there is one: the wake-up sees
    return segment.events[-1].WhichOneof("kind") not in END_STATUS


async def _route(store: RunStore, meta: pb.RunMeta | None, run_id: str) -> Route:
    if meta is not None and meta.workflow:
        return Route.of(meta.queue, meta.workflow, meta.priority)
    with contextlib.suppress(Exception):
        return await store.route_of(run_id)
    return Route()  # for any agent: its wake-up sends the run on to its own
