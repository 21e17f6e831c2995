"""The step runner: one attempt of one ``save`` step, its timeout and its retry."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import anyio

from substantial._agent import telemetry
from substantial._agent.outcomes import Outcomes, StepOutcome
from substantial._agent.step_threads import DaemonThreadPool
from substantial._client.client import Client
from substantial._engine.commands import SaveCommand, failure_from_exception
from substantial._engine.replay import Execution
from substantial.codec import encode_payload
from substantial.errors import CodecError

__all__ = ["StepOutcome", "StepRunner", "call", "in_thread", "is_sync", "step_threads"]


class StepRunner:
    """
    Runs step functions (async ones on the event loop, sync ones in worker threads),
    encodes their results and decides retries by each step's policy.

    :param client: whose ``max_payload`` limits a step's result
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._now = client.store.clock.now_ms

    async def execute(self, command: SaveCommand, outcomes: Outcomes) -> None:
        """Run one attempt of ``command`` in this task and put its outcome."""
        attempt = command.attempts + 1
        try:
            deadline = anyio.fail_after(command.timeout) if command.timeout else nullcontext()
            with telemetry.step_span(command, attempt), deadline:
                value = await call(command.fn)
        except Exception as exc:
            outcomes.put(self.failed(command, attempt, exc))
        else:
            outcomes.put(self.succeeded(command, attempt, value))

    def succeeded(self, command: SaveCommand, attempt: int, value: Any) -> StepOutcome:
        """The outcome of an attempt that returned ``value``: its encoding, or a failure."""
        try:
            where = f"the result of step {command.position} ({command.name})"
            payload = encode_payload(value, where=where, limit=self._client.max_payload)
        except Exception as exc:
            return self.failed(command, attempt, exc)
        return StepOutcome(command, payload, None, None)

    def failed(self, command: SaveCommand, attempt: int, exc: Exception) -> StepOutcome:
        """The outcome of an attempt that raised ``exc``: a retry time if the policy says so."""
        if isinstance(exc, CodecError):
            failure = failure_from_exception(exc, non_retryable=True)
            return StepOutcome(command, None, failure, None)
        retry_at = None
        policy = command.retry
        if policy is not None and policy.retries(exc, attempt):
            retry_at = self._now() + round(policy.delay_after(attempt) * 1000)
            telemetry.step_retried()
        failure = failure_from_exception(exc, non_retryable=retry_at is None)
        return StepOutcome(command, None, failure, retry_at)

    def apply(self, execution: Execution, outcome: StepOutcome) -> None:
        """Hand an outcome to the run's execution, which records it as events."""
        if outcome.result is not None:
            execution.step_succeeded(outcome.command, outcome.result, self._now())
        else:
            assert outcome.failure is not None
            execution.step_failed(
                outcome.command, outcome.failure, outcome.retry_at_ms, self._now()
            )


def is_sync(fn: Callable[[], Any]) -> bool:
    """Whether a step function is called in a worker thread (not an ``async def``)."""
    target = fn
    while isinstance(target, functools.partial):
        target = target.func
    return not inspect.iscoroutinefunction(target)


async def call(fn: Callable[[], Any]) -> Any:
    """Call a step function: async ones on the event loop, sync ones in a worker thread."""
    if not is_sync(fn):
        return await fn()
    value = await in_thread(fn)
    if inspect.isawaitable(value):
        value = await value
    return value


_step_threads: DaemonThreadPool | None = None


def step_threads() -> DaemonThreadPool:
    """The pool of worker threads sync step functions run in (made on first use)."""
    global _step_threads
    if _step_threads is None:
        _step_threads = DaemonThreadPool(max_workers=40)
    return _step_threads


async def in_thread(fn: Callable[[], Any]) -> Any:
    """
    Run a sync step function in a worker thread, so blocking code does not stall the
    agent; on cancellation the thread is abandoned. On asyncio this is the loop's
    ``run_in_executor`` on a pool of this module's (as many threads as anyio's default
    limit): about half the CPU of ``anyio.to_thread.run_sync`` per call. Context
    variables are copied in, as anyio does.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another event loop (trio)
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)
    pool = step_threads()
    call = pool.submit(contextvars.copy_context().run, fn)
    try:
        return await asyncio.wrap_future(call, loop=loop)
    except asyncio.CancelledError:
        pool.abandon(call)  # a hung call must not keep a thread of the pool
        raise
