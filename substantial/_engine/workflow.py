"""The ``@workflow`` decorator: a name, a signature check, nothing else."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from substantial import _allow
from substantial._store.keys import check_name
from substantial.errors import InvalidArguments

__all__ = ["Workflow", "workflow"]

R = TypeVar("R")
WorkflowFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, eq=False)
class Workflow(Generic[R]):
    """
    A registered workflow: an ``async def`` that takes a :class:`Context` first.

    :ivar fn: the workflow function
    :ivar name: the name stored in every run's log; code is found by this name on replay
    :ivar queue: the queue its runs go to; agents serve the queues of their workflows
    :ivar concurrency: at most this many of its runs execute at once (None: no limit)
    :ivar concurrency_per_key: at most this many per ``start(concurrency_key=...)``
    """

    fn: Callable[..., Awaitable[R]]
    name: str
    signature: inspect.Signature = field(repr=False)
    queue: str = "default"
    concurrency: int | None = None
    concurrency_per_key: int | None = None

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """
        :raises InvalidArguments: if ``args``/``kwargs`` do not fit the function's signature
        """
        try:
            self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(self.name, str(exc)) from None

    async def __call__(self, context: Any, *args: Any, **kwargs: Any) -> R:
        """Run the function with a :class:`~substantial.Context` and the run's arguments."""
        return await self.fn(context, *args, **kwargs)


@overload
def workflow(fn: Callable[..., Awaitable[R]], /) -> Workflow[R]: ...
@overload
def workflow(
    *,
    name: str | None = None,
    queue: str = "default",
    concurrency: int | None = None,
    concurrency_per_key: int | None = None,
) -> Callable[[Callable[..., Awaitable[R]]], Workflow[R]]: ...


def workflow(
    fn: Callable[..., Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str = "default",
    concurrency: int | None = None,
    concurrency_per_key: int | None = None,
) -> Workflow[R] | Callable[[Callable[..., Awaitable[R]]], Workflow[R]]:
    """
    Declare an ``async def`` as a durable workflow.

    Usable as ``@workflow()``, ``@workflow(name="orders.v1")`` or bare ``@workflow``.
    The name defaults to ``module.qualname``; give a stable name if you may move the code.
    The classes its annotations name (parameters and return, through generics and the
    fields of the classes found) are allowed in payloads: see
    :func:`~substantial.codec.register_type`.

    :param name: the name stored in each run's log
    :param queue: the queue its runs go to (letters, digits, ``._-``): only agents that
        serve it poll them (see ``Conductor(queues=...)``)
    :param concurrency: at most this many of its runs execute at once, across every
        agent (a run holds a slot while an agent works on it, not while it sleeps or
        waits); the others wait with status ``queued`` and go in the order they started
    :param concurrency_per_key: at most this many runs per concurrency key execute at
        once (``start(..., concurrency_key="tenant-42")``; runs without a key are not
        limited by it)
    :raises TypeError: if the function is not ``async def`` or takes no ``Context``
    :raises InvalidName: if ``queue`` breaks the naming rule
    :raises ValueError: if a limit is below 1
    """
    check_name(queue, "queue")
    for what, limit in (("concurrency", concurrency), ("concurrency_per_key", concurrency_per_key)):
        if limit is not None and limit < 1:
            raise ValueError(f"@workflow({what}=...) must be at least 1, got {limit}")

    def decorate(f: Callable[..., Awaitable[R]]) -> Workflow[R]:
        if not inspect.iscoroutinefunction(f):
            raise TypeError(f"@workflow needs an async def, got {f!r}")
        signature = inspect.signature(f)
        if not signature.parameters:
            raise TypeError(f"workflow {f.__qualname__} must take a Context as first parameter")
        wf_name = name or f"{f.__module__}.{f.__qualname__}"
        _allow.note_function(f, skip_first=True)
        return Workflow(
            fn=f, name=wf_name, signature=signature, queue=queue,
            concurrency=concurrency, concurrency_per_key=concurrency_per_key,
        )  # fmt: skip

    if fn is not None:
        return decorate(fn)
    return decorate
