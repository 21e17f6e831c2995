"""
Library CPU per ``save`` step, and replay time per event, on the memory backend (issue 13).

    python -m bench.step_cpu [STEPS] [--profile]

Runs one run of ``STEPS`` (default 2,000) sequential trivial steps (``c.save(one)``, a plain
sync function) with an in-process agent and prints process CPU per step (all threads:
``time.process_time()``) and steps/s of wall time; then replays that run's log
(``Execution.replay``) and prints its CPU time per event (best of 5). ``--profile``
prints cProfile's top functions by own time for the step run.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time

from bench.measure import agent
from bench.workloads import steps, steps_then_receive
from substantial._engine.replay import Execution
from substantial._store.runs import RunStore
from substantial.backends import MemoryBackend


async def main(n: int, profile: bool) -> None:
    backend = MemoryBackend()
    async with agent(backend) as conductor:
        await (await conductor.start(steps, 50)).result()  # warm-up
        profiler = cProfile.Profile() if profile else None
        cpu, wall = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        assert await (await conductor.start(steps, n)).result() == n
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{n:,} steps: {cpu / n * 1e3:.3f} ms CPU/step, {n / wall:,.0f} steps/s")
        run_id = "replayed"
        await conductor.start(steps_then_receive, n, run_id=run_id)
        while True:
            stored = await RunStore(backend).read_log(run_id)
            if stored.events and len(stored.events) > n:
                break
            await asyncio.sleep(0.05)
        times = []
        for _ in range(5):
            execution = Execution(run_id, steps_then_receive)
            start = time.thread_time()  # CPU: steadier than wall time on a loaded machine
            execution.replay(stored.events)
            times.append(time.thread_time() - start)
            execution.close()
        best = min(times)
        events = len(stored.events)
        per_event = best / events * 1e6
        print(f"replay of {events:,} events: {best * 1e3:.1f} ms, {per_event:.2f} us/event")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if not arg.startswith("--")]
    asyncio.run(main(int(args[0]) if args else 2000, "--profile" in sys.argv))
