"""Large payloads: stored once as blobs, read back as they were, and collected by gc."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from substantial import CodecError, Conductor, Context, ZlibCodec, workflow
from substantial._store.inbox import Intake
from substantial._store.keys import BLOB_MARKS_PREFIX, BLOBS_PREFIX, blob_ref_prefix, log_prefix
from substantial._store.payloads import PayloadPolicy, open_records, seal
from substantial._store.runs import RunStore
from substantial.backends import Backend, MemoryBackend
from substantial.codec import encode_payload
from substantial.ops import GcResult, describe_run, gc
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor

FIVE_MIB = 5 * 1024 * 1024


@workflow(name="blobs.big_step")
async def big_step(c: Context, size: int) -> int:
    value = await c.save(lambda: "b" * size)
    await c.save(lambda: 1)  # one more wake-up step: the big result is replayed from the blob
    return len(value)


@workflow(name="blobs.big_result")
async def big_result(c: Context, size: int) -> str:
    return await c.save(lambda: "r" * size)


async def collect(backend: Backend) -> GcResult:
    """gc of every finished run (as seen a minute from now: none is too recent)."""
    return await gc(backend, timedelta(0), now=datetime.now(UTC) + timedelta(minutes=1))


async def keys(backend: Backend, prefix: str) -> list[str]:
    return list(await backend.list_all(prefix))


async def test_a_5_mib_step_result_round_trips_through_one_blob(backend: Backend) -> None:
    async with make_conductor(backend, big_step, virtual_clock=True) as conductor:
        handle = await conductor.start(big_step, FIVE_MIB, run_id="big")
        assert await handle.result(timeout=WAIT) == FIVE_MIB
        history = await handle.history()

    (blob,) = await keys(backend, BLOBS_PREFIX)
    data, _ = await backend.get(blob) or (b"", "")
    assert len(data) == FIVE_MIB + 2  # the JSON string, quotes included
    assert blob == BLOBS_PREFIX + hashlib.sha256(data).hexdigest()
    for key in await keys(backend, log_prefix("big")):  # the log keeps only the reference
        entry = await backend.get(key)
        assert entry is not None
        assert len(entry[0]) < 10_000
    steps = [e for e in history if e.kind == "step_completed"]
    assert len(steps[0].details["result"]) == FIVE_MIB  # history reads the blob

    details = await describe_run(backend, "big")  # what `substantial show` prints
    shown = next(e for e in details.history if e.kind == "step_completed")
    assert shown.details["result"] == "b" * FIVE_MIB

    outcome = await collect(backend)
    assert outcome.runs == ["big"]
    assert outcome.blobs == [blob[len(BLOBS_PREFIX) :]]
    assert await backend.list("") == []  # the run, its references and its blob


async def test_a_large_result_is_one_blob_shared_by_log_and_summary(backend: Backend) -> None:
    async with make_conductor(
        backend, big_result, virtual_clock=True, blob_threshold=1000
    ) as conductor:
        handle = await conductor.start(big_result, 5000)
        assert await handle.result(timeout=WAIT) == "r" * 5000
    assert len(await keys(backend, BLOBS_PREFIX)) == 1


async def test_values_under_the_threshold_stay_inline(backend: Backend) -> None:
    async with make_conductor(backend, big_step, virtual_clock=True) as conductor:
        handle = await conductor.start(big_step, 1000)
        assert await handle.result(timeout=WAIT) == 1000
    assert await keys(backend, BLOBS_PREFIX) == []


async def test_a_blob_another_run_refers_to_survives_gc(backend: Backend) -> None:
    async with make_conductor(
        backend, big_result, virtual_clock=True, blob_threshold=1000
    ) as conductor:
        first = await conductor.start(big_result, 5000, run_id="first")
        await first.result(timeout=WAIT)
    outcome = await collect(backend)  # with no agent holding the run's lease
    assert outcome.runs == ["first"]
    assert len(outcome.blobs) == 1
    async with make_conductor(
        backend, big_result, virtual_clock=True, blob_threshold=1000
    ) as conductor:
        second = await conductor.start(big_result, 5000, run_id="second")
        await second.result(timeout=WAIT)
        third = await conductor.start(big_result, 5000, run_id="third")  # same bytes
        await third.result(timeout=WAIT)
    (blob,) = await keys(backend, BLOBS_PREFIX)
    sha = blob[len(BLOBS_PREFIX) :]
    assert len(await keys(backend, blob_ref_prefix(sha))) == 2
    gone = await collect(backend)
    assert sorted(gone.runs) == ["second", "third"]
    assert gone.blobs == [sha]


async def test_a_writer_keeps_its_bytes_inline_while_gc_marks_the_blob(backend: Backend) -> None:
    """The race gc must not lose: a run refers to a blob gc is about to delete."""
    policy = PayloadPolicy(blob_threshold=100)
    value = encode_payload("m" * 500)
    sha = hashlib.sha256(value.data).hexdigest()
    await backend.create(BLOBS_PREFIX + sha, value.data)  # an old, unreferenced blob
    await backend.put(BLOB_MARKS_PREFIX + sha, b"0")  # gc has marked it for deletion
    event = pb.Event(completed=pb.Completed(result=value))
    stored = await seal(backend, "racer", event, policy)
    assert len(stored) > 500  # inline: the writer did not reuse the marked blob
    # ... and its reference makes gc's second listing keep the blob
    assert await keys(backend, blob_ref_prefix(sha)) == [f"{blob_ref_prefix(sha)}racer"]
    await backend.delete(BLOB_MARKS_PREFIX + sha)
    event = pb.Event(completed=pb.Completed(result=value))
    stored = await seal(backend, "racer", event, policy)
    assert len(stored) < 200  # no mark: the blob is reused
    parsed = pb.Event.FromString(stored)
    await open_records(backend, "racer", [parsed])
    assert parsed.completed.result.data == value.data


async def test_over_the_hard_limit_fails_before_anything_is_written(backend: Backend) -> None:
    async with Conductor(backend, max_payload=1000, poll_interval=0.05) as conductor:
        conductor.register(big_step)
        with pytest.raises(CodecError, match="2,009 bytes are over the payload limit of 1,000"):
            await conductor.start(big_step, "x" * 2000)  # type: ignore[arg-type]
    assert await backend.list("") == []


def test_the_threshold_is_settable() -> None:
    conductor = Conductor("memory://", blob_threshold=1234)
    assert conductor.blob_threshold == 1234
    conductor.blob_threshold = 99
    assert conductor.store.payloads.blob_threshold == 99
    assert Conductor("memory://").blob_threshold == 256 * 1024
    with pytest.raises(ValueError, match="blob_threshold must be at least 1 byte"):
        Conductor("memory://", blob_threshold=0)
    with pytest.raises(ValueError, match="blob_threshold must be at least 1 byte, got -1"):
        conductor.blob_threshold = -1


async def test_gc_collects_the_blob_of_a_start_that_died_before_its_first_segment(
    backend: Backend,
) -> None:
    policy = PayloadPolicy(blob_threshold=100)
    started = pb.Event(started=pb.Started(run_id="died", args=encode_payload("a" * 500)))
    await seal(backend, "died", started, policy)  # the blob and its references; no segment
    (blob,) = await keys(backend, BLOBS_PREFIX)
    assert (await collect(backend)).blobs == []  # it may still be starting
    (ref,) = await keys(backend, "blobrefs/")
    await backend.put(ref, b"0")  # as if written long ago
    assert (await collect(backend)).blobs == [blob[len(BLOBS_PREFIX) :]]
    assert await backend.list("") == []


PAYLOADS = st.builds(
    lambda data: pb.Payload(codec="json", data=data), st.binary(min_size=1, max_size=400)
)
EVENTS = st.one_of(
    st.builds(lambda p: pb.Event(completed=pb.Completed(result=p)), PAYLOADS),
    st.builds(
        lambda p, n: pb.Event(step_completed=pb.StepCompleted(position=n, result=p, name="f")),
        PAYLOADS,
        st.integers(0, 99),
    ),
    st.builds(lambda p: pb.Event(event_received=pb.EventReceived(id="e", value=p)), PAYLOADS),
    st.just(pb.Event(cancelled=pb.Cancelled())),
    st.builds(lambda n: pb.Event(timer_fired=pb.TimerFired(position=n)), st.integers(0, 9)),
)
RECORDS = st.one_of(
    st.builds(lambda events: pb.Segment(run_id="r", events=events), st.lists(EVENTS, max_size=5)),
    st.builds(
        lambda a, r: pb.RunMeta(run_id="r", args=a, result=r, attributes=[pb.Attribute(name="x")]),
        PAYLOADS,
        PAYLOADS,
    ),
    st.builds(lambda v: pb.InboxEntry(id="i", value=v), PAYLOADS),
)


@given(record=RECORDS, threshold=st.integers(1, 300), codecs=st.sampled_from([(), "zlib"]))
@settings(max_examples=60, deadline=None)
def test_seal_then_open_gives_the_record_back(record: Any, threshold: int, codecs: Any) -> None:
    """Whatever goes to blobs or through codecs, reading gives back what was written."""
    policy = PayloadPolicy((ZlibCodec(),) if codecs else (), threshold)
    before = record.SerializeToString()

    async def round_trip() -> Any:
        backend = MemoryBackend()
        stored = await seal(backend, "r", record, policy)
        assert record.SerializeToString() == before  # the record itself is left alone
        parsed = type(record).FromString(stored)
        await open_records(backend, "r", [parsed])
        return parsed

    assert asyncio.run(round_trip()) == record


async def test_the_merge_budget_counts_the_bytes_in_blobs(backend: Backend) -> None:
    """Events whose values are blobs are small in the inbox, not once they are read."""
    store = RunStore(backend, payloads=PayloadPolicy(blob_threshold=100))
    for i in range(6):
        value = pb.Payload(codec="json", data=b'"' + str(i).encode() * 1000 + b'"')
        await store.post("r", pb.InboxEntry(id=f"e{i}", name="big", sent_at_ms=i, value=value))
    assert len(await keys(backend, BLOBS_PREFIX)) == 6
    intake = Intake(store, "r", max_bytes=2500)
    read = await intake.read()
    assert [entry.id for _, entry in read] == ["e0", "e1"]
    assert read[0][1].value.data == b'"' + b"0" * 1000 + b'"'  # the blob was read
    assert intake.more
