"""Cron schedules seen from outside: make one, list them, and :class:`Schedule`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from substantial._client.client import Client
from substantial._client.handle import Handle
from substantial._core import crontab
from substantial._engine.workflow import Workflow
from substantial._store import crons
from substantial._store.keys import check_name, cron_key
from substantial.codec import encode_payload
from substantial.errors import InvalidSchedule, ScheduleNotFound
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Schedule", "ScheduleInfo", "make_schedule", "start_tick"]

log = logging.getLogger("substantial.client")


@dataclass(frozen=True)
class ScheduleInfo:
    """
    What :meth:`Schedule.describe` reports.

    :ivar next_ticks: the next tick times, in the schedule's time zone (none while paused)
    :ivar last_run_id: the run of the last tick started (None: none yet)
    :ivar last_tick: that tick's time
    """

    id: str
    workflow: str
    cron: str
    timezone: str
    catchup: str
    paused: bool
    queue: str
    next_ticks: list[datetime]
    last_run_id: str | None
    last_tick: datetime | None


class Schedule:
    """A cron schedule on the backend, from any process (``Conductor.schedule``)."""

    def __init__(self, client: Client, schedule_id: str) -> None:
        self._client = client
        self.id = check_name(schedule_id, "schedule")

    def __repr__(self) -> str:
        return f"<Schedule id={self.id!r}>"

    async def _record(self) -> pb.CronSchedule:
        found = await crons.read(self._client.store, self.id)
        if found is None:
            raise ScheduleNotFound(self.id)
        return found[0]

    async def describe(self, ticks: int = 5) -> ScheduleInfo:
        """
        The schedule's settings, its next ``ticks`` tick times and its last run.

        :raises ScheduleNotFound: if it was deleted
        """
        record = await self._record()
        zone = ZoneInfo(record.timezone)
        after = max(record.done_ms, self._client.store.clock.now_ms())
        upcoming = [] if record.paused else list(
            islice(crontab.ticks_after(record.cron, record.timezone, after), ticks)
        )  # fmt: skip
        return ScheduleInfo(
            id=record.id, workflow=record.workflow, cron=record.cron,
            timezone=record.timezone, catchup=record.catchup, paused=record.paused,
            queue=record.queue or "default",
            next_ticks=[datetime.fromtimestamp(t / 1000, zone) for t in upcoming],
            last_run_id=record.last_run_id or None,
            last_tick=datetime.fromtimestamp(record.last_tick_ms / 1000, zone)
            if record.last_tick_ms else None,
        )  # fmt: skip

    async def pause(self) -> None:
        """
        Start no more runs until :meth:`resume`; ticks that fall meanwhile never run.

        :raises ScheduleNotFound: if it was deleted
        """
        await crons.update(self._client.store, self.id, _set_paused(True))

    async def resume(self) -> None:
        """
        Start runs again from the next tick on (the ticks skipped while paused stay
        skipped, whatever ``catchup`` says).

        :raises ScheduleNotFound: if it was deleted
        """
        store = self._client.store
        now = store.clock.now_ms()

        def resume(record: pb.CronSchedule) -> None:
            if record.paused:
                record.paused = False
                record.done_ms = max(record.done_ms, now)

        record = await crons.update(store, self.id, resume)
        following = crons.next_tick(record)
        if following is not None:
            await crons.write_tick(store, record, following)
        self._client.notifier.kick()

    async def delete(self) -> None:
        """Delete the schedule; its runs are left alone. Deleting it twice is no error."""
        await self._client.store.backend.delete(cron_key(self.id))

    async def trigger(self) -> Handle[Any]:
        """
        Start a run now, outside the cron (id ``{schedule}@manual-{ms}``).

        :raises ScheduleNotFound: if it was deleted
        """
        record = await self._record()
        run_id = f"{self.id}@manual-{self._client.store.clock.now_ms()}"
        await start_tick(self._client, record, run_id)
        return self._client.handle(run_id)


def _set_paused(paused: bool) -> Any:
    def change(record: pb.CronSchedule) -> None:
        record.paused = paused

    return change


async def make_schedule(
    client: Client,
    schedule_id: str,
    wf: Workflow[Any] | str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    cron: str,
    timezone: str,
    catchup: str,
) -> Schedule:
    """Create or update a schedule; see :meth:`substantial.Conductor.schedule`."""
    check_name(schedule_id, "schedule")
    if catchup not in crontab.CATCHUPS:
        raise InvalidSchedule(
            schedule_id, f"catchup must be one of {crontab.CATCHUPS}, not {catchup!r}"
        )
    try:
        crontab.check(cron, timezone)
    except ValueError as exc:
        raise InvalidSchedule(schedule_id, str(exc)) from None
    if isinstance(wf, str) and wf not in client.registry:
        name, queue = wf, "default"
    else:
        workflow = client.lookup(wf)
        workflow.check_arguments(args, kwargs)
        name, queue = workflow.name, workflow.queue
    payload = encode_payload([list(args), kwargs], where="args", limit=client.max_payload)
    store = client.store
    now = store.clock.now_ms()
    wanted = pb.CronSchedule(
        id=schedule_id, workflow=name, args=payload, cron=cron, timezone=timezone,
        catchup=catchup, queue=queue, done_ms=now, created_ms=now, updated_ms=now,
    )  # fmt: skip
    key = cron_key(schedule_id)
    if await store.backend.create(key, wanted.SerializeToString()) is None:

        def change(record: pb.CronSchedule) -> None:  # keeps where it was, and its pause
            done, paused, created = record.done_ms, record.paused, record.created_ms
            last = (record.last_run_id, record.last_tick_ms)
            record.CopyFrom(wanted)
            record.done_ms, record.paused, record.created_ms = done, paused, created
            record.last_run_id, record.last_tick_ms = last

        wanted = await crons.update(store, schedule_id, change)
    following = crons.next_tick(wanted)
    if following is not None and not wanted.paused:
        await crons.write_tick(store, wanted, following)
    client.notifier.kick()
    return Schedule(client, schedule_id)


async def start_tick(client: Client, record: pb.CronSchedule, run_id: str) -> bool:
    """Start the run of one tick (idempotent on ``run_id``); whether this call created it."""
    started = pb.Started(run_id=run_id, workflow=record.workflow, queue=record.queue)
    started.args.CopyFrom(record.args)
    created = await client.create_run(started)
    if created:
        log.info("schedule %s started run %s", record.id, run_id)
    return created
