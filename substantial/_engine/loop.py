"""
The event loop workflow code runs on: it runs ready callbacks and nothing else (no
timers, no I/O), so a workflow's tasks advance only when the replay engine resolves
one of their futures. See :mod:`substantial._engine.replay`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["DeterministicLoop"]


class DeterministicLoop(asyncio.AbstractEventLoop):
    """An event loop that runs ready callbacks and nothing else: no timers, no I/O."""

    def __init__(self, clock_ms: Callable[[], int]) -> None:
        self._clock_ms = clock_ms
        self._ready: deque[asyncio.Handle] = deque()
        self._entered = False

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = _Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_later(self, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:  # type: ignore[override]
        raise RuntimeError(
            "workflow code cannot use asyncio timers (asyncio.sleep, wait_for, timeout): "
            "use Context.sleep() or a step's timeout="
        )

    call_at = call_later  # type: ignore[assignment]

    def run_in_executor(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:  # type: ignore[override]
        raise RuntimeError(
            "workflow code cannot run threads (asyncio.to_thread, run_in_executor): put "
            "blocking calls in a step, `await c.save(fn)`, which runs them off the loop"
        )

    def time(self) -> float:
        return self._clock_ms() / 1000

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=self, **kwargs)

    # bool() is False: a C call, not a Python one, for each future and task made
    get_debug = staticmethod(bool)

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return False

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # "Task was destroyed but it is pending" and friends, from torn-down workflow
        # tasks: expected when a suspended run is dropped.
        pass

    def run_ready(self) -> None:
        """Run callbacks until every workflow task is blocked on something."""
        if not self._ready:
            return
        if self._entered:
            self._drain()
            return
        with self.running():
            self._drain()

    @contextmanager
    def running(self) -> Iterator[None]:
        """
        Be asyncio's running loop until the block ends, so that :meth:`run_ready` does
        not set and reset it each time (a replay runs the callbacks of every event).
        """
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        self._entered = True
        try:
            yield
        finally:
            self._entered = False
            asyncio.events._set_running_loop(outer)

    def _drain(self) -> None:
        ready = self._ready
        while ready:
            handle = ready.popleft()
            if handle._cancelled:
                continue
            try:  # Handle._run, less a call
                handle._context.run(handle._callback, *handle._args)  # type: ignore[attr-defined]
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:  # what call_exception_handler would be given
                pass


class _Handle(asyncio.Handle):
    """A ready callback, made without ``Handle.__init__``'s debug look-up (one per event
    a replay applies)."""

    __slots__ = ()

    def __init__(
        self,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        context: contextvars.Context | None,
    ) -> None:
        self._context = contextvars.copy_context() if context is None else context
        self._loop = loop
        self._callback = callback
        self._args = args
        self._cancelled = False
        self._repr = None
        self._source_traceback = None


def _refuse(name: str) -> Callable[..., Any]:
    def refused(self: DeterministicLoop, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"workflow code cannot use the event loop's {name}() (I/O, threads, "
            "subprocesses, signals): put it in a step, `await c.save(fn)`"
        )

    refused.__name__ = name
    return refused


# Everything else asyncio's loop offers would raise a bare NotImplementedError here.
for _name, _value in vars(asyncio.AbstractEventLoop).items():
    if callable(_value) and not _name.startswith("__") and _name not in vars(DeterministicLoop):
        setattr(DeterministicLoop, _name, _refuse(_name))
