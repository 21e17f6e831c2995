"""
How an agent keeps going when its storage, or one run, misbehaves.

Two kinds of trouble, kept apart because they call for different answers:

* **Store-wide** (:class:`StoreTrouble`): the storage is unreachable
  (:class:`~substantial.errors.BackendUnavailable`), refuses writes
  (:class:`~substantial.errors.BackendRefused`: full, out of memory, read-only, a
  permission), or listing the schedule fails for a reason nobody foresaw. The agent logs
  one line when such trouble starts or changes and one when it ends, backs off, and
  keeps polling. It never exits for it.
* **One run's** (:class:`RunTroubles`): anything raised while claiming or working on one
  run that is not store-wide. That run is held off with an exponential back-off and
  the reason goes into its summary (status ``parked``); other runs go on.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from substantial._core.status import FINAL_PB
from substantial._store.runs import RunStore
from substantial.errors import BackendRefused, BackendUnavailable, CorruptLog
from substantial.protocol import substantial_pb2 as pb

__all__ = ["RunTroubles", "StoreTrouble", "backoff", "describe", "mark_held"]


def backoff(first: float, attempt: int, ceiling: float) -> float:
    """Seconds before retry ``attempt`` (1, 2, ...): doubling from ``first``, jittered."""
    top = min(ceiling, first * 2.0 ** min(attempt - 1, 30))
    return top * random.uniform(0.5, 1.0)


def describe(error: BaseException) -> str:
    """``Type: message`` of an error, on one line."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _kind(error: BaseException) -> tuple[str, ...]:
    """What makes two store-wide errors "the same trouble" (not the paths or keys in them)."""
    if isinstance(error, BackendUnavailable):
        return ("unavailable",)  # an outage is one trouble, whichever way each call fails
    cause = error.__cause__
    return (
        type(error).__name__,
        type(cause).__name__ if cause is not None else "",
        str(getattr(cause, "errno", "") or ""),
    )


@dataclass
class StoreTrouble:
    """
    The agent's view of its storage as a whole: healthy, or in trouble since some error.
    Logs a line when trouble starts or changes kind and when it ends, never one per retry.
    """

    agent: str
    log: logging.Logger
    #: the error the trouble is about, while there is trouble
    error: BaseException | None = None
    _kind: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.error is not None

    def failed(self, error: BaseException) -> None:
        """Note a store-wide error; log it if it starts or changes the trouble."""
        kind = _kind(error)
        self.error = error
        if kind == self._kind:
            return
        self._kind = kind
        if isinstance(error, BackendUnavailable):
            self.log.warning(
                "agent %s: backend unavailable, retrying with backoff: %s", self.agent, error
            )
        elif isinstance(error, BackendRefused):
            self.log.error(
                "agent %s: backend refuses writes, retrying with backoff until it is fixed "
                "(`substantial check` reports it): %s",
                self.agent,
                error,
            )
        else:
            self.log.error(
                "agent %s: unexpected error reading the schedule, retrying with backoff",
                self.agent,
                exc_info=error,
            )

    def recovered(self) -> None:
        """Note that a store-wide operation succeeded; log it if there was trouble."""
        if self.error is not None:
            self.error = None
            self._kind = None
            self.log.warning("agent %s: backend reachable again", self.agent)


@dataclass
class RunTroubles:
    """Consecutive failed wake-ups per run, and how long to hold each run off."""

    #: first hold-off, in seconds; it doubles with each failure in a row
    first: float
    #: longest hold-off, in seconds
    ceiling: float
    _failures: dict[str, int] = field(default_factory=dict)

    def failed(self, run_id: str) -> tuple[int, float]:
        """Count a failure of ``run_id``: how many in a row now, and seconds to hold it off."""
        tries = self._failures[run_id] = self._failures.get(run_id, 0) + 1
        return tries, backoff(self.first, tries, self.ceiling)

    def succeeded(self, run_id: str) -> None:
        self._failures.pop(run_id, None)

    def failures(self, run_id: str) -> int:
        return self._failures.get(run_id, 0)


async def mark_held(
    store: RunStore, run_id: str, reason: str, *, now_ms: int, retry_at_ms: int, agent: str
) -> None:
    """
    Show in a run's summary that agents hold it off, why, and until when: status
    ``parked`` with ``reason``, retried at ``retry_at_ms``, as ``agent`` saw it. A summary
    that says the run ended is left alone (that came from its log).
    """
    try:
        meta, version = await store.read_meta_version(run_id)
    except CorruptLog:
        meta, version = None, None
    if meta is not None and meta.status in FINAL_PB:
        return
    updated = pb.RunMeta(run_id=run_id, created_ms=now_ms)
    if meta is not None:
        updated.CopyFrom(meta)
    updated.status = pb.RUN_STATUS_PARKED
    updated.parked_reason = reason
    updated.updated_ms = now_ms
    updated.wake_at_ms = retry_at_ms
    updated.agent = agent
    del updated.waiting_for[:]
    await store.write_meta(updated, current=(meta, version))
