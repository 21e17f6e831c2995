"""The runs an agent leaves alone for a while, and the failures in a row behind that."""

from __future__ import annotations

import anyio

from substantial._agent.health import RunTroubles
from substantial._core import constants

__all__ = ["HoldOffs"]


class HoldOffs:
    """
    Runs this agent does not claim until a time of its own (``anyio.current_time()``):
    ones another agent holds, ones whose store writes failed, ones whose errors repeat.
    Held in memory only; a run's durable hold-off is a schedule entry.

    :param park_retry: the longest hold-off for a run's own errors, in seconds
    """

    def __init__(self, park_retry: float) -> None:
        #: run id -> when this agent may claim it again
        self.until: dict[str, float] = {}
        #: failed wake-ups in a row per run because the store was out
        self.outages = RunTroubles(
            constants.OUTAGE_RETRY_MIN_SECONDS, constants.OUTAGE_RETRY_MAX_SECONDS
        )
        #: failed wake-ups in a row per run because of errors of the run's own
        self.run_errors = RunTroubles(constants.RUN_ERROR_RETRY_SECONDS, park_retry)

    def hold(self, run_id: str, seconds: float, *, since: float | None = None) -> None:
        """Leave ``run_id`` alone for ``seconds`` from ``since`` (default: now)."""
        start = anyio.current_time() if since is None else since
        self.until[run_id] = start + seconds

    def current(self, now: float) -> dict[str, float]:
        """Forget the hold-offs that ended by ``now``; the ones that remain."""
        self.until = {run: t for run, t in self.until.items() if t > now}
        return self.until

    def succeeded(self, run_id: str) -> None:
        """A wake-up of ``run_id`` went through: its failures in a row start again from 0."""
        self.outages.succeeded(run_id)
        self.run_errors.succeeded(run_id)
