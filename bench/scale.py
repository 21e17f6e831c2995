"""How much each row does, per backend: full (``make bench``), quick and tiny (the smoke test)."""

from __future__ import annotations

from dataclasses import dataclass


def _per(memory: int, files: int, redis: int, s3: int) -> dict[str, int]:
    return {"memory": memory, "files": files, "redis": redis, "s3": s3}


@dataclass(frozen=True)
class Scale:
    name: str
    #: timed repeats of the floor and step rows (the median is reported)
    repeats: int
    floor_ops: dict[str, int]
    step_n: dict[str, int]
    latency_runs: dict[str, int]
    #: (runs started at once, repeats)
    throughput: dict[str, list[tuple[int, int]]]
    resume_sizes: dict[str, list[int]]
    resume_repeats: dict[str, int]
    scale_runs: dict[str, int]
    scale_agents: list[int]
    idle_sleeping: dict[str, list[int]]
    idle_warmup: float
    idle_window: float
    #: sleeping runs (schedule entries only) for the poll row, growing in one namespace
    poll_sleeping: dict[str, list[int]]
    #: S3 through the latency proxy: seconds added per request, and the rows' sizes
    proxy_floor_ops: int
    proxy_latency_runs: int
    proxy_throughput_runs: int
    proxy_delay: float = 0.030


FULL = Scale(
    name="full",
    repeats=3,
    floor_ops=_per(20_000, 1_000, 5_000, 100),
    step_n=_per(2_000, 1_000, 2_000, 200),
    latency_runs=_per(200, 200, 200, 20),
    throughput={
        "memory": [(50, 3), (1_000, 1)],
        "files": [(50, 3), (1_000, 1)],
        "redis": [(50, 3), (1_000, 1)],
        "s3": [(30, 1)],
    },
    resume_sizes={
        "memory": [10, 100, 1_000, 10_000],
        "files": [10, 100, 1_000, 10_000],
        "redis": [10, 100, 1_000, 10_000],
        "s3": [10, 100],
    },
    resume_repeats=_per(3, 3, 3, 1),
    scale_runs=_per(0, 200, 400, 24),
    scale_agents=[1, 2, 4],
    idle_sleeping={k: [0, 10_000] for k in ("memory", "files", "redis")} | {"s3": [0, 1_000]},
    idle_warmup=1.5,
    idle_window=3.0,
    poll_sleeping={k: [10_000, 100_000, 300_000] for k in ("memory", "files", "redis")}
    | {"s3": [100, 1_000]},
    proxy_floor_ops=20,
    proxy_latency_runs=5,
    proxy_throughput_runs=50,
)

QUICK = Scale(
    name="quick",
    repeats=1,
    floor_ops=_per(5_000, 200, 1_000, 30),
    step_n=_per(200, 200, 200, 30),
    latency_runs=_per(30, 30, 30, 5),
    throughput={k: [(50, 1)] for k in ("memory", "files", "redis")} | {"s3": [(10, 1)]},
    resume_sizes={k: [10, 100, 1_000] for k in ("memory", "files", "redis")} | {"s3": [10]},
    resume_repeats=_per(1, 1, 1, 1),
    scale_runs=_per(0, 60, 100, 8),
    scale_agents=[1, 2],
    idle_sleeping={k: [0, 1_000] for k in ("memory", "files", "redis")} | {"s3": [0, 100]},
    idle_warmup=1.2,
    idle_window=1.0,
    poll_sleeping={k: [1_000, 10_000] for k in ("memory", "files", "redis")} | {"s3": [100]},
    proxy_floor_ops=10,
    proxy_latency_runs=3,
    proxy_throughput_runs=10,
)

TINY = Scale(
    name="tiny",
    repeats=1,
    floor_ops=_per(200, 50, 50, 10),
    step_n=_per(20, 20, 20, 5),
    latency_runs=_per(5, 5, 5, 3),
    throughput={k: [(5, 1)] for k in ("memory", "files", "redis", "s3")},
    resume_sizes={k: [10] for k in ("memory", "files", "redis", "s3")},
    resume_repeats=_per(1, 1, 1, 1),
    scale_runs=_per(0, 5, 5, 5),
    scale_agents=[1],
    idle_sleeping={k: [0, 10] for k in ("memory", "files", "redis", "s3")},
    idle_warmup=0.1,
    idle_window=0.3,
    poll_sleeping={k: [10, 100] for k in ("memory", "files", "redis")} | {"s3": [10]},
    proxy_floor_ops=3,
    proxy_latency_runs=1,
    proxy_throughput_runs=3,
)

SCALES = {scale.name: scale for scale in (FULL, QUICK, TINY)}
