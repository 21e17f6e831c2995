"""
Leases: which agent works on a run, until when. A lease is a hint that keeps agents out
of each other's way; the log's create-if-absent segments keep the log safe without it.
So leases are written with ``durable=False``: one undone by a power loss (every agent of
that machine died with it) only lets another agent in sooner, or holds one off until it
expires.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from substantial._core.clock import Clock
from substantial._core.constants import LEASE_MAX_AHEAD
from substantial._store.keys import lease_key
from substantial._store.records import parse_record
from substantial.backends.base import Backend
from substantial.protocol import substantial_pb2 as pb

__all__ = ["Lease", "acquire", "lease_holder", "release", "renew"]

log = logging.getLogger("substantial.agent")


@dataclass(frozen=True)
class Lease:
    """A lease this agent holds on a run."""

    run_id: str
    owner: str
    version: str
    expires_ms: int


async def acquire(
    backend: Backend, clock: Clock, run_id: str, owner: str, ttl_ms: int
) -> Lease | None:
    """
    Take the run's lease if it is free, expired, or held by ``owner`` itself: an agent
    claims only runs it does not work on, so a lease of its own is one it could not
    release (a store blip), and waiting for it to expire would only delay the run.

    :return: the lease, or None if another agent holds it
    """
    key = lease_key(run_id)
    now = clock.now_ms()
    expires = now + ttl_ms
    data = _lease_bytes(owner, expires)
    version = await backend.create(key, data, durable=False)
    if version is None:
        current = await backend.get(key)
        if current is None:
            version = await backend.create(key, data, durable=False)
        else:
            if _lease_holds(current[0], run_id, owner, now, ttl_ms):
                return None
            version = await backend.replace(key, data, current[1], durable=False)
    return None if version is None else Lease(run_id, owner, version, expires)


async def renew(backend: Backend, clock: Clock, lease: Lease, ttl_ms: int) -> Lease | None:
    """:return: the renewed lease, or None if it was lost"""
    expires = clock.now_ms() + ttl_ms
    data = _lease_bytes(lease.owner, expires)
    version = await backend.replace(lease_key(lease.run_id), data, lease.version, durable=False)
    return None if version is None else Lease(lease.run_id, lease.owner, version, expires)


async def release(backend: Backend, lease: Lease) -> None:
    """
    Give the lease up, unless it changed hands since. A renewal cut short by the end of
    the wake-up may have been applied without its new version reaching the holder: a
    lease still in the holder's name is the holder's to give up, whatever its version.
    """
    key = lease_key(lease.run_id)
    if await backend.delete(key, lease.version, durable=False):
        return
    current = await backend.get(key)
    if current is None:
        return
    try:
        held = pb.Lease.FromString(current[0])
    except DecodeError:
        return
    if held.owner == lease.owner:
        await backend.delete(key, current[1], durable=False)


async def lease_holder(backend: Backend, run_id: str) -> pb.Lease | None:
    """
    The run's stored lease, expired or not.

    :raises CorruptLog: if the lease record does not parse
    """
    entry = await backend.get(lease_key(run_id))
    if entry is None:
        return None
    return parse_record(pb.Lease, entry[0], run_id, lease_key(run_id))


def _lease_holds(data: bytes, run_id: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
    """
    Whether a stored lease still keeps agent ``owner`` off its run. A lease is a hint: one
    that does not parse, or that claims the run further ahead than any live agent could
    (``LEASE_MAX_AHEAD`` lease lengths past this clock), protects nothing and is taken
    over, with a warning. The log stays safe either way: every write to it is
    create-if-absent of the next segment.
    """
    try:
        held = pb.Lease.FromString(data)
    except DecodeError as exc:
        log.warning("run %s: unreadable lease record taken over (%s)", run_id, exc)
        return False
    if held.expires_ms <= now_ms or held.owner == owner:
        return False
    ahead = held.expires_ms - now_ms
    if ahead > LEASE_MAX_AHEAD * ttl_ms:
        log.warning(
            "run %s: the lease of %r expires %.0fs ahead of this clock, more than %d lease "
            "lengths: treated as expired (is that agent's clock ahead?)",
            run_id, held.owner, ahead / 1000, LEASE_MAX_AHEAD,
        )  # fmt: skip
        return False
    return True


def _lease_bytes(owner: str, expires_ms: int) -> bytes:
    lease = pb.Lease(owner=owner, expires_ms=expires_ms, token=uuid.uuid4().hex)
    return lease.SerializeToString()
