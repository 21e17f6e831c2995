"""
redis-server and moto's S3 server as child processes on free 127.0.0.1 ports.

The same start/stop logic as ``tests/servers.py``, without pytest: a server that cannot
start is reported (``ServerUnavailable``) so the bench skips that backend and says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

START_TIMEOUT = 15.0


class ServerUnavailable(RuntimeError):
    """A server the bench needs could not be started; the message says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str) -> None:
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
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """``redis-server`` without persistence on 127.0.0.1 (what the tests run too)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
        )
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (it is not on PATH)")
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

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
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir
        )
        _wait_until(self.ping, self.process, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process)


class S3Server:
    """moto's S3 server on 127.0.0.1 (in memory), with test credentials in os.environ."""

    def __init__(self) -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise ServerUnavailable(f"moto[server] is not installed: {exc}") from None
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._admin: object = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            os.environ[name] = value
        os.environ.pop("AWS_SESSION_TOKEN", None)
        os.environ.pop("AWS_PROFILE", None)
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
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
        """Blocking: call it in a worker thread."""
        if self._admin is None:
            import boto3

            self._admin = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name="us-east-1"
            )
        self._admin.create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def stop(self) -> None:
        _stop(self.process)


def stop_quietly(server: RedisServer | S3Server | None) -> None:
    if server is not None:
        server.stop()


__all__ = ["RedisServer", "S3Server", "ServerUnavailable", "free_port", "stop_quietly"]
