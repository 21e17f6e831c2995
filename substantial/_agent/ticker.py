"""
Firing cron schedules: an agent that finds a schedule's tick entry due starts the runs
of the ticks due (as the schedule's ``catchup`` says), moves the schedule on, and writes
the entry of its next tick. Any number of agents may do this at once for one tick: the
run of a tick has an id made of the schedule id and the tick time, so only one starts.
"""

from __future__ import annotations

import logging

from substantial._client.client import Client
from substantial._client.schedules import start_tick
from substantial._core import crontab
from substantial._store import crons
from substantial._store.keys import ScheduleEntry, cron_key
from substantial.errors import CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["MAX_CATCHUP", "MISSED_AFTER_MS", "TICKING", "fire"]

log = logging.getLogger("substantial.agent")

#: How an agent names a schedule it is firing among the runs it works on (no run id
#: starts with ``~``).
TICKING = "~cron/"
#: A tick this late is "missed": ``catchup="none"`` skips it.
MISSED_AFTER_MS = 60_000
#: At most this many missed ticks start in one firing (``catchup="all"``); the rest at once after.
MAX_CATCHUP = 100


async def fire(client: Client, entries: list[ScheduleEntry]) -> None:
    """Handle the due tick entries of one schedule. Errors are logged, never raised."""
    store, schedule_id = client.store, entries[0].run_id
    try:
        found = await crons.read(store, schedule_id)
        written: str | None = None
        while found is not None and not found[0].paused:
            record, version = found
            now = store.clock.now_ms()
            ticks, done = _due(record, now)
            for tick in ticks:
                await start_tick(client, record, crons.tick_run_id(schedule_id, tick))
            changed = done > record.done_ms
            record.done_ms = max(record.done_ms, done)
            if ticks:
                record.last_tick_ms = ticks[-1]
                record.last_run_id = crons.tick_run_id(schedule_id, ticks[-1])
            following = crons.next_tick(record)
            if following is not None:  # written before the record moves on: never lost
                written = await crons.write_tick(store, record, following)
            if not changed:
                break
            record.updated_ms = now
            key = cron_key(schedule_id)
            if await store.backend.replace(key, record.SerializeToString(), version):
                break
            found = await crons.read(store, schedule_id)  # another agent moved it: again
        await store.delete([entry.key for entry in entries if entry.key != written])
    except CorruptLog as exc:
        log.error("schedule %s cannot be read, its tick is dropped: %s", schedule_id, exc)
        await store.delete([entry.key for entry in entries])
    except Exception:
        log.exception("schedule %s: its tick failed; retried at the next poll", schedule_id)


def _due(record: pb.CronSchedule, now: int) -> tuple[list[int], int]:
    """The ticks to start now, and the time up to which every tick is handled."""
    if record.catchup == "all":
        ticks: list[int] = []
        for tick in crontab.ticks_after(record.cron, record.timezone, record.done_ms):
            if tick > now or len(ticks) == MAX_CATCHUP:
                break
            ticks.append(tick)
        return ticks, ticks[-1] if ticks else record.done_ms
    latest = crontab.latest_tick(record.cron, record.timezone, now)
    if latest is None or latest <= record.done_ms:
        return [], record.done_ms
    if record.catchup == "latest" or now - latest <= MISSED_AFTER_MS:
        return [latest], latest
    return [], latest  # "none": missed, skipped
