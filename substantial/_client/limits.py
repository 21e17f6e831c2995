"""Named step limits seen from outside: set, read, delete, list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from substantial._store import limits
from substantial._store.keys import check_name
from substantial._store.runs import RunStore
from substantial.protocol import substantial_pb2 as pb

__all__ = ["LimitInfo", "delete_limit", "get_limit", "list_limits", "set_limit"]


@dataclass(frozen=True)
class LimitInfo:
    """
    A named limit and its current use.

    :ivar concurrency: at most this many steps at once (None: no bound)
    :ivar rate: at most this many starts in any window of ``per`` (None: no bound)
    :ivar in_use: slots held now (a slot of a dead agent counts until taken over)
    :ivar started_in_window: starts in the last ``per``
    """

    name: str
    concurrency: int | None
    rate: int | None
    per: timedelta | None
    in_use: int
    started_in_window: int


async def set_limit(
    store: RunStore,
    name: str,
    concurrency: int | None,
    rate: int | None,
    per: timedelta | float | None,
) -> None:
    check_name(name, "limit")
    if concurrency is None and rate is None:
        raise ValueError(f"limit {name!r}: give concurrency, rate (and per), or both")
    if concurrency is not None and not 1 <= concurrency <= 10_000:
        raise ValueError(f"limit {name!r}: concurrency must be 1 to 10000, got {concurrency}")
    per_s = per.total_seconds() if isinstance(per, timedelta) else per
    if rate is not None and (not 1 <= rate <= 10_000 or per_s is None or per_s <= 0):
        raise ValueError(f"limit {name!r}: rate must be 1 to 10000, with a positive per")
    record = pb.Limit(name=name, concurrency=concurrency or 0, rate=rate or 0)
    if rate is not None and per_s is not None:
        record.per_ms = round(per_s * 1000)
    await store.backend.put(limits.limit_key(name), record.SerializeToString())


async def get_limit(store: RunStore, name: str) -> LimitInfo | None:
    record = await limits.read(store, check_name(name, "limit"))
    if record is None:
        return None
    return LimitInfo(
        name=name,
        concurrency=record.concurrency or None,
        rate=record.rate or None,
        per=timedelta(milliseconds=record.per_ms) if record.rate else None,
        in_use=await limits.used_slots(store, record) if record.concurrency else 0,
        started_in_window=await limits.tokens_used(store, record) if record.rate else 0,
    )


async def delete_limit(store: RunStore, name: str) -> bool:
    return await store.backend.delete(limits.limit_key(check_name(name, "limit")))


async def list_limits(store: RunStore) -> list[LimitInfo]:
    keys = await store.backend.list_all(limits.LIMITS_PREFIX)
    found = [await get_limit(store, key[len(limits.LIMITS_PREFIX) :]) for key in keys]
    return [info for info in found if info is not None]
