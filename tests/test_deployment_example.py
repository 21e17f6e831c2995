"""examples/deployment.py against the session's redis-server and moto S3 server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.servers import RedisServer, S3Server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "deployment.py"

pytestmark = [pytest.mark.redis, pytest.mark.s3]


def test_deployment_example(redis_server: RedisServer, s3_server: S3Server) -> None:
    namespace = f"deployment-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "SUBSTANTIAL_S3_BUCKET": namespace}
    redis_url = f"{redis_server.url}?prefix={namespace}"
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), redis_url, s3_server.endpoint_url],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for backend in ("redis", "s3"):
        for n in range(6):
            assert any(
                line.startswith(f"{backend}: {backend}-{n} charged {(10 + n) * 100} cents")
                for line in lines
            ), result.stdout
    assert "workers stopped with SIGTERM, exit codes [0, 0, 0]" in lines
