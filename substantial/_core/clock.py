"""Where agents and handles read the time: the wall clock, or a virtual one in tests."""

from __future__ import annotations

import time

__all__ = ["Clock", "VirtualClock", "now_ms"]


def now_ms() -> int:
    """Wall-clock time in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class Clock:
    """Where agents and handles read the time: the wall clock, unless a test says so."""

    def now_ms(self) -> int:
        return now_ms()

    @property
    def jumps(self) -> bool:
        """Whether :meth:`skip_to` jumps (the agent then wants to know its next timer)."""
        return False

    def skip_to(self, when_ms: int) -> bool:
        """
        Called by an idle agent whose next timer is due at ``when_ms``. A clock that can
        jump there does, and returns True (the agent polls again at once); the wall
        clock cannot, and the agent waits.
        """
        return False


class VirtualClock(Clock):
    """
    A clock for tests that runs at the wall clock's pace from ``start_ms`` and jumps
    ahead when told: an agent on it, finding nothing to do, jumps it to the next due
    timer instead of waiting (see ``substantial.testing``). It never stands still, so
    what lapses with time in production lapses here too: a lease an agent could not
    release expires after its length, as it would on the wall clock.
    """

    def __init__(self, start_ms: int | None = None, *, auto_advance: bool = True) -> None:
        self._start = now_ms() if start_ms is None else start_ms
        self._origin = time.monotonic_ns()
        self._skipped = 0
        #: Whether an idle agent may jump this clock to its next timer.
        self.auto_advance = auto_advance

    def now_ms(self) -> int:
        return self._start + (time.monotonic_ns() - self._origin) // 1_000_000 + self._skipped

    def advance_to(self, when_ms: int) -> None:
        """Jump ahead to ``when_ms`` (a time already passed changes nothing)."""
        self._skipped += max(0, when_ms - self.now_ms())

    @property
    def jumps(self) -> bool:
        return self.auto_advance

    def skip_to(self, when_ms: int) -> bool:
        if not self.auto_advance:
            return False
        self.advance_to(when_ms)
        return True
