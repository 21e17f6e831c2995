"""start -> result of a 10-step workflow, in-process agent, one run after another (issue #2
figure), on FSBackend or, with ``memory``, on MemoryBackend.

.venv/bin/python -m bench.ten_steps [RUNS] [files|memory]
"""

import asyncio
import statistics
import sys
import tempfile
import time

from bench.workloads import ten
from substantial import Conductor
from substantial.backends import Backend, FSBackend, MemoryBackend


async def main(n: int, kind: str) -> None:
    backend: Backend = MemoryBackend() if kind == "memory" else FSBackend(tempfile.mkdtemp())
    async with Conductor(backend) as conductor:
        conductor.register(ten)
        for _ in range(10):  # warm-up
            await (await conductor.start(ten)).result()
        times = []
        for _ in range(n):
            began = time.perf_counter()
            assert await (await conductor.start(ten)).result() == 45
            times.append((time.perf_counter() - began) * 1000)
    times.sort()
    print(f"{n} runs: p50 {statistics.median(times):.1f} ms, p99 {times[int(n * 0.99) - 1]:.1f} ms")


runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
asyncio.run(main(runs, sys.argv[2] if len(sys.argv) > 2 else "files"))
