"""
The direct path of sync step functions on asyncio: each attempt is one call in a worker
thread whose end a callback on the event loop turns into the step's outcome for the
drive loop. No task, no cloned stream, no wrapped future per step: the task
per step cost as much CPU as the thread hop itself (bench/PROFILE.md, issue 13).

It behaves as :meth:`StepRunner.execute` does for the same step: the same telemetry span
around the call, the context variables copied into the thread, the step's timeout
(``TimeoutError``, and the thread abandoned), the retry decision, and a sync function
that returns an awaitable has it awaited on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
from collections.abc import Callable, Coroutine
from contextlib import nullcontext
from typing import Any

import anyio
from anyio.abc import TaskGroup

from substantial._agent import telemetry
from substantial._agent.outcomes import Outcomes
from substantial._agent.steps import StepRunner, is_sync, step_threads
from substantial._engine.commands import SaveCommand

__all__ = ["DirectSteps"]


class _Attempt:
    """One attempt in a worker thread: its call, timeout timer, context and span."""

    __slots__ = ("attempt", "command", "context", "deadline", "future", "span", "timer")

    def __init__(self, command: SaveCommand) -> None:
        self.command = command
        self.attempt = command.attempts + 1
        self.context = contextvars.copy_context()
        self.span = telemetry.step_span(command, self.attempt)
        self.context.run(self.span.__enter__)
        self.future: concurrent.futures.Future[Any] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0

    def end_span(self, error: BaseException | None) -> None:
        tb = error.__traceback__ if error is not None else None
        self.context.run(self.span.__exit__, type(error) if error else None, error, tb)


class DirectSteps:
    """
    Starts the step attempts of one drive loop, each putting its outcome: a sync step
    function on asyncio in a worker thread directly, any other in a task of ``tg`` (by
    :meth:`StepRunner.execute`). :meth:`close` abandons the thread calls still running,
    as cancelling their tasks did.
    """

    def __init__(self, runner: StepRunner, outcomes: Outcomes, tg: TaskGroup) -> None:
        self._runner = runner
        self._outcomes = outcomes
        self._tg = tg
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio: steps each run in a task, through anyio
            self._loop = None
        self._running: dict[int, _Attempt] = {}
        #: tasks to start from the drive loop (a loop callback is in no task: anyio needs one)
        self._deferred: list[tuple[Callable[..., Coroutine[Any, Any, None]], tuple[Any, ...]]] = []

    def start(self, command: SaveCommand) -> None:
        """Start one attempt of ``command``."""
        if self._loop is not None and is_sync(command.fn):
            self._start_in_thread(command, self._loop)
        else:
            self._tg.start_soon(self._runner.execute, command, self._outcomes)

    def start_deferred(self) -> None:
        """Start the tasks loop callbacks asked for; called by the drive loop after a wait."""
        while self._deferred:
            fn, args = self._deferred.pop(0)
            self._tg.start_soon(fn, *args)

    def _defer(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        self._deferred.append((fn, args))
        self._outcomes.wake()

    def _start_in_thread(self, command: SaveCommand, loop: asyncio.AbstractEventLoop) -> None:
        attempt = _Attempt(command)
        self._running[command.position] = attempt
        # the call gets its own copy, as in_thread's: the span may end while it still runs
        future = step_threads().submit(attempt.context.copy().run, command.fn)
        attempt.future = future
        if command.timeout:
            attempt.deadline = loop.time() + command.timeout
            attempt.timer = loop.call_at(attempt.deadline, self._timed_out, attempt)
        future.add_done_callback(lambda _: self._from_thread(attempt, loop))

    def _from_thread(self, attempt: _Attempt, loop: asyncio.AbstractEventLoop) -> None:
        # a closed loop: the agent is gone, and the step abandoned
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._returned, attempt)

    def _returned(self, attempt: _Attempt) -> None:
        if self._running.get(attempt.command.position) is not attempt:
            return  # timed out, or the drive loop ended
        del self._running[attempt.command.position]
        assert attempt.future is not None
        error = attempt.future.exception()
        value = attempt.future.result() if error is None else None
        if attempt.timer is not None:
            attempt.timer.cancel()
        if error is None and inspect.isawaitable(value):
            # as call() does: the awaitable is awaited on the loop, within the timeout
            self._running[attempt.command.position] = attempt
            self._defer(self._await_rest, attempt, value)
            return
        self._finish(attempt, value, error)

    def _finish(self, attempt: _Attempt, value: Any, error: BaseException | None) -> None:
        attempt.end_span(error)
        if error is not None and not isinstance(error, Exception):
            self._defer(_reraise, error)  # as the step's task would have
            return
        runner, command = self._runner, attempt.command
        try:
            if error is None:
                outcome = runner.succeeded(command, attempt.attempt, value)
            else:
                outcome = runner.failed(command, attempt.attempt, error)
        except BaseException as exc:  # a retry policy's own bug: it ends the wake-up,
            self._defer(_reraise, exc)  # as it did from the step's task, not a lost step
            return
        self._outcomes.put(outcome)

    async def _await_rest(self, attempt: _Attempt, awaitable: Any) -> None:
        timeout = attempt.command.timeout
        remaining = attempt.deadline - anyio.current_time()
        deadline = anyio.fail_after(remaining) if timeout else None
        error: Exception | None = None
        try:
            with deadline or nullcontext():
                value = await awaitable
        except Exception as exc:
            value, error = None, exc
        if self._running.pop(attempt.command.position, None) is attempt:
            self._finish(attempt, value, error)

    def _timed_out(self, attempt: _Attempt) -> None:
        if self._running.pop(attempt.command.position, None) is not attempt:
            return
        assert attempt.future is not None
        _give_up(attempt.future)
        try:
            raise TimeoutError
        except TimeoutError as exc:
            self._finish(attempt, None, exc)

    def close(self) -> None:
        """Abandon the attempts still running: their outcomes are never recorded."""
        for attempt in self._running.values():
            if attempt.timer is not None:
                attempt.timer.cancel()
            if attempt.future is not None:
                _give_up(attempt.future)
            attempt.end_span(asyncio.CancelledError())
        self._running.clear()


def _give_up(future: concurrent.futures.Future[Any]) -> None:
    """Drop a call waiting for a thread; one running no longer counts against the pool."""
    if not future.cancel():
        step_threads().abandon(future)  # a hung call must not keep a pool thread


async def _reraise(error: BaseException) -> None:
    raise error
