"""An agent that read a run before its start wrote the summary does not blank the start's fields."""

from __future__ import annotations

from substantial._agent.summary import RunSummary
from substantial._store import hints
from substantial._store.runs import RunStore, StoredLog
from substantial.backends import MemoryBackend
from substantial.codec import encode_payload
from substantial.protocol import substantial_pb2 as pb


async def test_a_summary_written_without_one_read_keeps_the_start() -> None:
    store = RunStore(MemoryBackend())
    args = encode_payload([[21], {}])
    started = pb.Event(at_ms=7, started=pb.Started(run_id="r", workflow="wf", args=args))
    # The agent read the log and no summary (the start had not written it yet): it builds
    # on a summary rebuilt from the log, as a wake-up does ...
    stored = StoredLog([started], 0, [1])
    rebuilt = await hints.trusted_summary(store, "r", None, None, stored)
    summary = RunSummary(store, "r", rebuilt, None, agent="a")
    # ... then the start wrote its summary ...
    client = pb.RunMeta(run_id="r", workflow="wf", args=args, created_ms=7, log_seq=0)
    await store.write_meta(client, current=(None, None))
    # ... and the agent's wake-up ends: its summary must still name the workflow.
    await summary.record_state(1, None, wake=None, waiting=["event 'go'"], published=None)
    meta = await store.read_meta("r")
    assert meta is not None
    assert meta.workflow == "wf"
    assert meta.args == args
    assert meta.created_ms == 7
    assert meta.log_seq == 1
