"""
Issue #10, "the log wins": a bad inbox entry, a poison event, a garbage or lying summary
never stop a run, fail it, or get it deleted; merges are bounded by bytes. The garbage is
planted with the backend's own ``put``, as an attacker (or a bug) would.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from substantial import Conductor, Context, RunStatus, workflow
from substantial import ops as inspect
from substantial._client.handle import Handle
from substantial._core import constants
from substantial._store import quarantine
from substantial._store.inbox import Intake
from substantial._store.keys import inbox_prefix, meta_key, quarantine_prefix
from substantial._store.runs import RunStore
from substantial.backends import Backend, from_url
from substantial.protocol import substantial_pb2 as pb
from tests import chaos_app
from tests.agents import Agent, backend_url, check_log
from tests.conftest import BACKENDS
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until
from tests.test_cli_commands import cli, lines


@workflow(name="logwins.waits")
async def waits(c: Context, x: int) -> int:
    n = await c.receive("n")
    return x * int(n)


@workflow(name="logwins.sleeps")
async def sleeps(c: Context, x: int) -> int:
    await c.sleep(1.0)
    return x + 1


@workflow(name="logwins.sums")
async def sums(c: Context, count: int) -> int:
    total = 0
    for _ in range(count):
        total += len(await c.receive("blob"))
    return total


pytestmark = pytest.mark.conductor(waits, sleeps, sums)


#: A value the agent cannot decode: a dataclass of the sender's ``__main__``.
POISON = pb.Payload(codec="json", data=b'{"$t":"dataclass","c":"__main__:Poison","v":{}}')


def early_key(run_id: str, name: str) -> str:
    """An inbox key that sorts before any entry sent now."""
    return f"{inbox_prefix(run_id)}{1:015d}-{name}"


def lying_summary(run_id: str, status: int, log_seq: int) -> bytes:
    return pb.RunMeta(
        run_id=run_id, workflow="logwins.waits", status=status, log_seq=log_seq,
        created_ms=1, updated_ms=1, result=pb.Payload(),
    ).SerializeToString()  # fmt: skip


# ---- inbox quarantine ----


async def test_garbage_inbox_entry_is_set_aside_and_the_run_completes(
    conductor: Conductor, backend: Backend
) -> None:
    run = await conductor.start(waits, 6)
    await wait_for_status(run, RunStatus.WAITING)
    garbage = early_key(run.run_id, "garbage")
    await backend.put(garbage, b"\xff\x00 not an inbox entry \xfe")
    await run.send("n", 7)
    assert await run.result(timeout=WAIT) == 42
    assert await run.status() is RunStatus.COMPLETED

    assert await backend.list_all(inbox_prefix(run.run_id)) == []
    (entry,) = await quarantine.list_quarantined(backend, run.run_id)
    assert entry.key == quarantine_prefix(run.run_id) + garbage.rpartition("/")[2]
    assert entry.inbox_key == garbage
    assert "not an InboxEntry" in entry.reason
    assert entry.data == b"\xff\x00 not an inbox entry \xfe"
    details = await inspect.describe_run(backend, run.run_id)
    assert [q.key for q in details.quarantined] == [entry.key]

    assert await quarantine.drop(backend, run.run_id, ["no-such-entry"]) == []
    assert await quarantine.drop(backend, run.run_id, [garbage.rpartition("/")[2]]) == [entry.key]
    assert await quarantine.list_quarantined(backend, run.run_id) == []


async def test_poison_event_is_set_aside_and_later_events_merge(
    conductor: Conductor, backend: Backend
) -> None:
    run = await conductor.start(waits, 2)
    await wait_for_status(run, RunStatus.WAITING)
    poison = pb.InboxEntry(id="poison", name="n", sent_at_ms=1, value=POISON)
    await backend.put(early_key(run.run_id, "poison"), poison.SerializeToString())
    no_id = pb.InboxEntry(name="n", sent_at_ms=1, value=pb.Payload(codec="json", data=b"1"))
    await backend.put(early_key(run.run_id, "noid"), no_id.SerializeToString())
    await run.send("n", 21)
    assert await run.result(timeout=WAIT) == 42  # the good event, not the poison one

    reasons = {
        q.inbox_key: q.reason for q in await quarantine.list_quarantined(backend, run.run_id)
    }
    assert "cannot be decoded" in reasons[early_key(run.run_id, "poison")]
    assert "__main__:Poison" in reasons[early_key(run.run_id, "poison")]
    assert "no event id" in reasons[early_key(run.run_id, "noid")]
    history = await run.history()
    received = [e.details["id"] for e in history if e.kind == "event_received"]
    assert "poison" not in received  # the log never holds it
    assert len(received) == 1


# ---- summaries are hints ----


@pytest.mark.real_clock  # the run must still be SLEEPING when its summary is replaced
async def test_garbage_summary_on_a_sleeping_run(conductor: Conductor, backend: Backend) -> None:
    run = await conductor.start(sleeps, 1)
    await wait_for_status(run, RunStatus.SLEEPING)
    await backend.put(meta_key(run.run_id), b"\xff\xfe garbage summary")
    shown = await inspect.get_run(backend, run.run_id)  # rebuilt from the log
    assert shown.workflow == "logwins.sleeps"
    assert shown.status is RunStatus.PENDING
    assert shown.args == [[1], {}]
    assert await run.result(timeout=WAIT) == 2
    meta = await conductor.store.read_meta(run.run_id)  # rewritten: it parses again
    assert meta is not None
    assert meta.status == pb.RUN_STATUS_COMPLETED
    assert meta.workflow == "logwins.sleeps"


async def test_lying_summary_neither_answers_nor_blocks(
    conductor: Conductor, backend: Backend
) -> None:
    # COMPLETED, of segment 10**6, with an empty result: result() checks the log, asks an
    # agent to rewrite the summary, and waits for the real end.
    run = await conductor.start(waits, 3)
    await wait_for_status(run, RunStatus.WAITING)
    await backend.put(
        meta_key(run.run_id), lying_summary(run.run_id, pb.RUN_STATUS_COMPLETED, 10**6)
    )
    with pytest.raises(TimeoutError):
        await run.result(timeout=0.5)
    await wait_for_status(run, RunStatus.WAITING)  # an agent rewrote it from the log
    await run.send("n", 5)
    assert await run.result(timeout=WAIT) == 15
    meta = await conductor.store.read_meta(run.run_id)
    assert meta is not None
    assert meta.log_seq < 10
    assert meta.status == pb.RUN_STATUS_COMPLETED


async def test_summary_saying_failed_is_not_a_failure(
    conductor: Conductor, backend: Backend
) -> None:
    run = await conductor.start(waits, 4)
    await wait_for_status(run, RunStatus.WAITING)
    await backend.put(meta_key(run.run_id), lying_summary(run.run_id, pb.RUN_STATUS_FAILED, 1))
    with pytest.raises(TimeoutError):  # not RunFailed: the log does not end in a failure
        await run.result(timeout=0.5)
    await run.send("n", 2)
    assert await run.result(timeout=WAIT) == 8


async def test_result_of_a_finished_run_costs_one_extra_read(backend: Backend) -> None:
    async with make_conductor(backend) as conductor:
        conductor.register(waits)
        run = await conductor.start(waits, 1)
        await run.send("n", 1)
        assert await run.result(timeout=WAIT) == 1
    # no agent now: only result() uses the backend
    before = backend.requests.copy()
    assert await Handle(RunStore(backend), run.run_id).result() == 1
    cost = backend.requests - before
    assert dict(cost) == {"get": 2}  # the summary, and the log segment it names


# ---- gc decides by the log ----


async def test_gc_keeps_a_live_run_whose_summary_lies(backend: Backend) -> None:
    async with make_conductor(backend) as conductor:
        conductor.register(waits)
        live = await conductor.start(waits, 5)
        done = await conductor.start(waits, 1)
        await done.send("n", 1)
        assert await done.result(timeout=WAIT) == 1
        await wait_for_status(live, RunStatus.WAITING)
    lie = lying_summary(live.run_id, pb.RUN_STATUS_COMPLETED, 1)  # and updated long ago
    await backend.put(meta_key(live.run_id), lie)
    # An agent stopped between claiming a run and working on it leaves the lease to
    # expire (nothing is lost: it is a lease); gc leaves a leased run alone till then.
    store = RunStore(backend)

    async def unleased() -> bool:
        lease = await store.lease_holder(done.run_id)
        return lease is None or lease.expires_ms < store.clock.now_ms()

    await wait_until(unleased, WAIT, "the finished run's lease to lapse")
    outcome = await inspect.gc(backend, timedelta(0), now=datetime.now(UTC) + timedelta(1))
    assert outcome.runs == [done.run_id], outcome
    assert outcome.live == [live.run_id]
    async with make_conductor(backend) as conductor:
        conductor.register(waits)
        await conductor.handle(live.run_id).send("n", 2)
        assert await conductor.handle(live.run_id).result(timeout=WAIT) == 10


# ---- merges bounded by bytes ----


async def test_intake_stops_at_the_byte_budget(backend: Backend) -> None:
    store = RunStore(backend)
    for i in range(6):
        value = pb.Payload(codec="json", data=b'"' + b"x" * 1000 + b'"')
        await store.post("r", pb.InboxEntry(id=f"e{i}", name="blob", sent_at_ms=i, value=value))
    intake = Intake(store, "r", max_bytes=2500)
    assert [entry.id for _, entry in await intake.read()] == ["e0", "e1"]
    assert intake.more
    assert intake.full
    assert await intake.read() == []  # the rest waits for the next wake-up
    single = Intake(store, "r", max_bytes=10)  # always at least one entry
    assert [entry.id for _, entry in await single.read()] == ["e0"]
    counted = Intake(store, "r", limit=6, max_bytes=10**6)
    assert len(await counted.read()) == 6
    assert counted.more  # a full page: maybe more


# Real clock: on a frozen virtual clock the "more" entry a wake-up schedules at now has
# the key of the "more" entry it consumed, and the clean-up deletes it (see the report).
@pytest.mark.real_clock
async def test_a_run_flooded_with_large_events_merges_them_a_budget_at_a_time(
    conductor: Conductor, backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "MERGE_BYTES", 3000)
    run = await conductor.start(sums, 8)
    await wait_for_status(run, RunStatus.WAITING)
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(run.send, "blob", "x" * 1000)
    assert await run.result(timeout=WAIT) == 8000
    stored = await conductor.store.read_log(run.run_id)
    start = 0
    for end in stored.segment_ends:
        kinds = [e.WhichOneof("kind") for e in stored.events[start:end]]
        assert kinds.count("event_received") <= 2  # 3000 bytes hold two ~1 KB entries
        start = end


# ---- through a real agent process, and the CLI ----

PROCESS_BACKENDS = [p for p in BACKENDS if p.values[0] != "memory"]


@pytest.mark.parametrize("kind", PROCESS_BACKENDS)
async def test_an_agent_process_gets_past_garbage_inbox_poison_and_summary(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = await backend_url(kind, request, tmp_path)
    effects = tmp_path / "effects"
    effects.mkdir()
    backend = from_url(url)
    client = Conductor(backend)  # no agent in this process
    client.register(chaos_app.mix)
    agent = Agent(url, effects, tmp_path, {"CHAOS_POLL": "0.05", "CHAOS_STEP_SECONDS": "0"})
    try:
        run = await client.start(chaos_app.mix, 0, run_id="mix-garbage")
        await backend.put(early_key(run.run_id, "garbage"), b"\x00\xff garbage")
        poison = pb.InboxEntry(id="poison", name="x", sent_at_ms=1, value=POISON)
        await backend.put(early_key(run.run_id, "poison"), poison.SerializeToString())
        await backend.put(meta_key(run.run_id), b"\xff\xfe garbage summary")
        await run.send("x", 5)
        agent.spawn()
        agent.wait_ready()
        assert await run.result(timeout=WAIT) == {"a": 10, "x": 5, "b": 50, "h": [], "d": 0}
        set_aside = await quarantine.list_quarantined(backend, run.run_id)
        assert sorted(q.inbox_key.rpartition("-")[2] for q in set_aside) == ["garbage", "poison"]
        assert "run mix-garbage: inbox entry" in agent.stderr()  # one warning naming it
        await check_log(backend, run.run_id)
    finally:
        agent.kill()
        await backend.aclose()


async def test_cli_gc_keeps_a_live_run_and_quarantine_lists_and_drops(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    backend = from_url(url)
    async with make_conductor(backend) as conductor:
        conductor.register(waits)
        run = await conductor.start(waits, 5, run_id="live-1")
        await wait_for_status(run, RunStatus.WAITING)
        await backend.put(early_key(run.run_id, "garbage"), b"\x00\xff garbage")
        await run.send("n", 0)  # the agent sets the garbage aside, then the run completes
        assert await run.result(timeout=WAIT) == 0
        live = await conductor.start(waits, 5, run_id="live-2")
        await wait_for_status(live, RunStatus.WAITING)
    await backend.put(meta_key("live-2"), lying_summary("live-2", pb.RUN_STATUS_COMPLETED, 1))

    gc = await cli("gc", "--older-than", "0s", url=url)
    assert gc.returncode == 0, gc.stderr
    assert "skipped live-2: its summary says finished, its log does not" in gc.stdout
    assert "deleted live-1" in gc.stdout
    assert [line.split()[0] for line in lines((await cli("list", url=url)).stdout)[1:]] == [
        "live-2"
    ]

    async with make_conductor(backend) as conductor:
        conductor.register(waits)
        await backend.put(early_key("live-2", "garbage"), b"\x00\xff garbage")
        await conductor.handle("live-2").send("n", 2)
        assert await conductor.handle("live-2").result(timeout=WAIT) == 10
    key = quarantine_prefix("live-2") + f"{1:015d}-garbage"
    shown = await cli("show", "live-2", url=url)
    assert f"set aside {key}: not an InboxEntry record" in shown.stdout
    listed = await cli("quarantine", "live-2", url=url)
    assert listed.stdout.startswith(key)
    missing = await cli("quarantine", "live-2", "--drop", "nope", url=url)
    assert missing.returncode == 1
    assert "not in the quarantine of run 'live-2': nope" in missing.stderr
    dropped = await cli("quarantine", "live-2", "--drop", f"{1:015d}-garbage", url=url)
    assert (dropped.returncode, dropped.stdout) == (0, f"dropped {key}\n")
    assert (await cli("quarantine", "live-2", url=url)).stdout == ""
    await backend.aclose()
