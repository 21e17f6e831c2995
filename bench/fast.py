"""
The rows of issue 13 ("the fast path") that need more than a counter added to an older
row: one schedule poll with many sleeping runs (entries written straight through the
store), and S3 at a real object store's latency (moto behind a proxy that delays every
request). The counters added to older rows (CPU per step, requests and fsyncs per run,
ratios to the floor) live in :mod:`bench.measure`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import anyio

from bench.latency_proxy import LatencyProxy
from bench.measure import (
    Bench,
    Result,
    _floor_op,
    _median,
    _percentile,
    _readline,
    _requests,
    _setup_backend,
    agent,
    ms,
    poll_kwargs,
    rate,
)
from bench.workloads import steps
from substantial._core.clock import now_ms
from substantial._store.keys import Route, log_prefix, schedule_key
from substantial._store.runs import RunStore
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb

#: What each figure of issue 13 should reach (shown under the table).
GOALS = {
    "CPU/step": "issue 13: <= 0.12 ms on memory (0.57 ms on main)",
    "requests/run": "issue 13: <= 20 in all on files, of which the fixed part <= 8 (26.4 on main)",
    "fsync/run": "issue 13: <= 14 on files, one per step and a few per run (34 on main)",
    "throughput 50": "issue 13: x>= 0.04 of floor on redis (x0.012 on main: 70 runs/s at 5,900/s)",
    "resume 10,000": "issue 13: <= 60 ms on files (157 ms on main)",
    "poll": "issue 13: flat, <= 1 ms whatever the number sleeping (files on main: 17/174/367 ms)",
    "s3+30ms latency": "issue 13: <= 15 x 30 ms = 450 ms (at most 15 sequential round trips)",
    "s3+30ms throughput": "issue 13: >= 20 runs/s, by keeping many requests in flight",
}


def goal_of(row: str) -> str:
    """The goal of issue 13 that a row shows, if any."""
    for prefix, text in GOALS.items():
        if row == prefix or row.startswith(prefix + " "):
            return text
    return ""


# ---- counters used by bench.measure -----------------------------------------------------


class SyncCounter:
    """How many times ``os.fsync`` / ``os.fdatasync`` were called (any thread)."""

    def __init__(self) -> None:
        self.calls = 0


@contextmanager
def counting_syncs() -> Iterator[SyncCounter]:
    """
    Count the fsync and fdatasync calls of this process while the block runs, by
    wrapping the ``os`` functions (the library calls them as ``os.fsync(fd)``).
    """
    counter = SyncCounter()
    saved = {name: getattr(os, name) for name in ("fsync", "fdatasync") if hasattr(os, name)}

    def wrap(real: Callable[[Any], None]) -> Callable[[Any], None]:
        def counted(fd: Any) -> None:
            counter.calls += 1  # += under the GIL is racy only across threads: close enough
            real(fd)

        return counted

    for name, real in saved.items():
        setattr(os, name, wrap(real))
    try:
        yield counter
    finally:
        for name, real in saved.items():
            setattr(os, name, real)


async def step_commits(backend: Backend, run_ids: Sequence[str]) -> int:
    """
    The step part of a run's requests: its log segments at positions > 0 (each one a
    create of its own: the steps' commits and the result's). Everything else a run
    asks of the storage (its start segment, claim, reads, summary, schedule entries,
    lease, release, polls while it runs) is the fixed part.
    """
    total = 0
    for run_id in run_ids:
        for key in await backend.list_all(log_prefix(run_id)):
            tail = key.rpartition("/")[2]
            if not tail.isdigit() or int(tail) > 0:
                total += 1
    return total


# ---- poll -------------------------------------------------------------------------------


async def _write_sleepers(backend: Backend, first: int, last: int, width: int = 64) -> None:
    """
    Schedule entries of sleeping runs ``first``..``last - 1``, due in an hour or more,
    without the runs themselves (a poll reads only the index): each created with the
    backend under the key the library builds (:func:`schedule_key`, as
    :meth:`RunStore.schedule` does), holding an empty ``ScheduleEntry``. Empty, so that
    no file owns a data block: deleting 300k files that do takes minutes on a disk
    mounted with ``discard``.
    """
    route = Route.of("", "bench.sleeper")
    base = now_ms() + 3_600_000
    numbers = iter(range(first, last))
    data = pb.ScheduleEntry().SerializeToString()

    async def worker() -> None:
        for i in numbers:
            await backend.create(schedule_key(base + 50 * i, f"sleeping-{i}", "t", route), data)

    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)


async def _time_polls(store: RunStore, repeats: int) -> tuple[float, int]:
    """Median time of one idle poll (the first page the agent reads), and its requests."""
    kwargs = poll_kwargs(store)
    await store.due(now_ms(), **kwargs)  # warm-up (caches, first listing)
    before = _requests(store.backend)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        entries, _, _ = await store.due(now_ms(), **kwargs)
        times.append(time.perf_counter() - start)
        assert not entries, "a sleeping run's entry is due"
    return _median(times), (_requests(store.backend) - before) // repeats


async def poll(ctx: Bench) -> list[Result]:
    """
    One idle schedule poll (``RunStore.due``, as the agent calls it) with N sleeping
    runs; N grows in one namespace (10k, then 90k more, ...).
    """
    kind = ctx.target.kind
    counts = ctx.scale.poll_sleeping[kind]
    spec, backend = await ctx.target.fresh()
    setup = await _setup_backend(spec, backend)
    store = RunStore(backend)
    floor = ctx.floors.get(kind)
    results, written = [], 0
    try:
        for count in counts:
            started = time.perf_counter()
            await _write_sleepers(setup, written, count)
            written = count
            ctx.log(
                f"  {kind:6} ({count:,} schedule entries in {time.perf_counter() - started:.1f} s)"
            )
            value, requests = await _time_polls(store, 7)
            shown = f"{ms(value)} ms, {requests} req"
            values: dict[str, Any] = {"poll_s": value, "sleeping": count, "requests": requests}
            if floor:
                values["floor_creates"] = value * floor
                shown += f", = {value * floor:.3g} floor creates"
            note = "median of 7 polls; schedule entries only (keys.schedule_key), no runs"
            results.append(Result(f"poll {count:,} sleeping", kind, values, shown, note))
    finally:
        if setup is not backend:
            await setup.aclose()
        await backend.aclose()
    labels = ctx.scale.poll_sleeping["files"]
    if kind == "s3":  # scaled down for moto: shown on the rows of the other backends
        for result, label in zip(results, labels, strict=False):
            result.note += "; scaled down for moto"
            result.cell += f" [{result.values['sleeping']:,} runs]"
            result.row = f"poll {label:,} sleeping"
    return results


# ---- S3 at 30 ms a request --------------------------------------------------------------


class TimedProxy(LatencyProxy):
    """
    The latency proxy, remembering when each request was in it (to count rounds), and
    closing the connections it still serves when it stops (their handlers would
    otherwise be destroyed pending with the proxy's loop).
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        super().__init__(upstream_port, delay)
        self.spans: list[tuple[float, float]] = []
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await super()._serve(reader, writer)
        finally:
            self._handlers.pop(task, None)

    async def _close_connections(self) -> None:
        """Close each connection: its handler sees the end of it and returns."""
        handlers = dict(self._handlers)
        for writer in handlers.values():
            writer.close()
        if handlers:
            await asyncio.wait(handlers, timeout=5)

    def stop(self) -> None:
        if (loop := self._loop) is not None and self._thread is not None:
            asyncio.run_coroutine_threadsafe(self._close_connections(), loop).result(timeout=10)
        super().stop()

    async def _forward(self, *args: Any) -> bytes:
        start = time.perf_counter() - self.delay
        try:
            return await super()._forward(*args)
        finally:
            self.spans.append((start, time.perf_counter()))


def rounds(spans: list[tuple[float, float]], start: float, end: float) -> int:
    """
    Sequential round trips in a window: the longest chain of requests each of which
    started after the one before it ended. The run's critical path is such a chain, so
    it is at most this (and a background poll can lengthen it by one now and then).
    """
    count, reach = 0, float("-inf")
    for begin, finish in sorted((s for s in spans if start <= s[0] and s[1] <= end), key=_end):
        if begin >= reach:
            count, reach = count + 1, finish
    return count


def _end(span: tuple[float, float]) -> float:
    return span[1]


async def proxy(ctx: Bench) -> list[Result]:
    """S3 through a loopback proxy adding ``delay`` to every request: floor, latency, 50x10."""
    s3 = ctx.target.s3
    assert s3 is not None
    scale = ctx.scale
    delay = scale.proxy_delay
    tag = f"s3+{delay * 1000:.0f}ms"
    with TimedProxy(s3.port, delay) as server:
        spec, direct = await ctx.target.fresh()
        await direct.aclose()
        spec = replace(spec, endpoint_url=server.endpoint_url)
        results = [await _proxy_floor(ctx, spec, tag)]
        floor = results[0].values["creates_per_s"]
        results.append(await _proxy_latency(ctx, spec, server, tag, floor))
    async with _proxy_process(s3.port, delay) as port:
        spec = replace(spec, endpoint_url=f"http://127.0.0.1:{port}")
        results.append(await _proxy_throughput(ctx, spec, port, tag, floor))
    for result in results:
        result.note = f"moto behind a proxy adding {delay * 1000:.0f} ms to each request" + (
            f"; {result.note}" if result.note else ""
        )
    return results


async def _proxy_floor(ctx: Bench, spec: Any, tag: str) -> Result:
    backend = spec.open()
    op, close, how = await _floor_op(ctx.target, spec, backend)
    n = ctx.scale.proxy_floor_ops
    try:
        await op("warm")
        start = time.perf_counter()
        for i in range(n):
            await op(f"floor/{i:06d}")
        value = n / (time.perf_counter() - start)
    finally:
        await close()
        await backend.aclose()
    values = {"creates_per_s": value, "ops": n}
    return Result(f"{tag} floor", "s3", values, f"{rate(value)} creates/s", how)


async def _proxy_latency(
    ctx: Bench, spec: Any, server: TimedProxy, tag: str, floor: float
) -> Result:
    runs = ctx.scale.proxy_latency_runs
    backend = spec.open()
    samples, trips, ids = [], [], []
    async with agent(backend) as conductor:
        await (await conductor.start(steps, 10)).result()  # warm-up
        requests, proxied = _requests(backend), server.requests
        for _ in range(runs):
            start = time.perf_counter()
            handle = await conductor.start(steps, 10)
            await handle.result()
            end = time.perf_counter()
            samples.append(end - start)
            trips.append(rounds(server.spans, start, end))
            ids.append(handle.run_id)
        per_run = (_requests(backend) - requests) / runs
        proxied_per_run = (server.requests - proxied) / runs
        step_part = await step_commits(backend, ids) / runs
    p50 = _percentile(samples, 50)
    trip = _median([float(t) for t in trips])
    values = {
        "p50_s": p50,
        "p99_s": _percentile(samples, 99),
        "runs": runs,
        "requests_per_run": per_run,
        "proxied_per_run": proxied_per_run,
        "step_requests_per_run": step_part,
        "sequential_round_trips": trip,
        "ratio_to_floor_create": p50 * floor,
    }
    shown = (
        f"p50 {ms(p50)} ms = {p50 * floor:.3g} floor creates, {trip:.0f} sequential "
        f"round trips, {per_run:.1f} req/run ({step_part:.1f} step + "
        f"{per_run - step_part:.1f} fixed)"
    )
    note = (
        f"{runs} runs one at a time; sequential round trips: the longest chain of requests "
        "one after another (none overlapping) during a run"
    )
    return Result(f"{tag} latency", "s3", values, shown, note)


@asynccontextmanager
async def _proxy_process(upstream: int, delay: float) -> AsyncIterator[int]:
    """The latency proxy as a process of its own (its CPU off this process's GIL)."""
    command = [sys.executable, "-m", "bench.latency_proxy", str(upstream), "--delay", str(delay)]
    process = await anyio.open_process(command, stderr=None)
    try:
        with anyio.fail_after(30):
            port = int(await _readline(process))
        yield port
    finally:  # a signal, not the end of stdin: its stop() would warn of open connections
        process.terminate()
        await process.wait()


async def _proxy_throughput(ctx: Bench, spec: Any, port: int, tag: str, floor: float) -> Result:
    runs = ctx.scale.proxy_throughput_runs
    backend = spec.open()
    async with agent(backend) as conductor:

        async def one() -> None:
            await (await conductor.start(steps, 10)).result()

        async def batch() -> float:
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(runs):
                    tg.start_soon(one)
            return runs / (time.perf_counter() - start)

        await batch()  # warm-up: the pool's connections through the proxy, as other rows
        before = await anyio.to_thread.run_sync(LatencyProxy.stats, port)
        value = await batch()
    counts = await anyio.to_thread.run_sync(LatencyProxy.stats, port)
    counts["requests"] -= before["requests"]
    values = {
        "runs_per_s": value,
        "runs": runs,
        "ratio_to_floor": value / floor,
        "max_in_flight": counts["max_in_flight"],
        "proxied_per_run": counts["requests"] / runs,
    }
    shown = (
        f"{rate(value)} runs/s, x{value / floor:.2g} of floor, "
        f"{counts['max_in_flight']} requests in flight at most"
    )
    if runs != 50:
        shown += f" [{runs} runs]"
    note = (
        f"{runs} runs of 10 steps started at once, after a warm-up batch; "
        "the proxy in a process of its own"
    )
    return Result(f"{tag} throughput 50", "s3", values, shown, note)
