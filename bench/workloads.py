"""
The workflows the bench runs, and a helper that copies a run's stored records under new
run ids (so a 10,000-event log is produced by the library once, not once per repeat).
"""

from __future__ import annotations

from datetime import timedelta

import anyio

from substantial import Context, workflow
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb


def one() -> int:
    """A trivial step: a plain function, so it runs the way ``c.save(fn)`` usually does."""
    return 1


@workflow(name="bench.steps")
async def steps(c: Context, n: int) -> int:
    """``n`` trivial steps, one after another."""
    total = 0
    for _ in range(n):
        total += await c.save(one)
    return total


@workflow(name="bench.steps_then_receive")
async def steps_then_receive(c: Context, n: int) -> int:
    """``n`` trivial steps, then wait for the event ``go``: a log of ``n`` + 1 events."""
    total = 0
    for _ in range(n):
        total += await c.save(one)
    return total + int(await c.receive("go"))


@workflow(name="bench.sleeper")
async def sleeper(c: Context) -> None:
    """Sleeps for a day: what a sleeping run looks like in storage."""
    await c.sleep(timedelta(days=1))


@workflow(name="ten")
async def ten(c: Context) -> int:
    """Ten steps, each returning its position: 45 in all (the request and fsync counts)."""
    total = 0
    for i in range(10):
        total += await c.save(lambda i=i: i)
    return total


WORKFLOWS = (steps, steps_then_receive, sleeper)


def _rename(key: str, data: bytes, old: str, new: str) -> tuple[str, bytes]:
    """One record of run ``old`` as it would be stored for run ``new``."""
    if key.endswith("/meta"):
        meta = pb.RunMeta.FromString(data)
        meta.run_id = new
        data = meta.SerializeToString()
    elif "/log/" in key or "/snapshot/" in key:
        segment = pb.Segment.FromString(data)
        segment.run_id = new
        for event in segment.events:
            if event.WhichOneof("kind") == "started":
                event.started.run_id = new
        data = segment.SerializeToString()
    return key.replace(old, new), data


async def snapshot(backend: Backend, run_id: str) -> list[tuple[str, bytes]]:
    """Every stored record of one run (its ``runs/`` keys and schedule entries)."""
    keys = await backend.list_all(f"runs/{run_id}/")
    keys += [key for key in await backend.list_all("schedule/") if f"-{run_id}~" in key]
    entries = await backend.get_many(keys)
    return [(key, entry[0]) for key, entry in zip(keys, entries, strict=True) if entry]


async def clone(
    backend: Backend, records: list[tuple[str, bytes]], old: str, news: list[str], width: int = 64
) -> None:
    """Write ``records`` of run ``old`` once for each new run id, ``width`` writes at once."""
    limiter = anyio.CapacityLimiter(width)

    async def write(key: str, data: bytes) -> None:
        async with limiter:
            await backend.create(key, data)

    async with anyio.create_task_group() as tg:
        for new in news:
            for key, data in records:
                tg.start_soon(write, *_rename(key, data, old, new))
