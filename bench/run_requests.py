"""
Where each storage request of one 10-step run comes from: one run (start -> result) of
the bench's 10-step workflow with an in-process agent, every backend call recorded in
order with the code that made it.

.venv/bin/python -m bench.run_requests [files|memory|redis-url] [--stack N]

A run's requests are those between ``start`` and the end of its wake-up (the lease
released), as ``Backend.requests`` counts them (``get_many`` counts one per key on files
and memory). Idle polls of the agent before the start are not counted; several warm-up
runs go first so the agent is warm.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import substantial
from bench.workloads import ten
from substantial import Conductor
from substantial.backends import Backend, FSBackend, MemoryBackend, from_url

_PER_KEY = ("files", "memory")
OPS = ("get", "get_many", "put", "create", "replace", "delete", "list")
PACKAGE = os.path.dirname(os.path.abspath(substantial.__file__)) + os.sep
BACKENDS = os.path.join(PACKAGE, "backends") + os.sep


class Recorder:
    """Wraps a backend's operations; records (op, key, count, where) while on."""

    def __init__(self, backend: Backend, depth: int) -> None:
        self.backend = backend
        self.depth = depth
        self.on = False
        self.calls: list[tuple[str, str, int, str]] = []
        #: ``Backend.requests`` counted while on
        self.total: Counter[str] = Counter()
        for op in OPS:
            setattr(backend, op, self._wrap(op, getattr(backend, op)))

    def _wrap(self, op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                # get_many: one request per key on files and memory, one MGET on Redis
                count = len(args[0]) if op == "get_many" and self.backend.name in _PER_KEY else 1
                self.calls.append((op, _shown_key(op, args), count, self._where()))
            return await method(*args, **kwargs)

        return call

    def _where(self) -> str:
        frames = [
            frame
            for frame in traceback.extract_stack()[:-2]
            if frame.filename.startswith(PACKAGE) and not frame.filename.startswith(BACKENDS)
        ]
        shown = [
            f"{os.path.relpath(f.filename, PACKAGE)[:-3]}.{f.name}:{f.lineno}"
            for f in frames[-self.depth :]
        ]
        # A call from a task of its own (segments.delete_keys, Backend.get_many) shows
        # no caller: anyio tasks do not keep the stack of the code that started them.
        return " < ".join(reversed(shown)) or "(a task: segments.delete_keys)"


def _shown_key(op: str, args: tuple[Any, ...]) -> str:
    if not args:
        return ""
    if op == "get_many":
        keys = list(args[0])
        return f"{len(keys)} keys: " + ", ".join(_short(k) for k in keys[:3])
    return _short(str(args[0]))


def _short(key: str) -> str:
    parts = key.split("/")
    if parts[0] == "runs" and len(parts) > 2:
        return "runs/{run}/" + "/".join(parts[2:])
    if parts[0] == "schedule":
        return "schedule/.../" + parts[-1].split("-")[0] + "-..."
    if parts[0] == "leases":
        return "leases/{run}"
    return key


async def one_run(backend: Backend, depth: int, warm: int, remote: bool) -> Recorder:
    recorder = Recorder(backend, depth)
    # remote: started through another conductor (no agent), as from another process
    starter = Conductor(backend) if remote else None
    async with Conductor(backend) as conductor:
        conductor.register(ten)
        client = starter or conductor
        client.register(ten, replace=True)
        for _ in range(warm):
            await (await client.start(ten)).result()
        await asyncio.sleep(0.05)  # let the last warm-up's wake-up release its lease
        before = Counter(backend.requests)
        recorder.on = True
        handle = await client.start(ten)
        assert await handle.result() == 45
        # The run's wake-up may still be finishing (deletes, release) after result().
        for _ in range(5000):
            if not conductor._processor.active:
                break
            await asyncio.sleep(0.001)
        recorder.on = False
        counted = Counter(backend.requests)
        counted.subtract(before)
    recorder.total = +counted
    return recorder


def _backend(kind: str) -> Backend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "files":
        return FSBackend(tempfile.mkdtemp(prefix="run-requests-"))
    return from_url(kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", nargs="?", default="files")
    parser.add_argument("--stack", type=int, default=3, help="frames of code site shown")
    parser.add_argument("--warm", type=int, default=3, help="warm-up runs before")
    parser.add_argument(
        "--remote", action="store_true", help="start from a conductor with no agent"
    )
    args = parser.parse_args(argv)
    backend = _backend(args.backend)
    recorder = asyncio.run(one_run(backend, args.stack, args.warm, args.remote))
    total = recorder.total
    print("| # | op | key | requests | code site (innermost first) |")
    print("| --- | --- | --- | --- | --- |")
    for index, (op, key, count, where) in enumerate(recorder.calls, 1):
        print(f"| {index} | {op} | `{key}` | {count} | {where} |")
    print()
    by_op = ", ".join(f"{op} {n}" for op, n in sorted(total.items()))
    print(f"total {sum(total.values())} requests ({by_op}); {len(recorder.calls)} calls")
    return 0


if __name__ == "__main__":
    sys.exit(main())
