"""
An agent process for the flow-control crash test (``tests/test_flow_agents.py``).

    python tests/flow_app.py BACKEND_URL

Environment: ``CHAOS_EFFECTS``, a folder shared with the test. Each step appends
``start {run} {time}`` when it begins and ``end {run} {time}`` when it ends to
``{EFFECTS}/{workflow}`` (``O_APPEND``: lines survive ``kill -9``), times in wall-clock
nanoseconds. Prints ``ready`` once it serves; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from substantial import Conductor, Context, workflow

EFFECTS = Path(os.environ.get("CHAOS_EFFECTS", "./flow-effects"))
STEP_SECONDS = 0.15


def _line(name: str, text: str) -> None:
    fd = os.open(EFFECTS / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def timed(name: str, run_id: str) -> int:
    _line(name, f"start {run_id} {time.time_ns()}")
    time.sleep(STEP_SECONDS)  # the step's work: it must overlap with others to be tested
    _line(name, f"end {run_id} {time.time_ns()}")
    return 1


@workflow(name="flow.pair", concurrency=2)
async def pair(c: Context) -> int:
    return await c.save(lambda: timed("pair", c.run_id))


@workflow(name="flow.limited")
async def limited(c: Context) -> int:
    return await c.save(lambda: timed("limited", c.run_id), limit="three")


@workflow(name="flow.rated")
async def rated(c: Context) -> int:
    return await c.save(lambda: timed("rated", c.run_id), limit="rated")


def build(url: str) -> Conductor:
    conductor = Conductor(url, lease=1.0, poll_interval=0.05, park_retry=0.5)
    conductor.register(pair, limited, rated)
    return conductor


if __name__ == "__main__":
    from agent_process import run_agent  # a sibling: the app runs as a script

    run_agent(build)
