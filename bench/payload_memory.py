"""Peak memory of one large payload, start -> step -> result, on FSBackend (issue #10).

    PYTHONPATH=. .venv/bin/python bench/payload_memory.py [MB]

Each case runs in a fresh process: ``peak`` is the process's peak RSS minus its RSS just
before the value was built, so it counts the value itself, every copy the library makes
and whatever the allocator keeps. ``x`` is that peak over the payload's encoded size.

- ``args``: the value is the workflow's argument (encoded by start, decoded by replay)
- ``step``: a step makes the value (encoded as the step's result, decoded on replay)
- ``result``: the workflow returns the value (encoded by the agent, decoded by result())
"""

from __future__ import annotations

import asyncio
import inspect
import json
import resource
import subprocess
import sys
import tempfile
from typing import Any

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend
from substantial.codec import encode_payload

SHAPES = ("str", "list", "dict")
WHERE = ("args", "step", "result")


def make(shape: str, mb: int) -> Any:
    size = mb * 1_000_000
    if shape == "str":
        return "x" * size
    if shape == "list":
        return ["y" * 90 for _ in range(size // 93)]  # 93 bytes per item, encoded
    return {f"k{i:09d}": "z" * 80 for i in range(size // 96)}


@workflow(name="bench.args")
async def takes(c: Context, value: Any) -> int:
    await c.save(lambda: 1)
    return len(value)


@workflow(name="bench.step")
async def steps(c: Context, shape: str, mb: int) -> int:
    value = await c.save(lambda: make(shape, mb))
    return len(value)


@workflow(name="bench.result")
async def returns(c: Context, shape: str, mb: int) -> Any:
    await c.save(lambda: 1)
    return make(shape, mb)


def rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


async def one(where: str, shape: str, mb: int) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "max_payload" in inspect.signature(Conductor).parameters:
        options["max_payload"] = 4 * mb * 1_000_000
    size = len(encode_payload(make(shape, 1)).data) * mb  # measured on 1 MB: no big copy here
    before = rss_kb()
    async with Conductor(FSBackend(tempfile.mkdtemp()), **options) as conductor:
        conductor.register(takes, steps, returns)
        if where == "args":
            handle = await conductor.start(takes, make(shape, mb))
        elif where == "step":
            handle = await conductor.start(steps, shape, mb)
        else:
            handle = await conductor.start(returns, shape, mb)
        result = await handle.result()
        assert result is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return {"where": where, "shape": shape, "mb": round(size / 1e6, 1), "peak_mb": peak / 1000}


def main() -> None:
    if len(sys.argv) > 2:  # a child: one case
        print(json.dumps(asyncio.run(one(sys.argv[1], sys.argv[2], int(sys.argv[3])))))
        return
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    print(f"{'case':<14}{'payload MB':>11}{'peak MB':>9}{'x':>6}")
    for where in WHERE:
        for shape in SHAPES:
            out = subprocess.run(
                [sys.executable, __file__, where, shape, str(mb)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout)
            ratio = r["peak_mb"] / r["mb"]
            print(f"{where + '/' + shape:<14}{r['mb']:>11.1f}{r['peak_mb']:>9.0f}{ratio:>6.1f}")


if __name__ == "__main__":
    main()
