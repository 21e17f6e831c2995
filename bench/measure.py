"""
The measurements: one coroutine per row, each on one backend, each returning a
:class:`Result` with its raw numbers and the text of its table cell.

Every row excludes a warm-up, reports the median over its repeats, and counts backend
requests through ``Backend.requests`` (what the library really asked of the storage).
"""

from __future__ import annotations

import inspect
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import Process

from bench.scale import Scale
from bench.targets import Spec, Target
from bench.workloads import WORKFLOWS, clone, sleeper, snapshot, steps, steps_then_receive
from substantial import Conductor
from substantial._core.clock import now_ms
from substantial._core.status import RunStatus
from substantial._engine.replay import Execution
from substantial._store.runs import RunStore
from substantial.backends import Backend, MemoryBackend
from substantial.protocol import substantial_pb2 as pb

VALUE = bytes(range(200))  # the floor's 200-byte value


@dataclass
class Result:
    """One cell of the table: a row on one backend."""

    row: str
    backend: str
    values: dict[str, Any]
    cell: str
    note: str = ""


@dataclass
class Bench:
    """What every measurement gets: the target, its scale and the shared fixtures."""

    target: Target
    scale: Scale
    floors: dict[str, float] = field(default_factory=dict)
    #: process CPU seconds per floor create, measured with the floor
    floor_cpu: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = lambda _: None


# ---- helpers ----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


def _requests(backend: Backend) -> int:
    return sum(backend.requests.values())


def _writes(backend: Backend) -> int:
    r = backend.requests
    return r["create"] + r["put"] + r["replace"] + r["delete"]


def rate(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


@asynccontextmanager
async def agent(backend: Backend) -> AsyncIterator[Conductor]:
    """A conductor on ``backend`` with its agent running in this process."""
    conductor = Conductor(backend)
    conductor.register(*WORKFLOWS)
    try:
        async with conductor:
            yield conductor
    finally:
        await backend.aclose()


async def _setup_backend(spec: Spec, backend: Backend) -> Backend:
    """Where fixtures are written: the same storage, without fsync on files."""
    return backend if spec.kind in ("memory",) else spec.open(setup=True)


# ---- floor ------------------------------------------------------------------------------


async def floor(ctx: Bench) -> Result:
    """Raw create-if-absent rate of a 200-byte value, from the same client library."""
    kind = ctx.target.kind
    n = ctx.scale.floor_ops[kind]
    warm = max(20, n // 20)
    spec, backend = await ctx.target.fresh()
    op, close, how = await _floor_op(ctx.target, spec, backend)
    rates, cpus = [], []
    try:
        for i in range(warm):
            await op(f"warm/{i}")
        for repeat in range(ctx.scale.repeats):
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(n):
                await op(f"r{repeat}/{i:08d}")
            rates.append(n / (time.perf_counter() - start))
            cpus.append((time.process_time() - cpu) / n)
    finally:
        await close()
        await backend.aclose()
    value = _median(rates)
    ctx.floors[kind] = value
    ctx.floor_cpu[kind] = _median(cpus)
    return Result(
        "floor", kind,
        {"creates_per_s": value, "cpu_per_create_s": ctx.floor_cpu[kind], "ops": n,
         "repeats": len(rates)},
        f"{rate(value)} creates/s, {ms(ctx.floor_cpu[kind])} ms CPU each", how,
    )  # fmt: skip


async def _floor_op(
    target: Target, spec: Spec, backend: Backend
) -> tuple[Callable[[str], Awaitable[Any]], Callable[[], Awaitable[None]], str]:
    async def nothing() -> None:
        pass

    if target.kind == "memory":
        return (lambda key: backend.create(key, VALUE)), nothing, "MemoryBackend.create"
    if target.kind == "files":
        root = spec.root
        os.makedirs(f"{root}/.tmp", exist_ok=True)
        os.makedirs(f"{root}/floor", exist_ok=True)

        def create(key: str) -> None:
            temp = f"{root}/.tmp/{key.replace('/', '_')}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                os.write(fd, VALUE)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temp, f"{root}/floor/{key.replace('/', '_')}")
            finally:
                os.unlink(temp)

        async def op(key: str) -> None:
            await anyio.to_thread.run_sync(create, key)

        return op, nothing, "write temp + fsync + link, one thread call (no dir fsync)"
    if target.kind == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(spec.url)

        async def set_nx(key: str) -> Any:
            return await client.set(f"{spec.prefix}:{key}", VALUE, nx=True)

        return set_nx, client.aclose, "SET NX, redis.asyncio, one at a time"
    import aioboto3

    assert target.s3 is not None
    stack = aioboto3.Session().client("s3", endpoint_url=spec.endpoint_url, region_name="us-east-1")
    client = await stack.__aenter__()

    async def put(key: str) -> Any:
        return await client.put_object(Bucket=spec.bucket, Key=key, Body=VALUE, IfNoneMatch="*")

    async def close() -> None:
        await stack.__aexit__(None, None, None)

    return put, close, "put_object IfNoneMatch='*', aioboto3, one at a time"


# ---- step -------------------------------------------------------------------------------


async def step(ctx: Bench) -> list[Result]:
    """
    Save-steps per second of one run of ``n`` sequential trivial steps, and the process
    CPU it took per step (the library's and the client library's, not the server's).
    """
    kind = ctx.target.kind
    n = ctx.scale.step_n[kind]
    _, backend = await ctx.target.fresh()
    rates, per_step, writes_per_step, cpus = [], [], [], []
    async with agent(backend) as conductor:
        await (await conductor.start(steps, 20)).result()  # warm-up
        for _ in range(ctx.scale.repeats):
            requests, writes = _requests(backend), _writes(backend)
            start, cpu = time.perf_counter(), time.process_time()
            await (await conductor.start(steps, n)).result()
            rates.append(n / (time.perf_counter() - start))
            cpus.append((time.process_time() - cpu) / n)
            per_step.append((_requests(backend) - requests) / n)
            writes_per_step.append((_writes(backend) - writes) / n)
    value = _median(rates)
    ratio = value / ctx.floors[kind] if kind in ctx.floors else float("nan")
    reqs = _median(per_step)
    note = f"{n:,} steps" + (" (scaled down for moto)" if kind == "s3" else "")
    cpu = _median(cpus)
    cpu_ratio = cpu / ctx.floor_cpu[kind] if ctx.floor_cpu.get(kind) else float("nan")
    return [
        Result(
            "step", kind,
            {"steps_per_s": value, "ratio_to_floor": ratio, "requests_per_step": reqs,
             "writes_per_step": _median(writes_per_step), "steps": n, "repeats": len(rates)},
            f"{rate(value)}/s, x{ratio:.2f} of floor, {reqs:.2f} req/step", note,
        ),
        Result(
            "CPU/step", kind,
            {"cpu_per_step_s": cpu, "ratio_to_floor_cpu": cpu_ratio, "steps": n},
            f"{ms(cpu)} ms, x{cpu_ratio:.3g} of floor CPU/create",
            f"time.process_time() / steps over the step row's runs ({n:,} steps each)",
        ),
    ]  # fmt: skip


# ---- latency ----------------------------------------------------------------------------


async def latency(ctx: Bench) -> list[Result]:
    """
    start -> result of a 10-step workflow, one run at a time, in-process agent; with
    the requests per run (split into the step commits and the fixed part, see
    :func:`bench.fast.step_commits`) and, on files, the fsync calls per run.
    """
    from bench.fast import counting_syncs, step_commits

    kind = ctx.target.kind
    runs = ctx.scale.latency_runs[kind]
    _, backend = await ctx.target.fresh()
    samples, ids = [], []
    async with agent(backend) as conductor:
        for _ in range(max(3, runs // 20)):  # warm-up
            await (await conductor.start(steps, 10)).result()
        requests = _requests(backend)
        with counting_syncs() as syncs:
            for _ in range(runs):
                start = time.perf_counter()
                handle = await conductor.start(steps, 10)
                await handle.result()
                samples.append(time.perf_counter() - start)
                ids.append(handle.run_id)
        per_run = (_requests(backend) - requests) / runs
        step_part = await step_commits(backend, ids) / runs
    p50, p99 = _percentile(samples, 50), _percentile(samples, 99)
    note = f"{runs} runs" + (" (scaled down for moto)" if kind == "s3" else "")
    fixed = per_run - step_part
    results = [
        Result(
            "latency", kind,
            {"p50_s": p50, "p99_s": p99, "runs": runs, "requests_per_run": per_run},
            f"p50 {ms(p50)} ms, p99 {ms(p99)} ms, {per_run:.0f} req/run", note,
        ),
        Result(
            "requests/run", kind,
            {"requests_per_run": per_run, "step_part": step_part, "fixed_part": fixed,
             "ratio_to_floor": per_run / 10, "runs": runs},
            f"{per_run:.1f} = {step_part:.1f} step + {fixed:.1f} fixed, x{per_run / 10:.2f} "
            "of floor",
            "10-step runs one at a time; step part = log segments at positions > 0; "
            "floor = 10 creates, one per step",
        ),
    ]  # fmt: skip
    if kind == "files":
        per = syncs.calls / runs
        results.append(
            Result(
                "fsync/run", kind, {"fsyncs_per_run": per, "ratio_to_floor": per / 10,
                                    "runs": runs},
                f"{per:.1f}, x{per / 10:.2f} of floor",
                "os.fsync + os.fdatasync calls in the bench process during the latency "
                "row's runs; floor = 10, one per step",
            )
        )  # fmt: skip
    return results


# ---- throughput -------------------------------------------------------------------------


async def throughput(ctx: Bench, runs: int, repeats: int) -> Result:
    """``runs`` runs of 10 steps started at once; one in-process agent."""
    kind = ctx.target.kind
    _, backend = await ctx.target.fresh()
    rates = []

    async with agent(backend) as conductor:

        async def one() -> None:
            await (await conductor.start(steps, 10)).result()

        async def batch(count: int) -> float:
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(one)
            return time.perf_counter() - start

        await batch(min(runs, 20))  # warm-up
        for _ in range(repeats):
            rates.append(runs / await batch(runs))
    value = _median(rates)
    note = "" if kind != "s3" else "scaled down for moto"
    label = runs if kind != "s3" else max(n for n, _ in ctx.scale.throughput["files"][:1])
    ratio = value / ctx.floors[kind] if kind in ctx.floors else float("nan")
    shown = f"{rate(value)} runs/s, {rate(10 * value)} steps/s, x{ratio:.2g} of floor"
    if label != runs:
        shown += f" [{runs} runs]"
    return Result(
        f"throughput {label}", kind,
        {"runs_per_s": value, "steps_per_s": 10 * value, "runs": runs, "repeats": repeats,
         "ratio_to_floor": ratio},
        shown, note,
    )  # fmt: skip


# ---- resume -----------------------------------------------------------------------------

_LOGS: dict[int, list[tuple[str, bytes]]] = {}
_SLEEPER: list[tuple[str, bytes]] = []


async def _wait_status(conductor: Conductor, run_id: str, status: RunStatus) -> None:
    handle = conductor.handle(run_id)
    with anyio.fail_after(600):
        while await handle.status() != status:  # noqa: ASYNC110 - polls storage, bounded
            await anyio.sleep(0.005)


async def _build_logs(sizes: list[int]) -> None:
    """Have the library write each log once, on a memory backend."""
    missing = [n for n in sizes if n not in _LOGS]
    if not missing and _SLEEPER:
        return
    backend = MemoryBackend()
    async with agent(backend) as conductor:
        for n in missing:
            await conductor.start(steps_then_receive, n, run_id=f"log-{n}")
            await _wait_status(conductor, f"log-{n}", RunStatus.WAITING)
            _LOGS[n] = await snapshot(backend, f"log-{n}")
        if not _SLEEPER:
            await conductor.start(sleeper, run_id="sleeper")
            await _wait_status(conductor, "sleeper", RunStatus.SLEEPING)
            _SLEEPER.extend(await snapshot(backend, "sleeper"))


async def resume(ctx: Bench) -> list[Result]:
    """
    Fresh wake-up of a run whose log holds ``n`` events (``n`` steps + its start): send
    the event it waits for and time until its result; separately time reading the log
    and ``Execution.replay`` on it.
    """
    kind = ctx.target.kind
    sizes = ctx.scale.resume_sizes[kind]
    await _build_logs(sizes)
    spec, backend = await ctx.target.fresh()
    setup = await _setup_backend(spec, backend)
    results = []
    async with agent(backend) as conductor:
        store = RunStore(backend)
        for n in sizes:
            repeats = ctx.scale.resume_repeats[kind]
            ids = [f"resume-{n}-{i}" for i in range(repeats + 1)]
            await clone(setup, _LOGS[n], f"log-{n}", ids)
            wakes, reads, replays = [], [], []
            for index, run_id in enumerate(ids):
                start = time.perf_counter()
                stored = await store.read_log(run_id)
                read = time.perf_counter() - start
                execution = Execution(run_id, steps_then_receive)
                start = time.perf_counter()
                execution.replay(stored.events)
                replayed = time.perf_counter() - start
                execution.close()
                handle = conductor.handle(run_id)
                start = time.perf_counter()
                await handle.send("go", 1)
                assert await handle.result() == n + 1
                wake = time.perf_counter() - start
                if index:  # the first is a warm-up
                    wakes.append(wake)
                    reads.append(read)
                    replays.append(replayed)
            events = len(stored.events)
            wake, read, replayed = _median(wakes), _median(reads), _median(replays)
            creates = wake * ctx.floors[kind] if kind in ctx.floors else float("nan")
            note = "send -> result; read = RunStore.read_log, replay = Execution.replay"
            if kind == "s3":
                note += "; sizes scaled down for moto"
            results.append(
                Result(
                    f"resume {n:,}",
                    kind,
                    {
                        "events": events,
                        "wake_s": wake,
                        "read_log_s": read,
                        "replay_s": replayed,
                        "repeats": len(wakes),
                        "floor_creates": creates,
                    },
                    f"{ms(wake)} ms (read {ms(read)} + replay {ms(replayed)})"
                    + (f", = {creates:.3g} floor creates" if creates == creates else ""),
                    note,
                )
            )
    if setup is not backend:
        await setup.aclose()
    return results


# ---- idle -------------------------------------------------------------------------------


def poll_kwargs(store: RunStore, limit: int | None = None) -> dict[str, Any]:
    """The arguments of ``RunStore.due`` for an agent's first page, as the agent reads it."""
    from substantial._core import constants

    kwargs: dict[str, Any] = {"limit": limit or getattr(constants, "POLL_FIRST_PAGE", 16)}
    if "horizon_ms" in inspect.signature(store.due).parameters:  # not on older libraries
        kwargs["horizon_ms"] = round(constants.POLL_MAX_SECONDS * 2000)
    return kwargs


async def idle(ctx: Bench) -> list[Result]:
    """Backend requests per second of one idle agent, with 0 and many sleeping runs."""
    kind = ctx.target.kind
    counts = ctx.scale.idle_sleeping[kind]
    await _build_logs([])
    backends = []
    for count in counts:
        spec, backend = await ctx.target.fresh()
        setup = await _setup_backend(spec, backend)
        await clone(setup, _SLEEPER, "sleeper", [f"sleeping-{i}" for i in range(count)])
        if setup is not backend:
            await setup.aclose()
        backends.append(backend)
    out: dict[int, tuple[float, float]] = {}

    async def watch(count: int, backend: Backend) -> None:
        async with agent(backend) as conductor:
            await anyio.sleep(ctx.scale.idle_warmup)
            before, start = _requests(backend), time.perf_counter()
            await anyio.sleep(ctx.scale.idle_window)
            per_s = (_requests(backend) - before) / (time.perf_counter() - start)
            polls = []
            for _ in range(10):  # what one poll costs, timed directly
                begin = time.perf_counter()
                await conductor.store.due(now_ms(), **poll_kwargs(conductor.store, 128))
                polls.append(time.perf_counter() - begin)
        out[count] = (per_s, _median(polls))

    async with anyio.create_task_group() as tg:
        for count, backend in zip(counts, backends, strict=True):
            tg.start_soon(watch, count, backend)
    results = []
    labels = ctx.scale.idle_sleeping["files"]
    for count, label in zip(counts, labels, strict=True):
        per_s, poll = out[count]
        note = f"window {ctx.scale.idle_window:g} s after {ctx.scale.idle_warmup:g} s warm-up"
        shown = f"{per_s:.2f} req/s, poll {ms(poll)} ms"
        if count != label:
            note += f"; {count:,} sleeping runs (scaled down for moto)"
            shown += f" [{count:,} runs]"
        results.append(
            Result(
                f"idle {label:,} sleeping",
                kind,
                {"requests_per_s": per_s, "poll_s": poll, "sleeping": count},
                shown,
                note,
            )
        )
    return results


# ---- scale-out --------------------------------------------------------------------------


async def scale_out(ctx: Bench) -> list[Result]:
    """Runs/s with 1, 2, 4 agent processes on one backend; runs started before the agents."""
    kind = ctx.target.kind
    runs = ctx.scale.scale_runs[kind]
    results = []
    for agents in ctx.scale.scale_agents:
        spec, backend = await ctx.target.fresh()
        conductor = Conductor(backend)
        conductor.register(*WORKFLOWS)
        limiter = anyio.CapacityLimiter(32)

        async with anyio.create_task_group() as tg:
            for index in range(runs):
                tg.start_soon(_start_scale_run, conductor, limiter, index)
        elapsed, requests = await _race(spec, backend, agents, kind)
        completed = await _count_completed(backend, runs)
        await backend.aclose()
        value = runs / elapsed
        note = f"{runs} runs of 10 steps, started before the agents"
        if completed != runs:
            note += f"; ONLY {completed} COMPLETED"
        if kind == "s3":
            note += "; scaled down for moto"
        results.append(
            Result(
                f"scale-out {agents} agent{'s' if agents > 1 else ''}",
                kind,
                {
                    "agents": agents,
                    "runs": runs,
                    "runs_per_s": value,
                    "elapsed_s": elapsed,
                    "completed": completed,
                    "requests": requests,
                },
                f"{rate(value)} runs/s",
                note,
            )
        )
    return results


async def _start_scale_run(
    conductor: Conductor, limiter: anyio.CapacityLimiter, index: int
) -> None:
    async with limiter:
        await conductor.start(steps, 10, run_id=f"scale-{index}")


async def _race(spec: Spec, backend: Backend, agents: int, kind: str) -> tuple[float, int]:
    """Start ``agents`` processes, release them together, time until the schedule is empty."""
    command = [sys.executable, "-m", "bench.agent", spec.to_json()]
    processes: list[Process] = []
    try:
        for _ in range(agents):
            processes.append(await anyio.open_process(command, stderr=None))
        for process in processes:
            assert process.stdout is not None
            with anyio.fail_after(60):
                line = await _readline(process)
            if line != "ready":
                raise RuntimeError(f"bench agent said {line!r}")
        for process in processes:
            assert process.stdin is not None
            await process.stdin.send(b"go\n")
        start = time.perf_counter()
        interval = 0.1 if kind == "s3" else 0.02
        with anyio.fail_after(600):
            while await backend.list("schedule/", limit=1):  # noqa: ASYNC110 - storage poll
                await anyio.sleep(interval)
        elapsed = time.perf_counter() - start
        requests = 0
        for process in processes:
            assert process.stdin is not None
            await process.stdin.aclose()
            with anyio.fail_after(60):
                line = await _readline(process)
                await process.wait()
            requests += int(line or 0)
        return elapsed, requests
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _readline(process: Process) -> str:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        try:
            chunk = await process.stdout.receive(1)
        except anyio.EndOfStream:
            break
        data += chunk
    return data.decode().strip()


async def _count_completed(backend: Backend, runs: int) -> int:
    store = RunStore(backend)
    completed = 0
    for index in range(runs):
        meta = await store.read_meta(f"scale-{index}")
        if meta is not None and meta.status == pb.RUN_STATUS_COMPLETED:
            completed += 1
    return completed
