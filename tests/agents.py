"""
Helpers for the multi-agent tests: agent subprocesses running ``tests/chaos_app.py``,
backend URLs for each test backend, and a full check of a run's stored log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from substantial._store.keys import segment_key
from substantial._store.runs import RunStore, StoredLog
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb

APP = Path(__file__).with_name("chaos_app.py")


async def backend_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a fresh, empty backend that several processes can share."""
    if kind == "memory":
        pytest.skip("a memory backend lives in one process: agent processes cannot share it")
    if kind == "files":
        return f"file://{tmp_path / 'store'}"
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        return f"{server.url}?prefix=agents-{uuid.uuid4().hex[:12]}"
    if kind == "s3":
        s3 = request.getfixturevalue("s3_server")
        bucket = f"agents-{uuid.uuid4().hex[:24]}"
        await anyio.to_thread.run_sync(s3.create_bucket, bucket)
        return f"s3://{bucket}/runs?endpoint_url={s3.endpoint_url}&region=us-east-1"
    raise ValueError(kind)


def effects_written(effects: Path) -> int:
    """Bytes of step effects recorded so far: one line per step execution."""
    return sum(entry.stat().st_size for entry in os.scandir(effects))


@dataclass
class Killer:
    """
    Sends SIGKILL to a random serving agent every ``every`` seconds and starts it again.

    A kill waits until some step ran since the previous one (the effects folder grew), so
    on a loaded machine, where a respawned agent takes seconds to import and serve, the
    agents still progress between kills instead of dying before their first claim.
    """

    agents: list[Agent]
    effects: Path
    rng: random.Random
    every: tuple[float, float]
    kills: int = 0

    async def run(self) -> None:
        written = -1
        while True:
            await anyio.sleep(self.rng.uniform(*self.every))
            serving = [agent for agent in self.agents if agent.is_ready()]
            now_written = effects_written(self.effects)
            if not serving or now_written == written:
                continue
            written = now_written
            victim = self.rng.choice(serving)
            victim.kill()
            self.kills += 1
            victim.spawn()


@dataclass
class Agent:
    """One agent subprocess; its stderr goes to a file kept for diagnostics."""

    url: str
    effects: Path
    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    #: the agent program: chaos_app.py, or another app with the same command line
    app: Path = APP
    #: a command prefix, e.g. one that changes the process's privileges
    prefix: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    spawned: int = 0
    ready: bool = False

    def spawn(self) -> None:
        self.spawned += 1
        self.ready = False
        env = {**os.environ, "CHAOS_EFFECTS": str(self.effects), **self.env}
        stderr = open(self.logs / f"agent-{id(self)}-{self.spawned}.log", "wb")  # noqa: SIM115
        with stderr:
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, str(self.app), self.url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        """Block until the agent printed ``ready`` (it serves from then on)."""
        assert self.process is not None
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == b"ready", f"agent did not start: {line!r}"

    def is_ready(self) -> bool:
        """Whether the agent printed ``ready`` yet (without blocking)."""
        if self.ready:
            return True
        assert self.process is not None
        assert self.process.stdout is not None
        os.set_blocking(self.process.stdout.fileno(), False)
        self.ready = b"ready" in (self.process.stdout.read() or b"")
        return self.ready

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def stderr(self) -> str:
        return "".join(
            path.read_text(errors="replace")
            for path in sorted(self.logs.glob(f"agent-{id(self)}-*"))
        )


@dataclass
class LogCheck:
    """What a run's stored log says, after checking that it is well formed."""

    stored: StoredLog
    steps: Counter[int]
    events: Counter[str]
    result: object


async def check_log(backend: Backend, run_id: str) -> LogCheck:
    """
    Decode every segment of a run and check the log's invariants: segments 0..N are
    contiguous and each names itself, each step position has exactly one final
    ``StepCompleted``, each sent event id is merged once, and the log ends at most once.
    """
    from substantial.codec import decode_payload

    store = RunStore(backend)
    stored = await store.read_log(run_id)  # raises CorruptLog on a gap or foreign segment
    keys = await backend.list_all(f"runs/{run_id}/log/")
    assert keys == [segment_key(run_id, seq) for seq in range(stored.last_seq + 1)]
    steps: Counter[int] = Counter()
    events: Counter[str] = Counter()
    terminal = 0
    result: object = None
    for event in stored.events:
        kind = event.WhichOneof("kind")
        if kind == "step_completed":
            steps[event.step_completed.position] += 1
        elif kind == "event_received":
            events[event.event_received.id] += 1
        elif kind in ("completed", "failed", "cancelled"):
            terminal += 1
            if kind == "completed":
                result = decode_payload(event.completed.result)
    assert all(n == 1 for n in steps.values()), f"{run_id}: a step recorded twice: {steps}"
    assert all(n == 1 for n in events.values()), f"{run_id}: an event merged twice: {events}"
    assert terminal <= 1, f"{run_id}: {terminal} terminal events"
    assert stored.events[0].WhichOneof("kind") == "started"
    return LogCheck(stored, steps, events, result)


def effect_lines(effects: Path, run_id: str) -> list[str]:
    """The labels of every step execution of a run, in order (one line each)."""
    path = effects / run_id
    if not path.exists():
        return []
    return [line.split()[0] for line in path.read_text().splitlines() if line]


def lease_of(data: bytes) -> pb.Lease:
    return pb.Lease.FromString(data)
