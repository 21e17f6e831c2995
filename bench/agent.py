"""
One agent process for the scale-out row: ``python -m bench.agent SPEC_JSON``.

Prints ``ready`` once its backend answers, starts its agent on a line ``go`` on stdin,
stops when stdin closes, then prints how many backend requests it made and exits.
"""

from __future__ import annotations

import sys

import anyio

from bench.targets import Spec
from bench.workloads import WORKFLOWS
from substantial import Conductor


async def main(spec_json: str) -> None:
    backend = Spec.from_json(spec_json).open()
    conductor = Conductor(backend)
    conductor.register(*WORKFLOWS)
    await backend.list("schedule/", limit=1)  # connect before the clock starts
    baseline = sum(backend.requests.values())
    print("ready", flush=True)
    if (await anyio.to_thread.run_sync(sys.stdin.readline)).strip() != "go":
        return
    async with conductor:
        await anyio.to_thread.run_sync(sys.stdin.read)  # until the bench closes stdin
    print(sum(backend.requests.values()) - baseline, flush=True)
    await backend.aclose()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
