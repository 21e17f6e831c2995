"""
Cron schedule records (``flow/schedules/{id}``) and their tick entries, on the storage
contract: a record changes by replace-if-unchanged only, a tick entry is created once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from substantial._core import crontab
from substantial._store.keys import (
    SCHEDULES_PREFIX,
    TICK_TAG,
    Route,
    cron_key,
    schedule_key,
)
from substantial._store.records import parse_record
from substantial._store.runs import RunStore
from substantial.errors import ScheduleNotFound
from substantial.protocol import substantial_pb2 as pb

__all__ = ["list_ids", "next_tick", "read", "tick_run_id", "update", "write_tick"]


def tick_run_id(schedule_id: str, tick_ms: int) -> str:
    """The run id of a schedule's tick: the same on every agent, so a repeat starts nothing."""
    when = datetime.fromtimestamp(tick_ms / 1000, UTC)
    return f"{schedule_id}@{when:%Y%m%dT%H%M%S}Z"


async def read(store: RunStore, schedule_id: str) -> tuple[pb.CronSchedule, str] | None:
    """
    The schedule's record and its version, or None if there is none.

    :raises CorruptLog: if the record does not parse
    """
    entry = await store.backend.get(cron_key(schedule_id))
    if entry is None:
        return None
    record = parse_record(pb.CronSchedule, entry[0], schedule_id, cron_key(schedule_id))
    return record, entry[1]


async def update(
    store: RunStore, schedule_id: str, change: Callable[[pb.CronSchedule], None]
) -> pb.CronSchedule:
    """
    Apply ``change`` to the stored record, retrying when another writer got there first.

    :return: the record written
    :raises ScheduleNotFound: if there is no record
    """
    while True:
        found = await read(store, schedule_id)
        if found is None:
            raise ScheduleNotFound(schedule_id)
        record, version = found
        change(record)
        record.updated_ms = store.clock.now_ms()
        if await store.backend.replace(cron_key(schedule_id), record.SerializeToString(), version):
            return record


def next_tick(record: pb.CronSchedule) -> int | None:
    """The first tick after the last one handled."""
    return next(crontab.ticks_after(record.cron, record.timezone, record.done_ms), None)


async def write_tick(store: RunStore, record: pb.CronSchedule, due_ms: int) -> str:
    """Ask an agent of the schedule's queue that knows its workflow to look at it at ``due_ms``."""
    key = schedule_key(due_ms, record.id, TICK_TAG, Route.of(record.queue, record.workflow))
    await store.backend.create(key, pb.ScheduleEntry().SerializeToString())
    return key


async def list_ids(store: RunStore) -> list[str]:
    return [key[len(SCHEDULES_PREFIX) :] for key in await store.backend.list_all(SCHEDULES_PREFIX)]
