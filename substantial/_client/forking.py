"""
``Handle.fork()`` and ``Handle.retry()``: which cut of the original's log, under which
run id. The writes are :func:`substantial._store.forks.write_fork`'s.
"""

from __future__ import annotations

import uuid

from substantial._core.runids import check_run_id, derived_run_id
from substantial._store import forks
from substantial._store.runs import RunStore, StoredLog
from substantial.errors import ForkError, RunNotFound

__all__ = ["fork", "retry", "retry_cut"]

#: How a StepFailed that ended a run reads, given the step's failure.
_STEP_FAILED = "substantial.errors.StepFailed"


async def fork(store: RunStore, run_id: str, at_step: int, fork_id: str | None) -> str:
    """
    Make a fork of ``run_id`` cut at ``at_step``; see :meth:`Handle.fork`.

    :return: the fork's run id
    """
    if isinstance(at_step, bool) or not isinstance(at_step, int) or at_step < 0:
        raise ForkError(run_id, f"at_step must be a position (an int >= 0), not {at_step!r}")
    fork_id = check_run_id(fork_id, "fork") if fork_id is not None else uuid.uuid4().hex
    stored = await _read(store, run_id)
    cut = forks.cut_at_step(run_id, stored, at_step)
    await forks.write_fork(store, run_id, stored, cut=cut, step=at_step, fork_id=fork_id)
    return fork_id


async def retry(store: RunStore, run_id: str, fork_id: str | None) -> str:
    """
    Make the fork of a failed run at its failed step; see :meth:`Handle.retry`. Its id is
    ``{run}-retry`` unless given, so retrying a run twice makes one fork.

    :return: the fork's run id
    """
    fork_id = (
        check_run_id(fork_id, "retry") if fork_id is not None else derived_run_id(run_id, "-retry")
    )
    stored = await _read(store, run_id)
    step, cut = retry_cut(run_id, stored)
    await forks.write_fork(store, run_id, stored, cut=cut, step=step, fork_id=fork_id, retry=True)
    return fork_id


def retry_cut(run_id: str, stored: StoredLog) -> tuple[int, int]:
    """
    The step a failed run failed at, and the cut before it: the step whose failure the
    run's failure is (a ``StepFailed`` or ``CodecError`` it let through). A run that
    failed in its own code is cut just before its failure, at the position after the
    last one recorded.

    :raises ForkError: if the log does not end in a failure
    """
    last = stored.events[-1]
    kind = last.WhichOneof("kind") or "?"
    if kind != "failed":
        status = _ENDS.get(kind, "running")
        raise ForkError(
            run_id, f"it has not failed (it is {status}); retry forks a failed run at its "
            "failed step, fork(at_step=N) forks any run",
        )  # fmt: skip
    failure = last.failed.failure
    for event in reversed(stored.events):
        step = event.step_completed
        if event.WhichOneof("kind") != "step_completed" or step.WhichOneof("outcome") != "failure":
            continue
        raised = (
            (step.failure.type, step.failure.message)
            if step.failure.type == "substantial.errors.CodecError"
            else (_STEP_FAILED, f"step failed with {step.failure.type}: {step.failure.message}")
        )
        if raised == (failure.type, failure.message):
            return step.position, forks.cut_at_step(run_id, stored, step.position)
    recorded = [p for p in map(forks.position, stored.events) if p is not None]
    return max(recorded, default=-1) + 1, forks.cut_at_end(run_id, stored)


_ENDS = {
    "completed": "completed",
    "cancelled": "cancelled",
    "reverted": "reverted",
    "continued_as": "continued",
    "terminated": "terminated",
}


async def _read(store: RunStore, run_id: str) -> StoredLog:
    stored = await store.read_log(run_id)
    if not stored.events:
        raise RunNotFound(run_id)
    return stored
