"""
A small deployment: two worker processes on Redis and one on S3, started with the
``substantial worker`` command. This process only starts runs and reads their results:
it runs no agent of its own. Then it stops the workers with SIGTERM, as a process
manager would.

    python examples/deployment.py [REDIS_URL] [S3_ENDPOINT]

``REDIS_URL`` (or ``$SUBSTANTIAL_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) and
``S3_ENDPOINT`` (or ``$SUBSTANTIAL_S3_ENDPOINT``, default ``http://127.0.0.1:9000``) name
the servers; the bucket is ``$SUBSTANTIAL_S3_BUCKET`` (default ``substantial-example``),
created if missing, with credentials from the usual AWS environment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode

import aioboto3
from botocore.exceptions import ClientError

from substantial import Conductor

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from deployment_app import order  # noqa: E402

ORDERS = 6


def spawn_worker(backend_url: str) -> subprocess.Popen[bytes]:
    """``substantial worker --app deployment_app --backend URL`` as a child process."""
    path = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    command = [sys.executable, "-m", "substantial", "worker", "--app", "deployment_app"]
    command += ["--backend", backend_url, "--log-level", "warning"]
    return subprocess.Popen(command, env=env)


async def ensure_bucket(endpoint: str, bucket: str) -> None:
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        try:
            await s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise


async def place_orders(backend_url: str, label: str) -> None:
    """Start runs from this process (no agent here) and wait for the workers' results."""
    client = Conductor(backend_url)  # never .run(): here it is only a client
    client.register(order)
    try:
        handles = [
            await client.start(order, f"{label}-{n}", 10 + n, run_id=f"{label}-{os.getpid()}-{n}")
            for n in range(ORDERS)
        ]
        for handle in handles:
            result = await handle.result(timeout=60)
            workers = sorted({step["by"] for step in result["steps"]})
            where = ", ".join(workers)
            print(f"{label}: {result['order']} charged {result['cents']} cents, ran on {where}")
    finally:
        await client.aclose()


def stop(worker: subprocess.Popen[bytes]) -> int:
    worker.send_signal(signal.SIGTERM)
    try:
        return worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        return -9


async def main(redis_url: str, s3_endpoint: str, bucket: str) -> int:
    await ensure_bucket(s3_endpoint, bucket)
    query = urlencode({"endpoint_url": s3_endpoint, "region": "us-east-1"})
    s3_url = f"s3://{bucket}/deployment?{query}"
    workers = [spawn_worker(redis_url), spawn_worker(redis_url), spawn_worker(s3_url)]
    try:
        await asyncio.gather(place_orders(redis_url, "redis"), place_orders(s3_url, "s3"))
    finally:
        codes = [stop(worker) for worker in workers]
    print(f"workers stopped with SIGTERM, exit codes {codes}")
    return 0 if codes == [0, 0, 0] else 1


if __name__ == "__main__":
    redis_url = (
        sys.argv[1]
        if len(sys.argv) > 1
        else os.environ.get("SUBSTANTIAL_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    s3_endpoint = (
        sys.argv[2]
        if len(sys.argv) > 2
        else os.environ.get("SUBSTANTIAL_S3_ENDPOINT", "http://127.0.0.1:9000")
    )
    bucket = os.environ.get("SUBSTANTIAL_S3_BUCKET", "substantial-example")
    sys.exit(asyncio.run(main(redis_url, s3_endpoint, bucket)))
