"""An agent's door to named step limits: records cached briefly, tickets taken and given back."""

from __future__ import annotations

import logging

import anyio

from substantial._store import limits
from substantial._store.runs import RunStore
from substantial.protocol import substantial_pb2 as pb

__all__ = ["CACHE_SECONDS", "Limiter"]

log = logging.getLogger("substantial.agent")

#: How long an agent trusts a limit's record it read: a change made with
#: ``set_limit`` reaches every agent within this long.
CACHE_SECONDS = 1.0


class Limiter:
    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._records: dict[str, tuple[pb.Limit | None, float]] = {}
        self._warned: set[str] = set()

    async def _limit(self, name: str) -> pb.Limit | None:
        now = anyio.current_time()
        cached = self._records.get(name)
        if cached is not None and now - cached[1] < CACHE_SECONDS:
            return cached[0]
        record = await limits.read(self._store, name)
        self._records[name] = (record, now)
        if record is None and name not in self._warned:
            self._warned.add(name)
            log.warning("no limit named %r is set: its steps run unlimited", name)
        return record

    async def enter(self, name: str, holder: str) -> limits.Ticket | int:
        """A ticket for the step ``holder`` (``{run}/{position}``), or when to look again."""
        record = await self._limit(name)
        if record is None:
            return limits.Ticket(None)
        return await limits.enter(self._store, record, holder)

    async def leave(self, ticket: limits.Ticket) -> None:
        await limits.leave(self._store, ticket)

    def forget(self, name: str) -> None:
        """A limit changed in this process: read it again next time."""
        self._records.pop(name, None)
