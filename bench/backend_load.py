"""
``python -m bench.backend_load [--backends redis,s3] [--callers 50] [--delay 0.03]``

What a backend alone sustains, without the engine: ``callers`` concurrent tasks, each
doing create-if-absent then get of its own keys, on one backend object (one client).
Reports operations/s and the client's CPU per operation (``time.process_time``, which
the servers do not add to: redis-server and moto run as child processes). With
``--delay`` the S3 requests go through ``bench/latency_proxy.py`` (a process of its
own) adding that many seconds each; the proxy then also reports the most requests it
saw in flight at once. Then the same with one caller, for the per-request cost alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio

from bench.latency_proxy import LatencyProxy
from substantial.backends import Backend
from tests.server_processes import TEST_CREDENTIALS, RedisServer, S3Server


async def _load(backend: Backend, callers: int, per_caller: int) -> tuple[float, float]:
    """Operations/s and CPU seconds per operation of ``callers`` concurrent loops."""
    await backend.create("warm", b"x")

    async def caller(index: int) -> None:
        for n in range(per_caller):
            key = f"load/{index}/{n}"
            await backend.create(key, bytes(200))
            await backend.get(key)

    cpu, start = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for index in range(callers):
            tg.start_soon(caller, index)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    ops = 2 * callers * per_caller
    return ops / wall, cpu / ops


def _redis(workdir: Path, args: argparse.Namespace) -> None:
    from substantial.backends.redis import RedisBackend

    server = RedisServer(workdir)
    server.start()
    try:
        for callers, per in ((args.callers, args.ops // args.callers), (1, args.ops)):
            backend = RedisBackend(server.url, prefix=f"load-{uuid.uuid4().hex[:8]}")

            async def run(b: Backend = backend, c: int = callers, p: int = per) -> None:
                async with b:
                    rate, cpu = await _load(b, c, p)
                print(f"redis  {c:3d} callers: {rate:9,.0f} ops/s, {cpu * 1e6:6.1f} us CPU/op")

            anyio.run(run)
    finally:
        server.stop()


def _s3(args: argparse.Namespace) -> None:
    from substantial.backends.s3 import S3Backend

    os.environ.update(TEST_CREDENTIALS)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    server = S3Server()
    server.start()
    proxy: subprocess.Popen[str] | None = None
    endpoint, port = server.endpoint_url, 0
    try:
        if args.delay:
            command = [sys.executable, "-m", "bench.latency_proxy", str(server.port)]
            command += ["--delay", str(args.delay)]
            proxy = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert proxy.stdout is not None
            port = int(proxy.stdout.readline())
            endpoint = f"http://127.0.0.1:{port}"
        ops = max(2, args.ops // 10)  # moto is slow; fewer operations
        for callers, per in ((args.callers, max(1, ops // args.callers)), (1, max(1, ops // 10))):
            bucket = f"load-{uuid.uuid4().hex[:20]}"
            server.create_bucket(bucket)
            backend = S3Backend(bucket, endpoint_url=endpoint, region="us-east-1")

            async def run(b: Backend = backend, c: int = callers, p: int = per) -> None:
                async with b:
                    rate, cpu = await _load(b, c, p)
                seen = (
                    f", most in flight {LatencyProxy.stats(port)['max_in_flight']}" if port else ""
                )
                print(
                    f"s3     {c:3d} callers: {rate:9,.0f} ops/s, {cpu * 1e6:6.1f} us CPU/op{seen}"
                )

            anyio.run(run)
    finally:
        if proxy is not None and proxy.stdin is not None:
            proxy.stdin.close()
            proxy.wait(timeout=30)
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backend_load", description=__doc__)
    parser.add_argument("--backends", default="redis,s3", help="comma-separated: redis, s3")
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--ops", type=int, default=10_000, help="create+get pairs, Redis")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added per S3 request")
    args = parser.parse_args(argv)
    kinds = args.backends.split(",")
    if "redis" in kinds:
        import tempfile

        _redis(Path(tempfile.mkdtemp(prefix="backend-load-")), args)
    if "s3" in kinds:
        _s3(args)


if __name__ == "__main__":
    main()
