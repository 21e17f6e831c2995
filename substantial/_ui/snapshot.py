"""
Every run's summary, read in the background and reused for a while, so that a page is
drawn from memory. Reading 10,000 summaries on files takes about a second; a page may not
wait for that, and a view refreshed every few seconds should not re-read all of them
each time. Only summaries are read (``runs/{run}/meta``, via :func:`substantial.ops.list_runs`),
never logs, except for a run whose summary is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskGroup

from substantial import ops
from substantial.backends.base import Backend

__all__ = ["Snapshot", "SnapshotCache"]

log = logging.getLogger("substantial.ui")

#: A snapshot is re-read when older than this, or than ``AGE_PER_READ`` times the time
#: its last read took, whichever is longer: a big store is not read over and over.
MIN_AGE = 2.0
AGE_PER_READ = 5.0
#: how long the server waits for its first snapshot before it starts listening anyway
STARTUP_WAIT = 30.0


@dataclass(frozen=True)
class Snapshot:
    """
    :ivar runs: every run's summary, newest first
    :ivar taken: when the read began
    :ivar seconds: how long it took
    """

    runs: list[ops.RunSummary] = field(default_factory=list)
    taken: datetime = field(default_factory=lambda: datetime.fromtimestamp(0, UTC))
    seconds: float = 0.0


class SnapshotCache:
    """One snapshot of a backend's summaries, re-read by one task at a time."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        #: what went wrong with the last background read, shown on the page
        self.trouble = ""
        self._current: Snapshot | None = None
        self._read_at = 0.0
        self._reading: anyio.Event | None = None
        self._tasks: TaskGroup | None = None

    async def start(self, tasks: TaskGroup, wait: float = STARTUP_WAIT) -> None:
        """
        Read stale snapshots in the background on ``tasks`` (the server's task group),
        and read the first one now, waiting ``wait`` seconds at most: the server starts
        listening with its first page ready, or begins reading it for that page.
        """
        self._tasks = tasks
        self._reading = anyio.Event()
        reading = self._reading
        tasks.start_soon(self._read_in_background)
        with anyio.move_on_after(wait):
            await reading.wait()

    def stop(self) -> None:
        self._tasks = None

    def invalidate(self) -> None:
        """The next page re-reads (after an action changed runs)."""
        self._read_at = 0.0

    async def get(self) -> Snapshot:
        """
        The current snapshot. A stale one is returned at once while a fresh one is read
        in the background; only the first call (no snapshot yet) waits for a read.

        :raises BackendUnavailable: if there is no snapshot yet and the store cannot be read
        """
        current = self._current
        if current is None and self._reading is not None:
            await self._reading.wait()  # the first read, begun at start
            current = self._current
        if current is None or self._tasks is None:
            return (
                current if current is not None and not self._stale(current) else await self.fresh()
            )
        if self._stale(current) and self._reading is None:
            self._reading = anyio.Event()
            self._tasks.start_soon(self._read_in_background)
        return current

    async def fresh(self) -> Snapshot:
        """A snapshot read now (after any read in progress)."""
        while self._reading is not None:
            await self._reading.wait()
        self._reading = anyio.Event()
        await self._read()
        assert self._current is not None
        return self._current

    def _stale(self, current: Snapshot) -> bool:
        limit = max(MIN_AGE, AGE_PER_READ * current.seconds)
        return time.monotonic() - self._read_at >= limit

    async def _read_in_background(self) -> None:
        try:
            await self._read()
        except Exception as exc:  # keep the old snapshot; the page says why it is old
            self.trouble = f"{type(exc).__name__}: {exc}"
            log.warning("reading run summaries failed: %s", self.trouble)

    async def _read(self) -> None:
        started = time.monotonic()
        taken = datetime.now(UTC)
        reading = self._reading
        try:
            runs = await ops.list_runs(self.backend)
            runs.reverse()  # newest first
            self._current = Snapshot(runs, taken, time.monotonic() - started)
            self._read_at = started
            self.trouble = ""
        finally:
            self._reading = None
            if reading is not None:
                reading.set()
