"""
An agent process for the multi-process tests (chaos, fencing, clocks, shutdown).

    python -m tests.chaos_app BACKEND_URL

Environment:

* ``CHAOS_EFFECTS``: folder where every step execution appends one line to
  ``{run_id}`` with ``os.open(O_APPEND)``, so the record survives ``kill -9``
* ``CHAOS_LEASE`` (seconds, default 1.5), ``CHAOS_CONCURRENCY`` (default 16),
  ``CHAOS_POLL`` (seconds, default 0.2), ``CHAOS_GRACE`` (seconds, default 5)
* ``CHAOS_CLOCK_OFFSET_MS``: shift this agent's wall clock (a test of clock skew; the
  library has no hook for it, this app rebinds ``now_ms`` where it was imported)
* ``CHAOS_BLOB_THRESHOLD``, ``CHAOS_ZLIB``: store payloads over that many bytes as
  blobs, and compress them (a test of payloads at rest under kill -9)
* ``CHAOS_STEP_SECONDS``: upper bound of a random pause inside each step, which widens
  the window in which a kill lands mid-step (default 0.05)

SIGTERM and SIGINT cancel the agent: in-flight steps get the grace period, leases are
released, and the process exits 0. It prints ``ready`` on stdout once it serves.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import substantial._client.handle
import substantial._conductor
import substantial._store.runs
from substantial import Conductor, Context, StepFailed, ZlibCodec, workflow

_offset = int(os.environ.get("CHAOS_CLOCK_OFFSET_MS", "0"))
if _offset:
    _real_now_ms = substantial._store.runs.now_ms

    def _skewed_now_ms() -> int:
        return _real_now_ms() + _offset

    for _module in (substantial._store.runs, substantial._conductor, substantial._client.handle):
        _module.now_ms = _skewed_now_ms  # type: ignore[attr-defined]

EFFECTS = Path(os.environ.get("CHAOS_EFFECTS", "./chaos-effects"))
STEP_SECONDS = float(os.environ.get("CHAOS_STEP_SECONDS", "0.05"))


def effect(run_id: str, label: str, value: int) -> int:
    """A step's side effect: one line per execution, durable across kill -9."""
    fd = os.open(EFFECTS / run_id, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{label} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if STEP_SECONDS:
        time.sleep(random.uniform(0, STEP_SECONDS))
    return value * 10


@workflow(name="chaos.mix")
async def mix(c: Context, handled: int) -> dict[str, object]:
    """save, sleep, receive, handle and ensure, with a side effect per step."""
    seen: list[int] = []
    c.handle("h", seen.append)
    a = await c.save(lambda: effect(c.run_id, "a", 1))
    await c.sleep(0.3)
    x = await c.receive("x")
    b = await c.save(lambda: effect(c.run_id, "b", x))
    await c.ensure(lambda: len(seen) >= handled)
    total = sum(seen)
    d = await c.save(lambda: effect(c.run_id, "d", total))
    return {"a": a, "x": x, "b": b, "h": sorted(seen), "d": d}


@workflow(name="chaos.steps")
async def steps(c: Context, count: int) -> list[int]:
    """A chain of steps with a short sleep in the middle."""
    results = []
    for i in range(count):
        results.append(await c.save(lambda i=i: effect(c.run_id, f"s{i}", i)))  # type: ignore[misc]
        if i == count // 2:
            await c.sleep(0.2)
    return results


@workflow(name="chaos.gate")
async def gate(c: Context) -> int:
    """One step that waits until the file ``{EFFECTS}/open`` exists (fencing test)."""

    def blocked() -> int:
        effect(c.run_id, "enter", 0)
        while not (EFFECTS / "open").exists():
            time.sleep(0.01)
        return 7

    return await c.save(blocked)


# ---- the newer primitives, for tests/test_chaos_features.py ----


def _saga_do(run_id: str, i: int) -> Callable[[], int]:
    def saga_do() -> int:
        value = effect(run_id, f"do{i}", i)
        if i == 2:
            raise ValueError(f"step {i} refused")
        return value

    return saga_do


def _saga_undo(run_id: str, i: int) -> Callable[[], int]:
    def saga_undo() -> int:
        return effect(run_id, f"undo{i}", i)

    return saga_undo


@workflow(name="chaos.saga")
async def saga(c: Context) -> list[int]:
    """Three compensated steps; the third fails (no retry), so the run reverts."""
    done = []
    try:
        for i in range(3):
            done.append(
                await c.save(_saga_do(c.run_id, i), compensate_with=_saga_undo(c.run_id, i))
            )
    except StepFailed:
        await c.revert()
    return done


@workflow(name="chaos.fan_child")
async def fan_child(c: Context, value: int) -> int:
    return await c.save(lambda: effect(c.run_id, "child", value))


@workflow(name="chaos.fan_out")
async def fan_out(c: Context, base: int, width: int) -> int:
    """Children base..base+width-1 at once; the sum of their results."""
    results = await asyncio.gather(*(c.child(fan_child, base + i) for i in range(width)))
    return sum(results)


@workflow(name="chaos.chain")
async def chain(c: Context, link: int, links: int, total: int) -> int:
    """One step per link, then continue as the next link; the last returns the total."""
    total += await c.save(lambda: effect(c.run_id, f"link{link}", link + 1))
    if link + 1 < links:
        await c.continue_using(chain, link + 1, links, total)
    return total


@workflow(name="chaos.counter")
async def counter(c: Context) -> dict[str, int]:
    """Adds every ``msg`` event to its state until a ``None``, compacting as it goes."""
    state = {"total": 0, "seen": 0}
    while True:
        msg = await c.receive("msg", key="msg")
        if msg is None:
            return state

        def add(state: dict[str, int] = state, msg: int = msg) -> dict[str, int]:
            effect(c.run_id, "add", 0)
            return {"total": state["total"] + msg, "seen": state["seen"] + 1}

        state = await c.save(add, key="state")
        c.compact()


def payload_options() -> dict[str, Any]:
    """``CHAOS_BLOB_THRESHOLD`` (bytes) and ``CHAOS_ZLIB`` (any value): payloads at rest."""
    options: dict[str, Any] = {}
    if "CHAOS_BLOB_THRESHOLD" in os.environ:
        options["blob_threshold"] = int(os.environ["CHAOS_BLOB_THRESHOLD"])
    if os.environ.get("CHAOS_ZLIB"):
        options["codecs"] = [ZlibCodec()]
    return options


def build(url: str) -> Conductor:
    conductor = Conductor(
        url,
        lease=float(os.environ.get("CHAOS_LEASE", "1.5")),
        concurrency=int(os.environ.get("CHAOS_CONCURRENCY", "16")),
        poll_interval=float(os.environ.get("CHAOS_POLL", "0.2")),
        shutdown_grace=float(os.environ.get("CHAOS_GRACE", "5")),
        **payload_options(),
    )
    conductor.register(mix, steps, gate, saga, fan_child, fan_out, chain, counter)
    return conductor


if __name__ == "__main__":
    from agent_process import run_agent  # a sibling: this file runs as a script

    run_agent(build)
