"""Workflow concurrency limits: at most N runs execute at once, the rest wait in order."""

from __future__ import annotations

import threading

import anyio
import pytest

from substantial import Conductor, Context, RunStatus, workflow
from substantial._store import slots
from substantial._store.keys import lease_key, workflow_mark
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until


class Gauge:
    """How many steps run at once, and the most seen; each step waits for a permit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.order: list[str] = []
        self.permits = threading.Semaphore(0)

    def step(self, name: str) -> str:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.order.append(name)
        self.permits.acquire(timeout=WAIT)
        with self.lock:
            self.now -= 1
        return name


gauge = Gauge()


@workflow(name="conc.two", concurrency=2)
async def two_at_a_time(c: Context, name: str) -> str:
    return await c.save(lambda: gauge.step(name))


@workflow(name="conc.per_key", concurrency_per_key=1)
async def one_per_key(c: Context, name: str) -> str:
    return await c.save(lambda: gauge.step(name))


@workflow(name="conc.one", concurrency=1)
async def one(c: Context) -> str:
    return await c.save(lambda: "ran")


@pytest.fixture(autouse=True)
def fresh_gauge() -> None:
    global gauge
    gauge = Gauge()


@pytest.mark.conductor(two_at_a_time)
async def test_at_most_n_runs_execute_and_the_rest_are_queued_in_order(
    conductor: Conductor,
) -> None:
    # Started in one (virtual) millisecond: the line orders them by run id.
    handles = {
        f"r{i}": await conductor.start(two_at_a_time, f"r{i}", run_id=f"r{i}") for i in range(5)
    }
    await wait_until(lambda: gauge.now == 2, what="two steps running")
    waiting = sorted(set(handles) - set(gauge.order))
    for name in waiting:
        await wait_for_status(handles[name], RunStatus.QUEUED)
    for released in range(1, 4):  # one slot frees at a time: the first in line takes it
        gauge.permits.release()
        await wait_until(lambda n=released: len(gauge.order) == 2 + n, what="the next run")
        assert gauge.order[-1] == waiting[released - 1]
    gauge.permits.release(2)
    for name, handle in handles.items():
        assert await handle.result(timeout=WAIT) == name
    assert gauge.most == 2


@pytest.mark.conductor(one_per_key)
async def test_concurrency_per_key_limits_each_key(conductor: Conductor) -> None:
    a1 = await conductor.start(one_per_key, "a1", concurrency_key="tenant-a")
    a2 = await conductor.start(one_per_key, "a2", concurrency_key="tenant-a")
    b1 = await conductor.start(one_per_key, "b1", concurrency_key="tenant b/ünï")
    free = await conductor.start(one_per_key, "free")  # no key: not limited
    await wait_until(lambda: gauge.now == 3, what="a1, b1 and the keyless run running")
    [ran] = [name for name in gauge.order if name.startswith("a")]  # a1 or a2, not both
    await wait_for_status(a2 if ran == "a1" else a1, RunStatus.QUEUED)
    assert sorted(gauge.order) == sorted([ran, "b1", "free"])
    gauge.permits.release(4)
    for handle, name in ((a1, "a1"), (a2, "a2"), (b1, "b1"), (free, "free")):
        assert await handle.result(timeout=WAIT) == name


async def _ghost_holds_the_slot(backend: Backend, conductor: Conductor, expires_ms: int) -> None:
    """An agent that died while run ``ghost`` held workflow conc.one's only slot."""
    group = slots.group_of(workflow_mark("conc.one"))
    await backend.put(f"flow/slots/{group}/0000", b"ghost")
    lease = pb.Lease(owner="dead-agent", expires_ms=expires_ms, token="x")
    await backend.put(lease_key("ghost"), lease.SerializeToString())


async def test_a_slot_held_by_a_dead_agent_frees_when_its_lease_expires(backend: Backend) -> None:
    async with make_conductor(backend, one, virtual_clock=True) as conductor:
        clock = conductor.store.clock
        await _ghost_holds_the_slot(backend, conductor, clock.now_ms() + 2_000)
        handle = await conductor.start(one)
        # Queued behind the ghost; its retry comes after a lease length, the ghost's
        # lease is over by then (the idle agent jumps the virtual clock there).
        assert await handle.result(timeout=WAIT) == "ran"
        meta = await conductor.store.read_meta(handle.run_id)
        assert meta is not None
        assert meta.status == pb.RUN_STATUS_COMPLETED


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        workflow(concurrency=0)
    conductor = make_conductor("memory://", one)
    with pytest.raises(ValueError, match="priority"):
        anyio.run(lambda: conductor.start(one, priority=10))


@workflow(name="conc.single", concurrency=1)
async def single(c: Context, name: str) -> str:
    return await c.save(lambda: gauge.step(name))


@pytest.mark.conductor(single)
async def test_a_run_paused_in_line_lets_the_next_one_go(conductor: Conductor) -> None:
    first = await conductor.start(single, "r0", run_id="r0")
    await wait_until(lambda: gauge.now == 1, what="r0 running")
    second = await conductor.start(single, "r1", run_id="r1")
    third = await conductor.start(single, "r2", run_id="r2")
    await wait_for_status(second, RunStatus.QUEUED)
    await wait_for_status(third, RunStatus.QUEUED)
    await second.pause()
    await wait_for_status(second, RunStatus.PAUSED)
    gauge.permits.release()
    assert await first.result(timeout=WAIT) == "r0"
    await wait_until(lambda: gauge.order == ["r0", "r2"], what="r2 past the paused r1")
    gauge.permits.release(2)
    assert await third.result(timeout=WAIT) == "r2"
    await second.resume()
    assert await second.result(timeout=WAIT) == "r1"
