"""
Flow control, as the :class:`~substantial.Conductor` offers it: cron schedules, named
step limits, paused queues. Every piece is data on the backend, so any process may steer
it and every agent obeys.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from substantial._client import limits as limits_api
from substantial._client.client import Client
from substantial._client.limits import LimitInfo
from substantial._client.schedules import Schedule, make_schedule
from substantial._engine.workflow import Workflow
from substantial._store import crons
from substantial._store.keys import check_name, queue_paused_key
from substantial._store.runs import RunStore
from substantial.backends.base import Backend

__all__ = ["FlowControl"]


class FlowControl:
    """The flow-control half of :class:`~substantial.Conductor`."""

    backend: Backend
    store: RunStore
    _client: Client

    def _forget_limit(self, name: str) -> None:
        """A limit changed here: this process's agent reads it again (Conductor overrides)."""

    # ---- cron schedules ----

    async def schedule(
        self,
        schedule_id: str,
        wf: Workflow[Any] | str,
        *args: Any,
        cron: str,
        timezone: str = "UTC",
        catchup: str = "latest",
        **kwargs: Any,
    ) -> Schedule:
        """
        Start a run of ``wf`` at each tick of a cron expression, from any agent that
        knows the workflow: exactly one run per tick however many agents there are, with
        the run id ``{schedule_id}@{tick in UTC, e.g. 20261201T020000Z}``. Making a
        schedule that exists updates it (its expression, arguments and catchup; it keeps
        its place and its pause).

        :param schedule_id: the schedule's name (letters, digits, ``._-``)
        :param cron: five fields (minute hour day month weekday), or six with seconds
            first; ``@daily`` and the like are not supported
        :param timezone: an IANA name; ticks follow its daylight-saving rules: a tick
            in the hour skipped in spring runs once at the first valid time after it, a
            daily tick in the hour repeated in autumn runs once (cronsim's rules)
        :param catchup: ticks missed while no agent ran (more than a minute late):
            ``"none"`` skips them, ``"latest"`` starts the last one, ``"all"`` starts each
        :raises InvalidSchedule: for a bad expression, time zone or catchup
        :raises InvalidName: if ``schedule_id`` breaks the naming rule
        :raises UnknownWorkflow, InvalidArguments, CodecError: as :meth:`start` does
        """
        return await make_schedule(
            self._client, schedule_id, wf, args, kwargs,
            cron=cron, timezone=timezone, catchup=catchup,
        )  # fmt: skip

    def get_schedule(self, schedule_id: str) -> Schedule:
        """The schedule of that id, from any process (nothing is read until it is used)."""
        return Schedule(self._client, schedule_id)

    async def schedules(self) -> list[Schedule]:
        """Every cron schedule on the backend, by id."""
        return [Schedule(self._client, key) for key in await crons.list_ids(self.store)]

    # ---- named step limits ----

    async def set_limit(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        rate: int | None = None,
        per: timedelta | float | None = None,
    ) -> None:
        """
        Store a limit on the backend, shared by every agent and process: steps saved
        with ``c.save(fn, limit=name)`` wait (durably, their run released) for one of
        ``concurrency`` slots and one of ``rate`` starts per ``per``. Setting it again
        changes it; agents see the change within a second.

        :param concurrency: at most this many such steps at once, across all agents
        :param rate: at most this many starts in any window of ``per``
        :param per: the window of ``rate`` (a ``timedelta`` or seconds)
        :raises InvalidName: if ``name`` breaks the naming rule
        :raises ValueError: if neither bound is given, or one is out of range
        """
        await limits_api.set_limit(self.store, name, concurrency, rate, per)
        self._forget_limit(name)

    async def get_limit(self, name: str) -> LimitInfo | None:
        """The limit and its current use, or None if none is set under ``name``."""
        return await limits_api.get_limit(self.store, name)

    async def delete_limit(self, name: str) -> bool:
        """Delete a limit (its steps then run unlimited); whether there was one."""
        self._forget_limit(name)
        return await limits_api.delete_limit(self.store, name)

    async def limits(self) -> list[LimitInfo]:
        """Every limit on the backend, with its current use, by name."""
        return await limits_api.list_limits(self.store)

    # ---- queues ----

    async def pause_queue(self, name: str) -> None:
        """
        Pause a queue for every agent on the backend: none claims its runs until
        :meth:`resume_queue` (runs in flight go on to the end of their wake-up). Agents
        see it at their next poll. Starts, sends and timers still land
        in the queue; the runs keep their status.

        :raises InvalidName: if ``name`` breaks the naming rule
        """
        await self.backend.put(queue_paused_key(check_name(name, "queue")), b"paused")
        self._client.paused_queues.add(name)  # this process's agent knows at once

    async def resume_queue(self, name: str) -> None:
        """
        Resume a paused queue: its due runs are claimed again.

        :raises InvalidName: if ``name`` breaks the naming rule
        """
        await self.backend.delete(queue_paused_key(check_name(name, "queue")))
        self._client.paused_queues.discard(name)  # this process's starts hand runs again
        self._client.notifier.kick()

    async def queue_paused(self, name: str) -> bool:
        """Whether the queue ``name`` is paused on this backend."""
        return await self.backend.get(queue_paused_key(check_name(name, "queue"))) is not None
