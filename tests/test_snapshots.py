"""A long run's log is compacted into a snapshot every N segments, so a resume reads
one object and the segments after it instead of every segment."""

from __future__ import annotations

import pytest

from substantial import Conductor, Context, CorruptLog, RunStatus, workflow
from substantial._store.keys import log_prefix, snapshot_prefix
from substantial._store.runs import RunStore
from substantial.backends import Backend
from substantial.protocol import substantial_pb2 as pb
from substantial.testing import Replayer
from tests.harness import wait_until

STEPS = 20


@workflow(name="snapshots.long")
async def long_run(c: Context) -> int:
    total = 0
    for i in range(STEPS):
        total += await c.save(lambda i=i: i)
    bonus = await c.receive("bonus")
    return total + int(bonus)


pytestmark = pytest.mark.conductor(long_run, snapshot_every=8, lease=5)


async def _segments(backend: Backend, run_id: str) -> list[pb.Event]:
    keys = await backend.list_all(log_prefix(run_id))
    entries = await backend.get_many(keys)
    return [e for entry in entries if entry for e in pb.Segment.FromString(entry[0]).events]


async def test_a_long_run_resumes_from_its_snapshot(conductor: Conductor, backend: Backend) -> None:
    handle = await conductor.start(long_run, run_id="long-1")

    async def waiting() -> bool:
        return await handle.status() is RunStatus.WAITING

    await wait_until(waiting, 60, "the run to wait for its bonus")
    snapshots = await backend.list_all(snapshot_prefix("long-1"))
    assert len(snapshots) == 1  # older ones are dropped
    store = RunStore(backend)
    from_snapshot = await store.read_log("long-1")
    assert from_snapshot.events == await _segments(backend, "long-1")
    assert from_snapshot.last_seq == len(await backend.list_all(log_prefix("long-1"))) - 1
    assert from_snapshot.segment_ends[-1] == len(from_snapshot.events)

    before = backend.requests["get"] + backend.requests.get("get_many", 0)
    await store.read_log("long-1")
    reads = backend.requests["get"] + backend.requests.get("get_many", 0) - before
    assert reads < from_snapshot.last_seq + 1  # not one read per segment

    await handle.send("bonus", 100)
    assert await handle.result(timeout=60) == sum(range(STEPS)) + 100
    history = await handle.history()
    assert [event.kind for event in history].count("step_completed") == STEPS
    assert [event.segment for event in history] == sorted(event.segment for event in history)
    outcome = await Replayer(long_run).replay_run(backend, "long-1")
    assert outcome is not None
    assert outcome.WhichOneof("kind") == "completed"


async def test_a_foreign_snapshot_is_a_corrupt_log(conductor: Conductor, backend: Backend) -> None:
    handle = await conductor.start(long_run, run_id="long-2")

    async def waiting() -> bool:
        return await handle.status() is RunStatus.WAITING

    await wait_until(waiting, 60, "the run to wait for its bonus")
    key = (await backend.list_all(snapshot_prefix("long-2")))[-1]
    entry = await backend.get(key)
    assert entry is not None
    foreign = pb.Segment.FromString(entry[0])
    foreign.run_id = "someone-else"
    await backend.put(key, foreign.SerializeToString())
    with pytest.raises(CorruptLog, match="foreign segment"):
        await RunStore(backend).read_log("long-2")
