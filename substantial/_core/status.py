"""
A run's status, in one place: the public enum, its wire values, and which log events end
a run with which status. Every layer may import this.
"""

from __future__ import annotations

import enum

from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "END_STATUS",
    "FINAL_PB",
    "STATUS_FROM_PB",
    "STATUS_TO_PB",
    "TERMINAL_KINDS",
    "RunStatus",
]


class RunStatus(str, enum.Enum):
    """Where a run is in its life."""

    #: started; no agent has picked it up yet
    PENDING = "pending"
    #: an agent is working on it, or it has steps left to run
    RUNNING = "running"
    #: waiting for a timer (a sleep or a retry)
    SLEEPING = "sleeping"
    #: waiting for an event
    WAITING = "waiting"
    #: finished with a result
    COMPLETED = "completed"
    #: finished with an error
    FAILED = "failed"
    #: cancelled
    CANCELLED = "cancelled"
    #: its code no longer replays its log; agents retry it after a pause
    PARKED = "parked"
    #: its compensations ran after ``revert()``
    REVERTED = "reverted"
    #: it continued as a new run (``continue_using``); handles follow the chain
    CONTINUED = "continued"
    #: ended from outside by ``Handle.terminate()``, without running its code
    TERMINATED = "terminated"
    #: waiting for a free slot of its workflow's concurrency limit
    QUEUED = "queued"
    #: paused with ``Handle.pause()``: no agent runs it until ``resume()``
    PAUSED = "paused"
    #: operator views only (never stored): neither its summary nor its log's first
    #: segment can be read, so nothing is known of it; ``gc`` leaves it alone
    CORRUPT = "corrupt"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.REVERTED,
    RunStatus.CONTINUED,
    RunStatus.TERMINATED,
}

STATUS_TO_PB = {
    RunStatus.PENDING: pb.RUN_STATUS_PENDING,
    RunStatus.RUNNING: pb.RUN_STATUS_RUNNING,
    RunStatus.SLEEPING: pb.RUN_STATUS_SLEEPING,
    RunStatus.WAITING: pb.RUN_STATUS_WAITING,
    RunStatus.COMPLETED: pb.RUN_STATUS_COMPLETED,
    RunStatus.FAILED: pb.RUN_STATUS_FAILED,
    RunStatus.CANCELLED: pb.RUN_STATUS_CANCELLED,
    RunStatus.PARKED: pb.RUN_STATUS_PARKED,
    RunStatus.REVERTED: pb.RUN_STATUS_REVERTED,
    RunStatus.CONTINUED: pb.RUN_STATUS_CONTINUED,
    RunStatus.TERMINATED: pb.RUN_STATUS_TERMINATED,
    RunStatus.QUEUED: pb.RUN_STATUS_QUEUED,
    RunStatus.PAUSED: pb.RUN_STATUS_PAUSED,
}
STATUS_FROM_PB = {value: key for key, value in STATUS_TO_PB.items()}

#: Log event kinds that end a run, and the status each leaves it in.
END_STATUS = {
    "completed": RunStatus.COMPLETED,
    "failed": RunStatus.FAILED,
    "cancelled": RunStatus.CANCELLED,
    "reverted": RunStatus.REVERTED,
    "continued_as": RunStatus.CONTINUED,
    "terminated": RunStatus.TERMINATED,
}
TERMINAL_KINDS = frozenset(END_STATUS)
#: The wire values of the statuses a run ends in.
FINAL_PB = frozenset(STATUS_TO_PB[status] for status in _FINISHED)
