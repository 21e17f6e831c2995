"""
Commands: what a workflow asked for at a position, waiting for the log (or the agent)
to resolve it. Also the portable form of exceptions.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from substantial._core.retry import RetryPolicy
from substantial.errors import CodecError, StepFailed
from substantial.protocol import substantial_pb2 as pb

__all__ = [
    "ChildCommand",
    "Command",
    "EnsureCommand",
    "ReceiveCommand",
    "SaveCommand",
    "SleepCommand",
    "TimedCommand",
    "callable_name",
    "error_from_failure",
    "failure_from_exception",
]


@dataclass(eq=False)
class Command:
    position: int
    future: asyncio.Future[Any]

    kind = "primitive"

    def describe(self) -> str:
        return self.kind


C = TypeVar("C", bound=Command)


@dataclass(eq=False)
class SaveCommand(Command):
    """A ``save`` step that has no final result recorded yet."""

    fn: Callable[[], Any]
    name: str
    retry: RetryPolicy | None
    timeout: float | None
    compensate_with: Callable[[], Any] | None
    attempts: int = 0
    retry_at_ms: int | None = None
    key: str = ""
    #: the named limit each attempt waits for (never logged: it says how, not what)
    limit: str = ""

    kind = "save"

    def describe(self) -> str:
        return f"save({self.name})"


@dataclass(eq=False)
class TimedCommand(Command):
    """A command with a durable timer: a sleep, or a receive with a timeout."""

    seconds: float | None
    fire_at_ms: int | None = field(default=None, kw_only=True)


@dataclass(eq=False)
class SleepCommand(TimedCommand):
    kind = "sleep"

    def describe(self) -> str:
        return f"sleep({self.seconds:g}s)"


@dataclass(eq=False)
class ReceiveCommand(TimedCommand):
    name: str = field(kw_only=True)
    key: str = field(default="", kw_only=True)

    kind = "receive"

    def describe(self) -> str:
        timeout = f", timeout={self.seconds:g}s" if self.seconds is not None else ""
        return f"receive({self.name!r}{timeout})"


@dataclass(eq=False)
class EnsureCommand(Command):
    predicate: Callable[[], bool]

    kind = "ensure"

    def describe(self) -> str:
        return "ensure()"


@dataclass(eq=False)
class ChildCommand(Command):
    """Start a child run; resolves with the child's run id once it is recorded."""

    workflow: str
    args: pb.Payload
    run_id: str
    detached: bool

    kind = "child"

    def describe(self) -> str:
        return f"start_child({self.workflow}, run_id={self.run_id!r})"


def failure_from_exception(error: BaseException, *, non_retryable: bool = False) -> pb.Failure:
    """Describe an exception in the log's portable form."""
    kind = type(error)
    module = kind.__module__
    type_name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
    return pb.Failure(
        type=type_name,
        message=str(error),
        traceback="".join(traceback.format_exception(error)),
        non_retryable=non_retryable,
    )


def error_from_failure(failure: pb.Failure) -> Exception:
    """The exception a workflow sees for a recorded step failure, live and on replay."""
    if failure.type == "substantial.errors.CodecError":
        return CodecError(failure.message)
    return StepFailed(failure.type, failure.message, failure.traceback)


def callable_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


def same_step(recorded: str, code: str) -> bool:
    """
    Whether a recorded step name and the code's step name are the same step. The
    enclosing function is left out (``flow.<locals>.<lambda>`` is ``<lambda>``), so
    renaming a workflow function does not break the replay of its inline steps.
    """
    return recorded.rpartition("<locals>.")[2] == code.rpartition("<locals>.")[2]
