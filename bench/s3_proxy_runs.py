"""
``python -m bench.s3_proxy_runs [--delay 0.03] [--runs 50]``

S3 at a real store's latency, engine included: moto behind ``bench/latency_proxy.py``
(a process of its own, so its CPU is not the agent's), one in-process agent. Prints the
10-step run's start -> result time (median of 5, and as a multiple of the delay: the
number of sequential round trips) and ``runs`` x 10-step runs started at once, twice,
with requests per run, the most requests in flight and the agent's CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

import anyio

from bench.latency_proxy import LatencyProxy
from bench.workloads import WORKFLOWS, steps
from substantial import Conductor
from substantial.backends.s3 import S3Backend
from tests.server_processes import TEST_CREDENTIALS, S3Server


async def _measure(endpoint: str, port: int, bucket: str, delay: float, runs: int) -> None:
    backend = S3Backend(bucket, endpoint_url=endpoint, region="us-east-1")
    conductor = Conductor(backend)
    conductor.register(*WORKFLOWS)

    def requests() -> int:
        return LatencyProxy.stats(port)["requests"]

    async def one() -> None:
        await (await conductor.start(steps, 10)).result()

    async with conductor:
        await one()  # warm-up
        before, samples = requests(), []
        for _ in range(5):
            start = time.perf_counter()
            await one()
            samples.append(time.perf_counter() - start)
        p50 = statistics.median(samples)
        print(
            f"10-step run: p50 {p50 * 1000:.0f} ms = {p50 / delay:.1f} x {delay * 1000:g} ms,"
            f" {(requests() - before) / 5:.1f} requests a run"
        )
        for _ in range(2):
            before, cpu, start = requests(), time.process_time(), time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(runs):
                    tg.start_soon(one)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            print(
                f"{runs} x 10 steps: {runs / wall:.1f} runs/s,"
                f" {(requests() - before) / runs:.1f} requests a run,"
                f" most in flight {LatencyProxy.stats(port)['max_in_flight']},"
                f" agent CPU {cpu:.2f} s of {wall:.2f} s"
            )
    await backend.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_proxy_runs", description=__doc__)
    parser.add_argument("--delay", type=float, default=0.030, help="seconds per request")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    os.environ.update(TEST_CREDENTIALS)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    server = S3Server()
    server.start()
    command = [sys.executable, "-m", "bench.latency_proxy", str(server.port)]
    proxy = subprocess.Popen(
        [*command, "--delay", str(args.delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proxy.stdout is not None
        port = int(proxy.stdout.readline())
        bucket = f"runs-{uuid.uuid4().hex[:20]}"
        server.create_bucket(bucket)
        endpoint = f"http://127.0.0.1:{port}"
        anyio.run(_measure, endpoint, port, bucket, args.delay, args.runs)
    finally:
        if proxy.stdin is not None:
            proxy.stdin.close()
        proxy.wait(timeout=30)
        server.stop()


if __name__ == "__main__":
    main()
