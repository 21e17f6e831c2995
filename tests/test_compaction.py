"""compact(): a workflow that loops for ever stores and replays a bounded history."""

from __future__ import annotations

import os

import pytest

from substantial import CompactionError, Conductor, Context, RunFailed, workflow
from substantial._core import constants
from substantial._core.clock import now_ms
from substantial._store.keys import inbox_prefix, log_prefix
from substantial._store.runs import RunStore
from substantial.backends import Backend, MemoryBackend
from substantial.codec import encode_payload
from substantial.protocol import substantial_pb2 as pb
from substantial.testing import Replayer
from tests.harness import wait_until

# The bounds asserted below are fixed, whatever EVENTS is: 20,000 events in four batches
# show them in ~35 s (100,000 took 165 s); COMPACTION_EVENTS=100000 is the long form.
EVENTS = int(os.environ.get("COMPACTION_EVENTS", "20000"))
# A few compactions' worth for the resume test (it sent 200 at a time, 78 s on s3 loaded):
# compact() every COMPACT_MIN_RECORDS records, stored after COMPACT_EVERY segments.
SENT_TO_RESUMED = 3 * constants.COMPACT_MIN_RECORDS + constants.COMPACT_EVERY


@workflow(name="compaction.counter")
async def counter(c: Context) -> dict[str, int]:
    state = {"total": 0, "seen": 0}
    while True:
        message = await c.receive("msg", key="msg")
        if message is None:
            return state

        async def add(state: dict[str, int] = state, message: int = message) -> dict[str, int]:
            return {"total": state["total"] + message, "seen": state["seen"] + 1}

        state = await c.save(add, key="state")
        c.compact()


@workflow(name="compaction.unkeyed")
async def unkeyed(c: Context) -> None:
    await c.receive("msg", key="msg")
    await c.save(lambda: 1)  # no key after a keyed record
    c.compact()


async def _stored_size(backend: Backend, run_id: str) -> tuple[int, int]:
    """(keys stored for the run, events a resume reads)."""
    keys = await backend.list_all(f"runs/{run_id}/")
    stored = await RunStore(backend).read_log(run_id)
    return len(keys), len(stored.events)


async def _post_many(backend: Backend, run_id: str, values: list[int | None], start: int) -> None:
    """Send events the way Handle.send does, without one schedule entry each."""
    store = RunStore(backend)
    at = now_ms()
    for offset, value in enumerate(values):
        number = start + offset
        entry = pb.InboxEntry(
            id=f"m{number:07d}", name="msg", sent_at_ms=at, value=encode_payload(value)
        )
        key = f"{inbox_prefix(run_id)}{at:015d}-m{number:07d}"
        await backend.create(key, entry.SerializeToString())
    await store.schedule(run_id, at, f"batch{start}")


@pytest.mark.timeout(300)
async def test_tens_of_thousands_of_events_keep_a_bounded_history() -> None:
    backend = MemoryBackend()
    async with Conductor(backend, concurrency=4) as conductor:
        conductor.register(counter)
        handle = await conductor.start(counter, run_id="counter")
        sizes = []
        batch = EVENTS // 4
        for start in range(0, EVENTS, batch):
            await _post_many(backend, "counter", list(range(start, start + batch)), start)

            async def drained(start: int = start) -> bool:
                meta = await conductor.store.read_meta("counter")
                inbox = await backend.list(inbox_prefix("counter"), limit=1)
                return meta is not None and not inbox and meta.status == pb.RUN_STATUS_WAITING

            await wait_until(drained, 120, f"batch {start} to be processed")
            sizes.append(await _stored_size(backend, "counter"))
        await _post_many(backend, "counter", [None], EVENTS)
        result = await handle.result(timeout=120)
    assert result == {"total": sum(range(EVENTS)), "seen": EVENTS}
    # What is stored and what a resume reads stay bounded from the first batch to the last.
    # Fixed bounds, whatever EVENTS is. A wake-up merges at most MERGE_LIMIT events into
    # one segment; compact() compacts every COMPACT_MIN_RECORDS records and the agent
    # stores that after COMPACT_EVERY segments, each step being one segment.
    segments = constants.COMPACT_EVERY + constants.COMPACT_MIN_RECORDS + 2
    keys = [k for k, _ in sizes]
    events = [e for _, e in sizes]
    assert max(keys) <= segments + 8, sizes
    assert max(events) <= constants.MERGE_LIMIT + 2 * segments, sizes
    assert len(await backend.list_all(log_prefix("counter"))) <= segments
    outcome = await Replayer(counter).replay_run(backend, "counter")
    assert outcome is not None
    assert outcome.WhichOneof("kind") == "completed"


async def test_compact_refuses_an_unkeyed_record_after_a_keyed_one(backend: Backend) -> None:
    async with Conductor(backend) as conductor:
        conductor.register(unkeyed)
        handle = await conductor.start(unkeyed)
        await handle.send("msg", 1)
        with pytest.raises(RunFailed) as failed:
            await handle.result(timeout=30)
    assert failed.value.type_name == "substantial.errors.CompactionError"
    assert "step completed with no key=" in failed.value.error_message


async def test_a_compacted_run_resumes_on_another_conductor(backend: Backend) -> None:
    async with Conductor(backend) as first:
        first.register(counter)
        handle = await first.start(counter, run_id="resumed")
        for value in range(SENT_TO_RESUMED):
            await handle.send("msg", value)

        async def seen_all() -> bool:
            meta = await first.store.read_meta("resumed")
            inbox = await backend.list(inbox_prefix("resumed"), limit=1)
            return meta is not None and not inbox and meta.status == pb.RUN_STATUS_WAITING

        await wait_until(seen_all, 60, "the events to be processed")
    _, events = await _stored_size(backend, "resumed")
    assert events < SENT_TO_RESUMED  # compacted
    async with Conductor(backend) as second:
        second.register(counter)
        await second.handle("resumed").send("msg", None)
        assert await second.handle("resumed").result(timeout=60) == {
            "total": sum(range(SENT_TO_RESUMED)),
            "seen": SENT_TO_RESUMED,
        }


def test_compaction_error_is_a_value_error() -> None:
    assert issubclass(CompactionError, ValueError)
