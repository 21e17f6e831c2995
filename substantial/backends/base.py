"""
The storage contract: the handful of atomic operations every backend implements.

Everything above this module (runs, leases, the schedule, the agent) is written once
against :class:`Backend`. Keys are ``/``-separated strings of printable ASCII; values are
arbitrary bytes. A *version* is an opaque string that changes whenever a key's content
changes, and is what ``replace`` and ``delete`` compare against.

A write with ``durable=False`` is a hint the log can restore (a run's summary, a lease, a
consumed schedule entry's deletion): a backend may skip flushing it to disk, so a power
loss right after it may undo it. It is as atomic as any write, and every process sees it
at once. Only the files backend makes use of it (no ``fsync``). Where a backend has a
:attr:`Backend.reboots` record that says so, a run's start entry and final summary are
such hints too: the first agent after a crash of the machine wakes every unfinished run.
"""

from __future__ import annotations

import abc
import builtins
from collections import Counter
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

import anyio

__all__ = ["Backend", "Entry", "RebootRecord", "RecoveryBusy"]

#: What ``get`` returns for a present key: its bytes and its current version.
Entry = tuple[bytes, str]


class RecoveryBusy(Exception):
    """Another process, or another task of this one, is recovering from the reboot."""


class RebootRecord(Protocol):
    """
    A store's record of recovery after a crash of the machine (a reboot), where a crash
    is what can undo a write that was not flushed (``substantial.backends._boot``).
    """

    async def covered(self) -> bool:
        """Whether the next agent after a crash wakes every run unfinished at the crash."""

    async def pending(self) -> str | None:
        """
        The current boot, if the runs unfinished at its start have not been woken yet;
        the caller is then the one to wake them, until :meth:`mark` or :meth:`release`.

        :raises RecoveryBusy: while another process, or task, wakes them
        """

    async def mark(self, boot: str) -> None:
        """Record (durably) that the runs unfinished at ``boot``'s start have been woken."""

    def release(self) -> None:
        """Let another wake them: for the caller :meth:`pending` gave a boot to."""


class Backend(abc.ABC):
    """
    A key-value store with the atomic operations substantial needs.

    Implementations must make ``create`` and ``replace`` atomic with respect to every
    other client of the same storage, including other processes and machines: this is
    the whole of the coordination substantial relies on.

    ``requests`` counts storage round trips by operation name, for cost reports.
    """

    #: A short name for messages and metrics ("memory", "files", "redis", "s3").
    name: str = "backend"
    #: Where a crash of the machine can undo unflushed writes and is recovered from: the
    #: record of that recovery (the files backend on a local file system, on Linux).
    reboots: RebootRecord | None = None

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()

    @abc.abstractmethod
    async def get(self, key: str) -> Entry | None:
        """
        Read a key.

        :return: ``(data, version)``, or ``None`` if the key does not exist
        :raises BackendUnavailable: if the storage cannot be reached
        """

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """
        Write a key unconditionally.

        :return: the new version
        :raises BackendUnavailable: if the storage cannot be reached
        """

    @abc.abstractmethod
    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        """
        Write a key only if it does not exist. Of many concurrent creates of one key,
        exactly one succeeds.

        :return: the new version, or ``None`` if the key already existed
        :raises BackendUnavailable: if the storage cannot be reached
        """

    @abc.abstractmethod
    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        """
        Overwrite a key only if its version is still ``version``.

        :return: the new version, or ``None`` if the key changed or no longer exists
        :raises BackendUnavailable: if the storage cannot be reached
        """

    @abc.abstractmethod
    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        """
        Delete a key; with ``version``, only if it is unchanged since that version.

        :return: whether this call deleted the key
        :raises BackendUnavailable: if the storage cannot be reached
        """

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        """
        List keys that start with ``prefix`` in lexicographic (byte) order.

        :param after: only keys strictly greater than this full key
        :param limit: at most this many keys
        :return: full keys, ascending
        :raises BackendUnavailable: if the storage cannot be reached
        """

    async def list_before(
        self, prefix: str, before: str | None, *, after: str | None = None, limit: int = 1000
    ) -> builtins.list[str]:
        """
        :meth:`list`, for an index whose keys sort by time, when the keys from ``before``
        on are not wanted: every key before ``before`` is listed as by :meth:`list`, the
        later ones may be left out (``None``: none are). Here, one :meth:`list` call: a
        store that lists one page of a big index cheaply returns that page. The files
        backend, which reads whole folders, stops at the first folder that lies wholly
        from ``before`` on, and removes the empty folders it passes wholly before it.
        """
        return await self.list(prefix, after=after, limit=limit)

    async def get_many(self, keys: Sequence[str]) -> builtins.list[Entry | None]:
        """
        Read several keys concurrently; the result is in the order of ``keys``.

        Backends with a batch read (Redis ``MGET``) override this.
        """
        results: builtins.list[Entry | None] = [None] * len(keys)

        async def fetch(index: int, key: str) -> None:
            results[index] = await self.get(key)

        async with anyio.create_task_group() as tg:
            for index, key in enumerate(keys):
                tg.start_soon(fetch, index, key)
        return results

    async def list_all(self, prefix: str, *, after: str | None = None) -> builtins.list[str]:
        """Every key under ``prefix`` (after ``after``), paging through ``list``."""
        keys: builtins.list[str] = []
        page = 1000
        while True:
            batch = await self.list(prefix, after=after, limit=page)
            keys.extend(batch)
            if len(batch) < page:
                return keys
            after = batch[-1]

    async def prune(self, prefix: str) -> None:  # noqa: B027 - a no-op where keys are flat
        """
        Tidy up after every key under ``prefix`` was deleted: a store with folders
        removes the ones left empty. Never deletes a key. Called by ``gc``.
        """

    async def aclose(self) -> None:  # noqa: B027 - deliberately a no-op by default
        """Release connections and other resources. Safe to call twice."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
