"""
Inbox entries set aside. An entry the agent cannot merge (it does not parse as an
``InboxEntry``, has no id, or holds a value the agent's codec cannot decode) is moved to
``runs/{run}/quarantine/{its inbox key's last part}`` with its raw bytes and the reason,
then deleted from the inbox: the run goes on with the rest of its inbox, and its log never
holds an event it cannot replay. ``substantial show RUN`` lists the entries and
``substantial quarantine RUN --drop KEY`` (or ``--all``) deletes them.

A quarantine record is JSON: ``{"inbox_key", "reason", "at_ms", "data"}``, ``data`` in
base64.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from substantial.backends.base import Backend
from substantial.runs import RunStore, quarantine_key, quarantine_prefix

__all__ = ["QuarantinedEntry", "drop", "full_key", "list_quarantined", "set_aside"]

log = logging.getLogger("substantial.agent")


@dataclass(frozen=True)
class QuarantinedEntry:
    """
    One inbox entry set aside.

    :ivar key: where it is kept (``runs/{run}/quarantine/...``); the name to drop it by
    :ivar inbox_key: where it was sent
    :ivar reason: why the agent could not merge it
    :ivar at: when it was set aside
    :ivar data: its raw bytes
    """

    key: str
    inbox_key: str
    reason: str
    at: datetime | None
    data: bytes


async def set_aside(store: RunStore, run_id: str, inbox_key: str, data: bytes, reason: str) -> None:
    """Move one inbox entry to the run's quarantine (write first, then delete: repeatable)."""
    record = {
        "inbox_key": inbox_key,
        "reason": reason,
        "at_ms": store.clock.now_ms(),
        "data": base64.b64encode(data).decode("ascii"),
    }
    key = quarantine_key(run_id, inbox_key)
    await store.backend.put(key, json.dumps(record).encode())
    await store.backend.delete(inbox_key)
    log.warning("run %s: inbox entry %s set aside as %s: %s", run_id, inbox_key, key, reason)


async def list_quarantined(backend: Backend, run_id: str) -> list[QuarantinedEntry]:
    """The run's entries set aside, oldest sent first. A record that is itself unreadable
    is listed with the reason saying so."""
    keys = await backend.list_all(quarantine_prefix(run_id))
    found = []
    for key, entry in zip(keys, await backend.get_many(keys), strict=True):
        if entry is not None:
            found.append(_entry(key, entry[0]))
    return found


async def drop(backend: Backend, run_id: str, keys: Sequence[str] | None = None) -> list[str]:
    """
    Delete entries from the run's quarantine.

    :param keys: the entries' keys, or their last part; ``None`` drops them all
    :return: the keys deleted (a key given that is not in the quarantine is not among them)
    """
    present = await backend.list_all(quarantine_prefix(run_id))
    wanted = present
    if keys is not None:
        named = {full_key(run_id, key) for key in keys}
        wanted = [key for key in present if key in named]
    for key in wanted:
        await backend.delete(key)
    return wanted


def full_key(run_id: str, key: str) -> str:
    """A quarantine key given in full or by its last part, in full."""
    prefix = quarantine_prefix(run_id)
    return key if key.startswith(prefix) else prefix + key


def _entry(key: str, raw: bytes) -> QuarantinedEntry:
    try:
        record = json.loads(raw)
        data = base64.b64decode(record["data"], validate=True)
        at_ms = int(record["at_ms"])
        return QuarantinedEntry(
            key, str(record["inbox_key"]), str(record["reason"]),
            datetime.fromtimestamp(at_ms / 1000, UTC), data,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return QuarantinedEntry(key, "", f"unreadable quarantine record ({exc!r})", None, raw)
