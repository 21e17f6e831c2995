"""
Working one claimed run: keep its lease renewed while a wake-up runs, sort out what
went wrong (a lost lease, a store outage, an error of the run's own), release the lease.
"""

from __future__ import annotations

import functools
import logging

import anyio

from substantial._agent import telemetry
from substantial._agent.health import describe, mark_held
from substantial._agent.leases import LeaseHolder, keep_renewed
from substantial._agent.parts import AgentParts
from substantial._agent.wakeup import WakeUp
from substantial._client.client import NewRun
from substantial._core import logs
from substantial._store.runs import Lease, ScheduleEntry
from substantial.errors import BackendRefused, BackendUnavailable, LeaseLost

__all__ = ["RunProcessor"]

log = logging.getLogger("substantial.agent")


class RunProcessor:
    """Takes claimed runs through one wake-up each, and knows which are in flight."""

    def __init__(self, parts: AgentParts) -> None:
        self._parts = parts
        self._store = parts.store
        #: runs this agent works on now
        self.active: set[str] = set()
        self._scopes: dict[str, anyio.CancelScope] = {}

    async def process(
        self, lease: Lease, entries: list[ScheduleEntry], new: NewRun | None = None
    ) -> None:
        """
        One wake-up of the run ``lease`` is for (``run_id`` in ``active`` already),
        answering schedule ``entries``. Raises nothing: failures become hold-offs.

        :param new: the run as the start that just created it wrote it (nothing to read)
        """
        parts, run_id = self._parts, lease.run_id
        logs.run_id_var.set(run_id)  # this task's log lines name the run (substantial._core.logs)
        holder = LeaseHolder(lease)
        wakeup = WakeUp(parts, holder, entries, new)
        try:
            with anyio.CancelScope(shield=True) as scope, telemetry.run_span(run_id):
                self._scopes[run_id] = scope
                await self._wake_under_lease(holder, wakeup)
        except LeaseLost as exc:
            log.warning("agent %s dropped run %s: %s", parts.settings.name, run_id, exc)
        except (BackendUnavailable, BackendRefused) as exc:
            parts.trouble.failed(exc)
            # Jittered exponential backoff per run, so a long outage is not a retry storm.
            _, wait = parts.holdoffs.outages.failed(run_id)
            parts.holdoffs.hold(run_id, wait)
        except Exception as exc:
            await self._hold(run_id, entries, exc)
        else:
            parts.holdoffs.succeeded(run_id)
        finally:
            self._scopes.pop(run_id, None)
            with anyio.CancelScope(shield=True):
                await self._let_go(holder, wakeup.leftover)
            was_full = len(self.active) >= parts.settings.concurrency
            self.active.discard(run_id)
            parts.client.notifier.changed(run_id)
            if was_full or not wakeup.ended or self._store.clock.jumps:
                # A place came free for a run left due, the wake-up wrote entries the
                # poller does not know of, or an idle agent jumps its clock to the next
                # timer: it looks now. (A run that ended with room to spare needs no poll.)
                parts.client.notifier.kick()

    async def _let_go(self, holder: LeaseHolder, leftover: list[str]) -> None:
        """
        Release the lease (unless lost) and delete the schedule entries the wake-up
        answered, at once: both are hints. Either left behind costs an agent a look at
        the run later (an entry) or a wait for the lease to expire, never a wrong step.
        """
        name, run_id = self._parts.settings.name, holder.lease.run_id

        async def release() -> None:
            try:
                await self._store.release(holder.lease)
            except Exception as exc:  # it expires; this agent retakes it
                log.info("agent %s: lease of run %s not released: %s", name, run_id, describe(exc))

        async def delete() -> None:
            try:
                await self._store.delete(leftover)
            except Exception as exc:  # they wake the run once more, to find nothing to do
                log.info("agent %s: entries of run %s not deleted: %s", name, run_id, describe(exc))

        async with anyio.create_task_group() as tg:
            if not holder.lost:
                tg.start_soon(release)
            if leftover:
                tg.start_soon(delete)

    async def _wake_under_lease(self, holder: LeaseHolder, wakeup: WakeUp) -> None:
        """The wake-up, with the lease renewed meanwhile."""
        parts, run_id = self._parts, holder.lease.run_id
        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            renew = functools.partial(
                keep_renewed, store=self._store, settings=parts.settings, trouble=parts.trouble
            )
            tg.start_soon(renew, holder, tg.cancel_scope)
            try:
                await wakeup.run()
            except Exception as exc:  # raised below, not wrapped in an ExceptionGroup
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise _unwrapped(error)
        if holder.lost:
            raise LeaseLost(run_id, "renewal failed: another agent took the run")

    async def drain(self) -> None:
        """Let runs in flight finish for up to ``shutdown_grace`` seconds, then cancel them."""
        with anyio.move_on_after(self._parts.settings.shutdown_grace):
            while self.active:
                await self._parts.client.notifier.wait_kick(0.05)
        for scope in list(self._scopes.values()):
            scope.cancel()

    async def _hold(self, run_id: str, entries: list[ScheduleEntry], error: Exception) -> None:
        """
        An error of this run's own (not the store's) ended its wake-up: hold the run off
        with a back-off that doubles up to ``park_retry``, durably (a schedule entry at
        the end of the back-off replaces the ones consumed) and in its summary (status
        ``parked``, with the reason), so one bad run costs its agents next to nothing.
        Called while this agent still holds the run's lease.
        """
        parts, name = self._parts, self._parts.settings.name
        tries, wait = parts.holdoffs.run_errors.failed(run_id)
        reason = f"{describe(error)} (failure {tries} in a row; next try in {wait:.0f}s)"
        if tries == 1:
            log.error("agent %s: error on run %s, holding it off", name, run_id, exc_info=error)
        else:
            log.error("agent %s: run %s held off: %s", name, run_id, reason)
        parts.holdoffs.hold(run_id, wait)
        now_ms = self._store.clock.now_ms
        with anyio.CancelScope(shield=True), anyio.move_on_after(parts.settings.lease_seconds):
            try:
                retry_at = now_ms() + round(wait * 1000)
                route = next((e.route for e in entries if e.route.mark), entries[0].route)
                # The entry before the summary that says the run is held (see reboot.py)
                await self._store.schedule(run_id, retry_at, "h", route)
                await mark_held(
                    self._store, run_id, reason, now_ms=now_ms(), retry_at_ms=retry_at, agent=name
                )
                await self._store.delete([entry.key for entry in entries])
            except Exception as exc:  # best effort: the in-memory hold-off still stands
                log.warning("agent %s: could not record the hold-off of run %s: %s",
                            name, run_id, describe(exc))  # fmt: skip


def _unwrapped(error: Exception) -> Exception:
    """
    The storage error an ExceptionGroup from a wake-up's nested task groups stands for,
    if it holds nothing else: an outage (any BackendUnavailable) before a lost lease.
    """
    if not isinstance(error, ExceptionGroup):
        return error
    storage, rest = error.split((BackendUnavailable, LeaseLost))
    if storage is None or rest is not None:
        return error
    for kind in (BackendUnavailable, LeaseLost):
        found, _ = storage.split(kind)
        leaf: Exception | None = found
        while isinstance(leaf, ExceptionGroup):
            leaf = leaf.exceptions[0]
        if leaf is not None:
            return leaf
    return error
