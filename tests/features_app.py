"""
An agent process for the crash tests of sagas and try/except/finally
(``tests/test_sagas.py``, ``tests/test_parallel.py``).

    python tests/features_app.py BACKEND_URL

Environment: ``CHAOS_EFFECTS``, a folder shared with the test. Each step appends one line
to ``{EFFECTS}/{run_id}`` (``O_APPEND``, so the record survives ``kill -9``). Balances
live in ``{EFFECTS}/{run_id}.balances`` (JSON, replaced atomically). A step that meets a
barrier waits until the file ``{EFFECTS}/{run_id}.open`` exists.

Prints ``ready`` on stdout once it serves; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from substantial import Conductor, Context, StepFailed, workflow

EFFECTS = Path(os.environ.get("CHAOS_EFFECTS", "./features-effects"))


def effect(run_id: str, label: str) -> None:
    """One line per step execution, durable across kill -9."""
    fd = os.open(EFFECTS / run_id, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{label}\n".encode())
    finally:
        os.close(fd)


def barrier(run_id: str) -> None:
    """Block until the test opens this run's barrier."""
    while not (EFFECTS / f"{run_id}.open").exists():
        time.sleep(0.01)


def balances(run_id: str) -> dict[str, int]:
    path = EFFECTS / f"{run_id}.balances"
    return json.loads(path.read_text()) if path.exists() else {}  # type: ignore[no-any-return]


def _write_balances(run_id: str, accounts: dict[str, int]) -> None:
    path = EFFECTS / f"{run_id}.balances"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(accounts))
    os.replace(temporary, path)  # a kill leaves the old balances or the new, never half


def move(
    run_id: str, label: str, src: str, dst: str, amount: int, *, wait: bool = False
) -> Callable[[], int]:
    """A step moving ``amount`` from ``src`` to ``dst``; fails if ``dst`` is closed."""

    def transfer_step() -> int:
        effect(run_id, f"enter:{label}")
        if wait:
            barrier(run_id)
        accounts = balances(run_id)
        if dst not in accounts:
            raise LookupError(f"account {dst!r} is closed")
        accounts[src] -= amount
        accounts[dst] += amount
        _write_balances(run_id, accounts)
        effect(run_id, f"done:{label}")
        return accounts[src]

    return transfer_step


@workflow(name="features.transfer")
async def transfer(c: Context, block_in: str) -> str:
    """
    A -> B 30, B -> C 20, C -> D 5 (D is closed: fails). Reverting runs the inverse
    moves newest first; the one named ``block_in`` waits at the barrier first.
    """
    run = c.run_id

    def undo(label: str, src: str, dst: str, amount: int) -> Callable[[], int]:
        return move(run, label, src, dst, amount, wait=label == block_in)

    try:
        await c.save(move(run, "ab", "A", "B", 30), compensate_with=undo("undo-ab", "B", "A", 30))
        await c.save(move(run, "bc", "B", "C", 20), compensate_with=undo("undo-bc", "C", "B", 20))
        await c.save(move(run, "cd", "C", "D", 5), compensate_with=undo("undo-cd", "D", "C", 5))
    except StepFailed:
        await c.revert()
    return "transferred"


@workflow(name="features.rescue")
async def rescue(c: Context) -> list[str]:
    """A failing step, a rescue step, and a finally step that waits at the barrier."""
    run = c.run_id
    trail: list[str] = []

    def failing() -> str:
        effect(run, "fail")
        raise RuntimeError("the first step fails")

    def rescuing() -> str:
        effect(run, "rescue")
        return "rescued"

    def finishing() -> str:
        effect(run, "enter:finally")
        barrier(run)
        effect(run, "done:finally")
        return "finally"

    try:
        trail.append(await c.save(failing))
    except StepFailed:
        trail.append(await c.save(rescuing))
    finally:
        trail.append(await c.save(finishing))
    return trail


def build(url: str) -> Conductor:
    conductor = Conductor(url, lease=1.0, poll_interval=0.05)
    conductor.register(transfer, rescue)
    return conductor


if __name__ == "__main__":
    from agent_process import run_agent  # a sibling: this file runs as a script

    run_agent(build)
