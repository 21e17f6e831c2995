"""
redis-server and moto's S3 server as child processes on free 127.0.0.1 ports.

The one implementation, owned by the tests (``tests/servers.py`` wraps it in pytest
fixtures) and imported by the bench; the bench never provides code to the tests. It does
not import pytest: a server that cannot start raises
``ServerUnavailable`` and the caller decides (the bench skips that backend and says why;
the tests skip, or fail under ``CI=true``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TEST_CREDENTIALS",
    "RedisServer",
    "S3Server",
    "ServerUnavailable",
    "free_port",
    "redis_binary",
    "stop_quietly",
]

#: Seconds a server gets to answer after it is started.
START_TIMEOUT = 15.0
#: The AWS credentials moto accepts; set them in the environment before using S3Server.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class ServerUnavailable(RuntimeError):
    """A server could not be started; the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str | None:
    """Where ``redis-server`` is, if anywhere."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
    """Poll ``ready`` (bounded) until the server answers; fail early if it exited."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerUnavailable(f"{what} exited with status {process.returncode}")
        if ready():
            return
        time.sleep(0.02)
    raise ServerUnavailable(f"{what} did not answer within {START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _ChildServer:
    """A server child process that outage tests can pause, resume and restart."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.process)

    def restart(self) -> None:
        """Stop and start again on the same port; the data is lost (nothing persists)."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)


class RedisServer(_ChildServer):
    """A ``redis-server`` child process without persistence, on 127.0.0.1."""

    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        binary = binary or redis_binary()
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (it is not on PATH)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        for part in out.split():
            if part.startswith("v="):
                return part[2:]
        return out.strip()

    def start(self) -> None:
        """Start the server on ``self.port`` and wait until it answers ``PING``."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        _wait_until(self.ping, self.process, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        """Whether the server answers ``PING`` right now."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class S3Server(_ChildServer):
    """
    moto's S3 server as a child process on 127.0.0.1 (in memory: a restart loses data).
    Set :data:`TEST_CREDENTIALS` in the environment first.
    """

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServerUnavailable(f"moto[server] is not installed: {exc}") from None
        self.port = free_port()
        self._admin: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        launcher = str(Path(__file__).with_name("moto_s3.py"))
        command = [sys.executable, launcher, "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_until(self.answers, self.process, f"moto server on port {self.port}")

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def create_bucket(self, name: str) -> None:
        """Create a bucket with a plain (blocking) boto3 client; run it in a thread."""
        if self._admin is None:
            import boto3

            self._admin = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name="us-east-1"
            )
        self._admin.create_bucket(Bucket=name)


def stop_quietly(server: RedisServer | S3Server | None) -> None:
    if server is not None:
        server.stop()
