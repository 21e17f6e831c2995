"""
One bad record, or a store that refuses writes, never stops an agent.

Each case reproduces a report through real agent processes where the original was one:
garbage in ``leases/{run}``, a lease from a clock far ahead, Redis out of memory under
``noeviction``, a folder the agent may not write, an unexpected error on one run, and a
sync step still blocking when the agent is told to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from substantial import Conductor, Context, RunStatus, workflow
from substantial._core.clock import now_ms
from substantial._store.keys import lease_key
from substantial.backends import Backend, FSBackend, MemoryBackend, from_url
from substantial.protocol import substantial_pb2 as pb
from tests import chaos_app
from tests.agents import Agent, backend_url, effect_lines
from tests.conftest import BACKENDS
from tests.harness import wait_until
from tests.servers import running_redis

PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]


def _no_dac_override() -> list[str]:
    """
    A command prefix that makes root subject to file permissions (it drops the
    capabilities that bypass them), so a test as root sees EACCES as another user would.
    """
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


def _check(url: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(prefix or []), sys.executable, "-m", "substantial", "check", "--backend", url]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


async def _start_steps(client: Conductor, run_ids: list[str], count: int = 3) -> None:
    for run_id in run_ids:
        await client.start(chaos_app.steps, count, run_id=run_id)


async def _all_complete(client: Conductor, run_ids: list[str], count: int = 3) -> None:
    for run_id in run_ids:
        assert await client.handle(run_id).result(timeout=60) == [0, 10, 20][:count]


@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_garbage_in_a_lease_stops_no_agent_and_the_run_completes(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    backend = from_url(url)
    client = Conductor(backend)
    client.register(chaos_app.steps)
    runs = ["poisoned", "bystander-1", "bystander-2"]
    await _start_steps(client, runs)
    await backend.put(lease_key("poisoned"), os.urandom(64) + b"\xff\x00garbage")
    agent = Agent(url, effects, tmp_path, {"CHAOS_POLL": "0.05"})
    try:
        agent.spawn()
        agent.wait_ready()
        await _all_complete(client, runs)
        assert agent.process is not None
        assert agent.process.poll() is None, agent.stderr()
        assert "unreadable lease record taken over" in agent.stderr()
        assert agent.stop() == 0
    finally:
        agent.kill()
        await backend.aclose()


@workflow(name="poison.double")
async def double(c: Context, x: int) -> int:
    return await c.save(lambda: 2 * x)


async def test_a_lease_from_a_clock_a_day_ahead_is_treated_as_expired(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    client = Conductor(backend, lease=1)
    client.register(double)
    await client.start(double, 21, run_id="skewed")
    day_ahead = pb.Lease(owner="dead-agent-24h-ahead", expires_ms=now_ms() + 86_400_000)
    await backend.put(lease_key("skewed"), day_ahead.SerializeToString())
    async with Conductor(backend, lease=1, poll_interval=0.05) as agent:
        agent.register(double)
        assert await client.handle("skewed").result(timeout=30) == 42
    assert "dead-agent-24h-ahead" in caplog.text
    assert "treated as expired" in caplog.text


async def test_redis_out_of_memory_is_logged_once_and_the_agent_waits_it_out(
    tmp_path: Path,
) -> None:
    (tmp_path / "redis").mkdir()
    with running_redis(tmp_path / "redis") as server:
        url = f"{server.url}?prefix=oom"
        effects = tmp_path / "effects"
        effects.mkdir()
        backend = from_url(url)
        client = Conductor(backend)
        client.register(chaos_app.steps)
        runs = [f"oom-{i}" for i in range(3)]
        await _start_steps(client, runs)
        admin = redis.asyncio.Redis.from_url(server.url)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")  # every write is refused from now on
        agent = Agent(url, effects, tmp_path, {"CHAOS_POLL": "0.05"})
        try:
            agent.spawn()
            agent.wait_ready()

            async def refused() -> bool:
                return "backend refuses writes" in agent.stderr()

            await wait_until(refused, 30, "the agent to report the refusal")
            assert agent.process is not None
            assert agent.process.poll() is None, agent.stderr()
            check = await anyio.to_thread.run_sync(_check, url)
            assert check.returncode == 1, check
            assert "unhealthy" in check.stderr
            assert "OutOfMemoryError" in check.stderr
            await admin.config_set("maxmemory", "0")
            await _all_complete(client, runs)
            log = agent.stderr()
            assert log.count("backend refuses writes") == 1, log
            assert "OutOfMemoryError" in log
            assert "backend reachable again" in log
            assert agent.stop() == 0
        finally:
            agent.kill()
            await backend.aclose()
            await admin.aclose()


async def test_a_folder_the_agent_may_not_write_is_waited_out(tmp_path: Path) -> None:
    store = tmp_path / "store"
    url = f"file://{store}"
    effects = tmp_path / "effects"
    effects.mkdir()
    client = Conductor(url)
    client.register(chaos_app.steps)
    runs = ["denied-1", "denied-2"]
    await _start_steps(client, runs)
    folders = [store, *(p for p in store.rglob("*") if p.is_dir())]
    # as if a root CLI made them 0755 and the agent is someone else
    _chmod_all(folders, 0o555)
    agent = Agent(url, effects, tmp_path, {"CHAOS_POLL": "0.05"}, prefix=_no_dac_override())
    try:
        agent.spawn()
        agent.wait_ready()

        async def refused() -> bool:
            return "backend refuses writes" in agent.stderr()

        await wait_until(refused, 30, "the agent to report the refusal")
        assert agent.process is not None
        assert agent.process.poll() is None, agent.stderr()
        assert "Permission denied" in agent.stderr()
        check = await anyio.to_thread.run_sync(_check, url, _no_dac_override())
        assert check.returncode == 1, check
        assert "files refused create" in check.stderr
        _chmod_all(folders, 0o755)
        healthy = await anyio.to_thread.run_sync(_check, url, _no_dac_override())
        assert healthy.returncode == 0, healthy
        await _all_complete(client, runs)
        assert agent.stderr().count("backend refuses writes") == 1, agent.stderr()
        assert agent.stop() == 0
    finally:
        _chmod_all(
            folders, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        )
        agent.kill()


def _chmod_all(folders: list[Path], mode: int) -> None:
    """chmod each folder still there: a poll removes schedule time folders it emptied."""
    for folder in folders:
        with contextlib.suppress(FileNotFoundError):
            folder.chmod(mode)


class _FailingInbox(MemoryBackend):
    """A memory backend whose reads of one run's inbox fail, until told otherwise."""

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.broken = f"runs/{run_id}/inbox/"
        self.reads = 0

    async def list(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[str]:
        if prefix == self.broken:
            self.reads += 1
            raise RuntimeError("injected fault")
        return await super().list(prefix, after=after, limit=limit)


async def test_an_unexpected_error_holds_one_run_off_and_shows_why() -> None:
    backend = _FailingInbox("troubled")
    async with Conductor(backend, poll_interval=0.05, park_retry=2) as agent:
        agent.register(double)
        troubled = await agent.start(double, 1, run_id="troubled")
        others = [await agent.start(double, i, run_id=f"other-{i}") for i in range(3)]
        for i, handle in enumerate(others):
            assert await handle.result(timeout=30) == 2 * i

        async def parked() -> bool:
            return await troubled.status() is RunStatus.PARKED

        await wait_until(parked, 30, "the troubled run to show it is held off")
        meta = await agent.store.read_meta(troubled.run_id)
        assert meta is not None
        assert "RuntimeError: injected fault" in meta.parked_reason
        assert "failure 1 in a row" in meta.parked_reason
        backend.broken = "nothing/"  # the fault is fixed: the run carries on
        assert await troubled.result(timeout=30) == 2


async def test_a_stopped_agent_exits_though_a_sync_step_still_blocks(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    effects = tmp_path / "effects"
    effects.mkdir()
    client = Conductor(FSBackend(tmp_path / "store"))
    client.register(chaos_app.gate)
    agent = Agent(url, effects, tmp_path, {"CHAOS_GRACE": "0.5", "CHAOS_POLL": "0.05"})
    try:
        agent.spawn()
        agent.wait_ready()
        await client.start(chaos_app.gate, run_id="blocked-forever")

        async def entered() -> bool:
            return effect_lines(effects, "blocked-forever") == ["enter"]

        await wait_until(entered, 30, "the agent to enter the step")
        assert agent.process is not None
        os.kill(agent.pid, signal.SIGTERM)
        # The step never returns (its gate never opens): the process must exit anyway,
        # once the grace period is over and the lease released.
        assert await anyio.to_thread.run_sync(agent.process.wait, 30) == 0
        assert await client.backend.get(lease_key("blocked-forever")) is None
    finally:
        agent.kill()
