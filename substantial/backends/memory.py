"""An in-process backend: for tests, examples and single-process use. Nothing is durable."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence

import anyio.lowlevel

from substantial.backends.base import Backend, Entry

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """
    Keys in a dict of this process, lost when it exits.

    Versions come from one monotonic counter, so every write gets a version never seen
    before. Keys are also kept in a sorted list, so ``list`` costs ``O(log n + limit)``.
    Every operation yields to the event loop once, like a real round trip would, so tests
    on this backend interleave concurrent tasks the way they would on real storage.
    """

    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._data: dict[str, Entry] = {}
        self._keys: list[str] = []
        self._versions = itertools.count(1)

    def _store(self, key: str, data: bytes) -> str:
        version = str(next(self._versions))
        if key not in self._data:
            bisect.insort(self._keys, key)
        self._data[key] = (bytes(data), version)
        return version

    def _remove(self, key: str) -> None:
        del self._data[key]
        del self._keys[bisect.bisect_left(self._keys, key)]

    async def get(self, key: str) -> Entry | None:
        """Read a key; see :meth:`Backend.get`."""
        self.requests["get"] += 1
        await anyio.lowlevel.checkpoint()
        return self._data.get(key)

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Read several keys with one yield, not a task per key; see :meth:`Backend.get_many`."""
        self.requests["get"] += len(keys)
        await anyio.lowlevel.checkpoint()
        return [self._data.get(key) for key in keys]

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        """Write a key unconditionally; see :meth:`Backend.put`."""
        self.requests["put"] += 1
        await anyio.lowlevel.checkpoint()
        return self._store(key, data)

    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        """Write a key only if it is absent; see :meth:`Backend.create`."""
        self.requests["create"] += 1
        await anyio.lowlevel.checkpoint()
        if key in self._data:
            return None
        return self._store(key, data)

    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        """Overwrite a key only if its version is ``version``; see :meth:`Backend.replace`."""
        self.requests["replace"] += 1
        await anyio.lowlevel.checkpoint()
        current = self._data.get(key)
        if current is None or current[1] != version:
            return None
        return self._store(key, data)

    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        """Delete a key, optionally only at ``version``; see :meth:`Backend.delete`."""
        self.requests["delete"] += 1
        await anyio.lowlevel.checkpoint()
        current = self._data.get(key)
        if current is None or (version is not None and current[1] != version):
            return False
        self._remove(key)
        return True

    async def list(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[str]:
        """List keys under ``prefix`` in order; see :meth:`Backend.list`."""
        self.requests["list"] += 1
        await anyio.lowlevel.checkpoint()
        start = bisect.bisect_left(self._keys, prefix)
        if after is not None:
            start = max(start, bisect.bisect_right(self._keys, after))
        stop = min(len(self._keys), start + max(limit, 0))
        end = start
        while end < stop and self._keys[end].startswith(prefix):
            end += 1
        return self._keys[start:end]
