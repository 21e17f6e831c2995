"""
Concurrency slots: at most ``limit`` runs of a group (a workflow, or a workflow and a
concurrency key) hold a slot at once, on the storage contract alone.

::

    flow/slots/{group}/{i:04d}                   the run holding slot i (create / replace)
    flow/waiting/{group}/{created:015d}-{run}    a run waiting for a slot, in start order

A slot is held for one wake-up of its run and deleted at its end. One whose run has no
live lease (the agent died) is free: whoever finds it so takes it over with a
replace-if-unchanged. Waiting runs go in the order they were started.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from substantial._core.runids import is_stored_run_id
from substantial._store import leases
from substantial._store.runs import RunStore

__all__ = ["Slot", "group_of", "head", "join_line", "leave_line", "release", "slot_prefix", "take"]

_SAFE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Slot:
    key: str
    version: str


def group_of(mark: str, key: str | None = None) -> str:
    """The group of a workflow (by its mark), or of one of its concurrency keys."""
    if key is None:
        return f"{mark}/all"
    safe = key if _SAFE.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{mark}/key/{safe}"


def slot_prefix(group: str) -> str:
    return f"flow/slots/{group}/"


def _line_prefix(group: str) -> str:
    return f"flow/waiting/{group}/"


def line_key(group: str, created_ms: int, run_id: str) -> str:
    return f"{_line_prefix(group)}{created_ms:015d}-{run_id}"


async def take(store: RunStore, group: str, limit: int, run_id: str) -> Slot | None:
    """
    A free slot of ``group`` for ``run_id`` (or one it held already), or None if all
    are held. ``run_id`` may be ``{run}/{more}`` (a step of a run): the slot is then
    freed when that run's lease lapses.
    """
    backend = store.backend
    held = await backend.list(slot_prefix(group), limit=limit + 1)
    taken = {key.rpartition("/")[2] for key in held}
    for index in range(limit):
        key = f"{slot_prefix(group)}{index:04d}"
        if key.rpartition("/")[2] not in taken:
            version = await backend.create(key, run_id.encode())
            if version is not None:
                return Slot(key, version)
    for key in held[:limit]:
        entry = await backend.get(key)
        if entry is None:
            continue
        holder = entry[0].decode(errors="replace")
        if holder != run_id and await _alive(store, holder.partition("/")[0]):
            continue
        version = await backend.replace(key, run_id.encode(), entry[1])
        if version is not None:
            return Slot(key, version)
    return None


async def _alive(store: RunStore, holder: str) -> bool:
    """Whether the run holding a slot has a live lease (an agent works on it now)."""
    if not is_stored_run_id(holder):
        return False  # garbage: the slot is free
    lease = await leases.lease_holder(store.backend, holder)
    return lease is not None and lease.expires_ms > store.clock.now_ms()


async def release(store: RunStore, slot: Slot) -> None:
    """Give a slot up, unless another run took it over since."""
    await store.backend.delete(slot.key, slot.version)


async def head(store: RunStore, group: str) -> str | None:
    """The waiting-line key first in ``group``'s line, if any."""
    first = await store.backend.list(_line_prefix(group), limit=1)
    return first[0] if first else None


def run_of(line: str) -> str:
    """The run a waiting-line key names."""
    return line.rpartition("/")[2].partition("-")[2]


async def join_line(store: RunStore, key: str) -> None:
    await store.backend.create(key, b"")


async def leave_line(store: RunStore, key: str) -> None:
    await store.backend.delete(key)
