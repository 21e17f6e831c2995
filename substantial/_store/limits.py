"""
Named limits for steps, on the storage contract alone.

::

    flow/limits/{name}              Limit: concurrency, rate per ``per_ms``
    flow/slots/limit/{name}/{i}     the step holding concurrency slot i ({run}/{position})
    flow/tokens/{name}/{i:04d}      when rate token i was last used (epoch ms, ASCII)

Concurrency uses the slots of :mod:`substantial._store.slots`, freed with the run's lease.
Rate: there are ``rate`` tokens; a token is free once ``per_ms`` has passed since its
last use, and is taken with a replace-if-unchanged. Uses of one token are at least
``per_ms`` apart, so no window of ``per_ms`` holds more than ``rate`` starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from substantial._store import slots
from substantial._store.records import parse_record
from substantial._store.runs import RunStore
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "LIMITS_PREFIX",
    "Ticket",
    "enter",
    "leave",
    "limit_key",
    "read",
    "tokens_used",
    "used_slots",
]

LIMITS_PREFIX = "flow/limits/"


def limit_key(name: str) -> str:
    return f"{LIMITS_PREFIX}{name}"


def _group(name: str) -> str:
    return f"limit/{name}"


def _token_prefix(name: str) -> str:
    return f"flow/tokens/{name}/"


@dataclass(frozen=True)
class Ticket:
    """What a step took of a limit: its slot, to give back when it ends (None: no slot)."""

    slot: slots.Slot | None


async def read(store: RunStore, name: str) -> pb.Limit | None:
    """
    The limit's record, or None if there is none.

    :raises CorruptLog: if it does not parse
    """
    entry = await store.backend.get(limit_key(name))
    if entry is None:
        return None
    return parse_record(pb.Limit, entry[0], name, limit_key(name))


async def enter(store: RunStore, limit: pb.Limit, holder: str) -> Ticket | int:
    """
    Take a slot and a token of ``limit`` for the step ``holder`` (``{run}/{position}``).

    :return: the ticket, or the time to look again (epoch ms) if none is free now
    """
    slot = None
    now = store.clock.now_ms()
    if limit.concurrency:
        slot = await slots.take(store, _group(limit.name), limit.concurrency, holder)
        if slot is None:
            return now + _SLOT_RETRY_MS
    if limit.rate:
        free_at = await _take_token(store, limit, now)
        if free_at is not None:
            if slot is not None:
                await slots.release(store, slot)
            return free_at
    return Ticket(slot)


#: How soon a step that found every slot of its limit held looks again.
_SLOT_RETRY_MS = 500


async def _take_token(store: RunStore, limit: pb.Limit, now: int) -> int | None:
    """Take a rate token; None if taken, else when the first one frees."""
    backend, prefix = store.backend, _token_prefix(limit.name)
    used = await backend.list(prefix, limit=limit.rate + 1)
    existing = {key.rpartition("/")[2] for key in used}
    for index in range(limit.rate):
        key = f"{prefix}{index:04d}"
        if key.rpartition("/")[2] not in existing and await backend.create(key, str(now).encode()):
            return None
    keys = [f"{prefix}{index:04d}" for index in range(limit.rate)]
    soonest: int | None = None
    for key, entry in zip(keys, await backend.get_many(keys), strict=True):
        if entry is None:
            if await backend.create(key, str(now).encode()) is not None:
                return None
            continue
        try:
            last = int(entry[0])
        except ValueError:
            last = 0  # garbage: a free token
        if last + limit.per_ms <= now:
            if await backend.replace(key, str(now).encode(), entry[1]) is not None:
                return None
            continue
        soonest = last + limit.per_ms if soonest is None else min(soonest, last + limit.per_ms)
    return soonest if soonest is not None else now + _SLOT_RETRY_MS


async def leave(store: RunStore, ticket: Ticket) -> None:
    """Give back a ticket's slot."""
    if ticket.slot is not None:
        await slots.release(store, ticket.slot)


async def used_slots(store: RunStore, limit: pb.Limit) -> int:
    """How many of the limit's slots are held now (by live runs or not)."""
    held = await store.backend.list(slots.slot_prefix(_group(limit.name)), limit=10_000)
    return len(held)


async def tokens_used(store: RunStore, limit: pb.Limit) -> int:
    """How many starts the limit saw in the last ``per`` (at most ``rate``)."""
    keys = await store.backend.list(_token_prefix(limit.name), limit=limit.rate + 1)
    now = store.clock.now_ms()
    count = 0
    for entry in await store.backend.get_many(keys):
        if entry is not None and entry[0].isdigit() and int(entry[0]) + limit.per_ms > now:
            count += 1
    return count
