"""The drive loop of a wake-up: run steps and fire timers until the run ends or waits."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol

import anyio

from substantial._agent.direct_steps import DirectSteps
from substantial._agent.outcomes import Outcomes
from substantial._agent.parts import AgentParts
from substantial._core.constants import RUNNING_AFTER_SECONDS
from substantial._engine.commands import SaveCommand
from substantial._engine.replay import Execution
from substantial._store.limits import Ticket

__all__ = ["Driven", "drive"]


class Driven(Protocol):
    """The wake-up a drive loop works for."""

    @property
    def execution(self) -> Execution: ...

    async def commit(self) -> None:
        """Commit the execution's new events as the run's next log segment."""

    async def check_inbox(self) -> None:
        """Merge events sent since the wake-up began."""

    async def mark_running(self) -> None:
        """Say ``running`` in the run's summary: a step has been running a while."""


async def drive(wakeup: Driven, parts: AgentParts) -> None:
    """
    Execute steps and fire timers until the run ends or waits on the outside world.
    While steps run, the inbox is read every ``poll_max`` seconds, so that a cancellation
    reaches the workflow at its current primitive and not after its last step.
    """
    execution = wakeup.execution
    tickets: dict[int, Ticket] = {}  # what running steps took of their limits
    try:
        await _drive(execution, wakeup, parts, tickets)
    finally:
        with anyio.CancelScope(shield=True):
            for position in list(tickets):
                await _give_back(tickets, position, parts)


async def _admitted(
    command: SaveCommand, tickets: dict[int, Ticket], parts: AgentParts, run_id: str
) -> bool:
    """
    Whether a step may start now: it names no limit, or it took a slot and a token of
    its limit. If not, it waits (in memory only: the log never says why a step waited)
    until the time the limit says, the run released meanwhile if nothing else runs.
    """
    if not command.limit:
        return True
    got = await parts.limits.enter(command.limit, f"{run_id}/{command.position}")
    if isinstance(got, int):
        command.retry_at_ms = got
        return False
    tickets[command.position] = got
    return True


async def _give_back(tickets: dict[int, Ticket], position: int, parts: AgentParts) -> None:
    ticket = tickets.pop(position, None)
    if ticket is not None:
        await parts.limits.leave(ticket)


async def _drive(
    execution: Execution, wakeup: Driven, parts: AgentParts, tickets: dict[int, Ticket]
) -> None:
    now_ms = parts.store.clock.now_ms
    outcomes = Outcomes()
    running: set[int] = set()
    time = _clock()
    clock = time()
    inbox_due = clock + parts.settings.poll_max
    # A step that takes a while shows in the run's status; quick ones cost no write.
    running_mark: float | None = clock + RUNNING_AFTER_SECONDS
    async with anyio.create_task_group() as tg:
        steps = DirectSteps(parts.steps, outcomes, tg)
        try:
            while execution.outcome is None:
                now = now_ms()
                execution.fire_due_timers(now)
                for child in execution.children_to_start():
                    taken_by = await parts.endings.start_child(execution.run_id, child)
                    execution.child_started(child, now_ms(), taken_by)
                await wakeup.commit()
                if execution.outcome is not None:
                    break
                if execution.children_to_start():
                    continue
                for command in execution.runnable_steps(now):
                    if command.position not in running and await _admitted(
                        command, tickets, parts, execution.run_id
                    ):
                        running.add(command.position)
                        steps.start(command)
                if not running:
                    break
                wake = execution.next_wake_ms()
                # a wake time not in the future is a due retry that is already running
                timeout = math.inf if wake is None or wake <= now else (wake - now) / 1000
                clock = time()
                timeout = min(timeout, inbox_due - clock)
                if running_mark is not None:
                    timeout = min(timeout, running_mark - clock)
                await outcomes.wait(timeout)
                steps.start_deferred()
                while (outcome := outcomes.take()) is not None:
                    running.discard(outcome.command.position)
                    parts.steps.apply(execution, outcome)
                if tickets:
                    for position in set(tickets) - running:  # never cut short by the timeout
                        await _give_back(tickets, position, parts)
                clock = time()
                if running_mark is not None and running and clock >= running_mark:
                    running_mark = None
                    await wakeup.mark_running()
                if clock >= inbox_due and execution.outcome is None:
                    await wakeup.check_inbox()
                    inbox_due = time() + parts.settings.poll_max
        finally:
            steps.close()
        tg.cancel_scope.cancel()
    await wakeup.commit()


def _clock() -> Callable[[], float]:
    """The event loop's clock (anyio's, without its look-up of the loop at each call)."""
    try:
        return asyncio.get_running_loop().time
    except RuntimeError:  # trio
        return anyio.current_time
