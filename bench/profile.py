"""
Profile the step row and the 10-step latency row: ``python -m bench.profile [files,redis]``.

Needs pyinstrument in the venv (``pip install pyinstrument``; not a project dependency).
Prints, per backend and row, pyinstrument's wall-clock tree and cProfile's top functions
by own time, for ``bench/PROFILE.md``.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import anyio

from bench.measure import agent
from bench.targets import Target, default_workdir, prepare
from bench.workloads import steps


async def _step_row(target: Target, n: int) -> float:
    _, backend = await target.fresh()
    async with agent(backend) as conductor:
        await (await conductor.start(steps, 20)).result()
        start = time.perf_counter()
        await (await conductor.start(steps, n)).result()
        return time.perf_counter() - start


async def _latency_row(target: Target, runs: int) -> float:
    _, backend = await target.fresh()
    async with agent(backend) as conductor:
        for _ in range(5):
            await (await conductor.start(steps, 10)).result()
        start = time.perf_counter()
        for _ in range(runs):
            await (await conductor.start(steps, 10)).result()
        return time.perf_counter() - start


def main() -> int:
    from pyinstrument import Profiler

    kinds = (sys.argv[1] if len(sys.argv) > 1 else "files,redis").split(",")
    workdir = default_workdir()
    targets, skipped = prepare(kinds, Path(workdir))
    for kind, reason in skipped.items():
        print(f"skipping {kind}: {reason}")
    try:
        for target in targets:
            for name, call in (
                ("step (1,000 steps)", lambda t=target: _step_row(t, 1000)),
                ("latency (200 x 10 steps)", lambda t=target: _latency_row(t, 200)),
            ):
                profiler = Profiler(async_mode="disabled", interval=0.0005)
                profiler.start()
                elapsed = anyio.run(call)
                profiler.stop()
                print(f"\n===== {target.kind}: {name}: {elapsed * 1000:.0f} ms (pyinstrument)")
                print(profiler.output_text(unicode=False, color=False, show_all=False))
                stats = cProfile.Profile()
                stats.enable()
                elapsed = anyio.run(call)
                stats.disable()
                out = io.StringIO()
                pstats.Stats(stats, stream=out).sort_stats("tottime").print_stats(25)
                print(f"===== {target.kind}: {name}: {elapsed * 1000:.0f} ms (cProfile, tottime)")
                print(out.getvalue())
    finally:
        for target in targets:
            target.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
