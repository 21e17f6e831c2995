"""Count fsync/fdatasync calls per 10-step run on FSBackend, by what they flush.

.venv/bin/python -m bench.fsyncs [RUNS]

Wraps ``os.fsync`` and ``os.fdatasync`` with a counter (the bench is the only user: no
test mocks them), runs a 10-step workflow RUNS times after a warm-up, and prints the
calls per run, grouped by the kind of path flushed (read from /proc/self/fd).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable

from bench.workloads import ten
from substantial import Conductor
from substantial.backends import FSBackend

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _kind(fd: int) -> str:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"
    path = re.sub(r"/[0-9a-f]{32}$", "/<temp>", path)
    path = re.sub(r"runs/[^/]+", "runs/<run>", path)
    path = re.sub(r"leases/[^/]+", "leases/<run>", path)
    path = re.sub(r"/\d{12}$", "/<seq>", path)
    path = re.sub(r"schedule/[^/]+$", "schedule/<entry>", path)
    return re.sub(r"^.*?/bench-fsyncs[^/]*", "", path) or "/"


def _counting(call: Callable[[int], None], name: str) -> Callable[[int], None]:
    def counted(fd: int) -> None:
        with _lock:
            _counts[f"{name} {_kind(fd)}"] += 1
        call(fd)

    return counted


os.fsync = _counting(os.fsync, "fsync")
os.fdatasync = _counting(os.fdatasync, "fdatasync")


async def main(runs: int) -> None:
    backend = FSBackend(tempfile.mkdtemp(prefix="bench-fsyncs"))
    async with Conductor(backend) as conductor:
        conductor.register(ten)
        for _ in range(3):  # warm-up: folders made once
            await (await conductor.start(ten)).result()
        _counts.clear()
        before = sum(backend.requests.values())
        for _ in range(runs):
            assert await (await conductor.start(ten)).result() == 45
        requests = (sum(backend.requests.values()) - before) / runs
    total = sum(_counts.values())
    print(
        f"{runs} runs of 10 steps: {total / runs:.1f} fsync+fdatasync per run, "
        f"{requests:.1f} requests per run"
    )
    for kind, count in sorted(_counts.items(), key=lambda item: -item[1]):
        print(f"  {count / runs:6.1f}  {kind}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
