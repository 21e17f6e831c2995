"""
Real processes for the browser tests: an agent running ``tests/ui_app.py`` and
``substantial ui`` servers, on one backend URL. A *site* is the three together.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from substantial import Conductor
from tests.agents import Agent
from tests.harness import WAIT
from tests.server_processes import free_port

__all__ = ["Site", "UiServer", "in_thread"]

APP = Path(__file__).with_name("ui_app.py")
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def in_thread(body: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run async ``body`` on a loop of its own (Playwright's sync API owns this thread's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, body, *args).result()


@dataclass
class UiServer:
    """``substantial ui`` as a subprocess, on a free port of 127.0.0.1."""

    backend_url: str
    logs: Path
    options: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        command = [sys.executable, "-m", "substantial", "ui", "--backend", self.backend_url,
                   "--port", str(self.port), "--refresh", "1", *self.options]  # fmt: skip
        with open(self.logs / f"ui-{self.port}.log", "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + WAIT
        while not self._answers():
            assert self.process.poll() is None, f"substantial ui exited: {self.log()}"
            assert time.monotonic() < deadline, f"substantial ui did not answer: {self.log()}"
            time.sleep(0.05)  # polling a condition, not waiting out a guess

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/static/ui.css", timeout=5) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return (self.logs / f"ui-{self.port}.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@dataclass
class Site:
    """An agent and a view that can act (and a read-only one), all on ``backend_url``."""

    backend_url: str
    logs: Path
    with_read_only: bool = False
    agent: Agent = field(init=False)
    ui: UiServer = field(init=False)
    read_only: UiServer = field(init=False)

    def __post_init__(self) -> None:
        self.agent = Agent(self.backend_url, self.logs, self.logs, app=APP)
        self.ui = UiServer(self.backend_url, self.logs)
        self.read_only = UiServer(self.backend_url, self.logs, ["--read-only"])

    def start(self) -> Site:
        self.agent.spawn()
        self.ui.start()
        if self.with_read_only:
            self.read_only.start()
        self.agent.wait_ready()
        return self

    def stop(self) -> None:
        self.ui.stop()
        self.read_only.stop()
        if self.agent.process is not None:
            self.agent.stop()

    def start_run(self, workflow: str, *args: Any, run_id: str) -> None:
        """Start a run by workflow name, as any client process would."""

        async def body() -> None:
            conductor = Conductor(self.backend_url)
            try:
                await conductor.start(workflow, *args, run_id=run_id)
            finally:
                await conductor.aclose()

        in_thread(body)
