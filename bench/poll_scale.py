"""
One idle schedule poll of the files backend against the number of sleeping runs.

    python -m bench.poll_scale [--sizes 10000,100000,300000] [--polls 30] [--dir DIR]

Writes schedule entries straight into a files backend's folder (the key layout of the
code on the path: run it on two checkouts for a before/after), all due in the future,
either spread over the next 30 days (from an hour on) or all at the same time two hours
from now, then times ``RunStore.due`` called as the poller calls it (first page, nothing
due). Prints the median wall time and CPU time of one poll per size, and the requests
it made.
"""

from __future__ import annotations

import argparse
import inspect
import os
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

import anyio

from substantial._core import constants
from substantial._store.keys import Route, schedule_key
from substantial._store.runs import RunStore
from substantial.backends.fs import FSBackend
from substantial.protocol import substantial_pb2 as pb

DAY_MS = 86_400_000


def _write(root: str, keys: list[str]) -> None:
    """Create the key files directly (the files backend's layout: key a/b is root/a/b)."""
    data = pb.ScheduleEntry(nonce="x" * 32).SerializeToString()
    made: set[str] = set()
    for key in keys:
        folder = os.path.dirname(f"{root}/{key}")
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(f"{root}/{key}", "wb") as file:
            file.write(data)


def _keys(count: int, start: int, now: int, spread: bool, route: Route) -> list[str]:
    rng = random.Random(start)
    due = now + 2 * 3_600_000
    return [
        schedule_key(now + rng.randrange(3_600_000, 30 * DAY_MS) if spread else due,
                     f"sleeper-{i:07d}", "t", route)
        for i in range(start, start + count)
    ]  # fmt: skip


async def _poll_ms(store: RunStore, polls: int) -> tuple[float, float, float]:
    """Median wall ms, median CPU ms and requests of one poll, as the poller makes it."""
    kwargs: dict[str, Any] = {"limit": constants.POLL_FIRST_PAGE}
    if "horizon_ms" in inspect.signature(store.due).parameters:
        kwargs["horizon_ms"] = round(constants.POLL_MAX_SECONDS * 1000)
    walls, cpus = [], []
    before = sum(store.backend.requests.values())
    for _ in range(polls):
        wall, cpu = time.perf_counter(), time.process_time()
        entries, _, _ = await store.due(store.clock.now_ms(), **kwargs)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
        assert not entries, f"a sleeper was due: {entries[:2]}"
    requests = (sum(store.backend.requests.values()) - before) / polls
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000, requests


async def _main(sizes: list[int], polls: int, base: str) -> None:
    route = Route.of("default", "sleeper")
    print(f"{'layout':<8} {'sleeping':>9} {'poll ms':>9} {'cpu ms':>8} {'requests':>9}")
    for spread in (True, False):
        root = tempfile.mkdtemp(prefix="poll-scale-", dir=base)
        try:
            store = RunStore(FSBackend(root, fsync=False))
            now = store.clock.now_ms()
            written = 0
            for size in sizes:
                _write(root, _keys(size - written, written, now, spread, route))
                written = size
                wall, cpu, requests = await _poll_ms(store, polls)
                name = "spread" if spread else "same"
                print(f"{name:<8} {size:>9,} {wall:>9.2f} {cpu:>8.2f} {requests:>9.1f}")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,300000")
    parser.add_argument("--polls", type=int, default=30)
    parser.add_argument("--dir", default=None, help="where to make the folders (default: tmp)")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    anyio.run(_main, sizes, args.polls, args.dir)


if __name__ == "__main__":
    main()
