"""
How a run's code stops: the ``BaseException`` signals that unwind a workflow coroutine,
and the terminal event (completed, failed, cancelled, reverted, continued) that records
how it ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

from substantial._core.runids import derived_run_id
from substantial._engine.commands import failure_from_exception
from substantial.codec import encode_payload
from substantial.errors import CodecError
from substantial.protocol import substantial_pb2 as pb

__all__ = ["ContinueAs", "Reverted", "Suspend", "terminal_event"]


class Suspend(BaseException):
    """Unwinds a workflow coroutine the engine is done with. Never reaches user code's
    ``except Exception``."""


class Reverted(BaseException):
    """Ends a workflow whose compensations ran."""


class ContinueAs(BaseException):
    """Ends a workflow that continues as a new run."""

    def __init__(self, workflow: str, args: pb.Payload) -> None:
        super().__init__(workflow)
        self.workflow = workflow
        self.payload = args


def terminal_event(
    main: asyncio.Task[Any],
    fatal: BaseException | None,
    *,
    run_id: str,
    started: pb.Started,
    max_payload: int,
) -> pb.Event:
    """
    The event that ends a run whose workflow task is done, or whose handler or
    ``ensure`` predicate raised ``fatal``.

    :param started: the run's Started event, which places it in a continuation chain
    :param max_payload: the most bytes the encoded result may take; a larger one fails
        the run
    """
    error = fatal
    if error is None and main.cancelled():
        return pb.Event(cancelled=pb.Cancelled())
    if error is None:
        error = main.exception()
    if isinstance(error, asyncio.CancelledError):
        return pb.Event(cancelled=pb.Cancelled())
    if isinstance(error, Reverted):
        return pb.Event(reverted=pb.Reverted())
    if isinstance(error, ContinueAs):
        root = started.chain_root or run_id
        next_id = derived_run_id(root, f".{started.chain_index + 1}")
        continued = pb.ContinuedAs(run_id=next_id, workflow=error.workflow, args=error.payload)
        return pb.Event(continued_as=continued)
    if error is None:
        try:
            result = encode_payload(main.result(), where="result", limit=max_payload)
        except CodecError as exc:
            error = exc
        else:
            return pb.Event(completed=pb.Completed(result=result))
    return pb.Event(failed=pb.Failed(failure=failure_from_exception(error)))
