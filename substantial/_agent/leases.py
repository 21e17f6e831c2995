"""Keeping a claimed run's lease renewed while a wake-up works on it."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from substantial._agent.health import StoreTrouble
from substantial._agent.settings import AgentSettings
from substantial._core import constants
from substantial._store.runs import Lease, RunStore
from substantial.errors import BackendRefused, BackendUnavailable

__all__ = ["LeaseHolder", "keep_renewed"]


@dataclass
class LeaseHolder:
    """The lease of one run this agent works on, as last renewed."""

    lease: Lease
    #: set when renewing failed: another agent may hold the run now
    lost: bool = False


async def keep_renewed(
    holder: LeaseHolder,
    scope: anyio.CancelScope,
    *,
    store: RunStore,
    settings: AgentSettings,
    trouble: StoreTrouble,
) -> None:
    """
    Renew ``holder``'s lease every fraction of its length until cancelled. An outage is
    ridden out while the lease has not expired; a lease that is gone marks the holder
    lost and cancels ``scope``, the wake-up's.
    """
    ttl_ms = round(settings.lease_seconds * 1000)
    while True:
        await anyio.sleep(settings.lease_seconds * constants.LEASE_RENEW_FRACTION)
        try:
            renewed = await store.renew(holder.lease, ttl_ms)
        except (BackendUnavailable, BackendRefused) as exc:
            trouble.failed(exc)
            if store.clock.now_ms() >= holder.lease.expires_ms:
                renewed = None
            else:
                continue
        if renewed is None:
            holder.lost = True
            scope.cancel()
            return
        holder.lease = renewed
