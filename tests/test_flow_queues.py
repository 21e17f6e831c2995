"""Queues and routing: an agent polls the queues it serves and claims only runs it knows."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from substantial import Conductor, Context, InvalidName, RunStatus, RunTerminated, workflow
from substantial._store.keys import SCHEDULE_PREFIX, ScheduleEntry, schedule_key, schedule_prefix
from substantial.backends import Backend, FSBackend, MemoryBackend
from substantial.cli import main
from substantial.codec import encode_payload
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status


@workflow(name="queues.invoice", queue="billing")
async def invoice(c: Context, n: int) -> int:
    return await c.save(lambda: n * 2)


@workflow(name="queues.refund", queue="billing")
async def refund(c: Context, n: int) -> int:
    return await c.save(lambda: -n)


@workflow(name="queues.mail")
async def mail(c: Context, to: str) -> str:
    return await c.save(lambda: f"sent to {to}")


async def _poll(conductor: Conductor) -> int:
    """One poll of a conductor whose agent is not running: how many runs it claimed."""
    async with anyio.create_task_group() as work:
        claimed, _ = await conductor._claim_due(work)
    return claimed


def test_a_workflow_names_its_queue_and_an_agent_serves_its_workflows_queues() -> None:
    assert invoice.queue == "billing"
    assert mail.queue == "default"
    assert Conductor("memory://").queues == ["default"]
    both = Conductor("memory://")
    both.register(invoice, mail)
    assert both.queues == ["billing", "default"]
    assert Conductor("memory://", queues=["x", "y"]).queues == ["x", "y"]
    with pytest.raises(InvalidName, match="invalid queue name 'a/b'"):
        workflow(queue="a/b")
    with pytest.raises(InvalidName):
        Conductor("memory://", queues=["../up"])


async def test_each_queue_has_its_own_index_and_agents_of_other_apps_never_see_it(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="substantial")
    billing_app = make_conductor(backend, invoice, name="billing-agent")
    mail_app = make_conductor(backend, mail, name="mail-agent")
    bill = await billing_app.start(invoice, 21)
    note = await mail_app.start(mail, "ada")
    [entry] = [
        ScheduleEntry.parse(key) for key in await backend.list_all(schedule_prefix("billing"))
    ]
    assert entry is not None
    assert entry.run_id == bill.run_id
    assert entry.route.queue == "billing"
    assert [ScheduleEntry.parse(k).run_id for k in await backend.list_all(SCHEDULE_PREFIX)] == [  # type: ignore[union-attr]
        note.run_id
    ]

    assert await _poll(mail_app) == 1  # its own run only
    assert await mail_app.store.lease_holder(bill.run_id) is None
    async with billing_app:
        assert await bill.result(timeout=WAIT) == 42
    async with mail_app:
        assert await note.result(timeout=WAIT) == "sent to ada"
    # Neither agent logged a word about the other's run.
    for record in caplog.records:
        text = record.getMessage()
        assert not (bill.run_id in text and "mail-agent" in text), text
        assert not (note.run_id in text and "billing-agent" in text), text


async def test_an_agent_never_claims_a_run_of_a_workflow_it_does_not_know(
    backend: Backend,
) -> None:
    knows_invoice = make_conductor(backend, invoice)  # serves billing, knows no refund
    run = await knows_invoice.start("queues.refund", 5, queue="billing")
    assert await _poll(knows_invoice) == 0
    assert await knows_invoice.store.lease_holder(run.run_id) is None
    # Any agent of the queue carries out a termination, knowing the workflow or not.
    await run.terminate("no refunds today")
    async with knows_invoice:
        with pytest.raises(RunTerminated):
            await run.result(timeout=WAIT)
    async with make_conductor(backend, invoice, refund) as both:
        again = await both.start(refund, 5)
        assert await again.result(timeout=WAIT) == -5


async def test_a_run_written_before_queues_existed_is_still_run(backend: Backend) -> None:
    """Old runs: no queue in their start, a schedule key with no workflow mark."""
    conductor = make_conductor(backend, mail)
    started = pb.Started(run_id="old-1", workflow="queues.mail", seed=os.urandom(16))
    started.args.CopyFrom(encode_payload([["bob"], {}]))
    at = conductor.store.clock.now_ms()
    await backend.put(schedule_key(at, "old-1", "s1234abcd"), b"")
    assert await conductor.store.append("old-1", 0, [pb.Event(at_ms=at, started=started)])
    async with conductor:
        assert await conductor.handle("old-1").result(timeout=WAIT) == "sent to bob"


async def test_an_idle_poll_lists_each_served_queue_once(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "s")
    conductor = make_conductor(backend, invoice, mail)
    before = Counter(backend.requests)
    assert await _poll(conductor) == 0
    cost = Counter(backend.requests)
    cost.subtract(before)
    assert +cost == Counter({"list": 2})
    await conductor.pause_queue("billing")  # a paused queue costs the same: its mark is listed
    before = Counter(backend.requests)
    assert await _poll(conductor) == 0
    cost = Counter(backend.requests)
    cost.subtract(before)
    assert +cost == Counter({"list": 2})


def test_the_cli_pauses_and_resumes_runs_and_queues(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    run_id = anyio.run(_start_waiting, url)
    runner = CliRunner()
    done = runner.invoke(main, ["pause", run_id, "--backend", url])
    assert done.exit_code == 0, done.output
    assert f"pause requested for {run_id}" in done.output
    anyio.run(_reaches, url, run_id, RunStatus.PAUSED)
    done = runner.invoke(main, ["resume", run_id, "--backend", url])
    assert done.exit_code == 0
    assert "resume requested" in done.output
    anyio.run(_reaches, url, run_id, RunStatus.WAITING)
    for args, said in (
        (["queue", "status", "billing"], "running"),
        (["queue", "pause", "billing"], "queue billing paused"),
        (["queue", "status", "billing"], "paused"),
        (["queue", "resume", "billing"], "queue billing resumed"),
        (["queue", "status", "billing"], "running"),
    ):
        done = runner.invoke(main, [*args, "--backend", url])
        assert done.exit_code == 0, done.output
        assert done.output.strip() == said
    done = runner.invoke(main, ["queue", "pause", "no/such", "--backend", url])
    assert done.exit_code == 1
    assert "invalid queue name" in done.output


@workflow(name="queues.waits")
async def _waits_forever(c: Context) -> None:
    await c.receive("never")


async def _start_waiting(url: str) -> str:
    async with make_conductor(url, _waits_forever) as conductor:
        handle = await conductor.start(_waits_forever)
        await wait_for_status(handle, RunStatus.WAITING)
        return handle.run_id


async def _reaches(url: str, run_id: str, status: RunStatus) -> None:
    async with make_conductor(url, _waits_forever, virtual_clock=True) as conductor:
        await wait_for_status(conductor.handle(run_id), status)


async def test_higher_priority_runs_are_claimed_first(backend: Backend) -> None:
    conductor = make_conductor(backend, mail, concurrency=1)  # one run at a time
    low = [await conductor.start(mail, f"low-{i}") for i in range(3)]
    high = await conductor.start(mail, "high", priority=9)
    middle = await conductor.start(mail, "middle", priority=5)
    claimed_in_order = []
    for _ in range(5):
        assert await _poll(conductor) == 1
        for handle in [*low, high, middle]:
            if handle.run_id not in claimed_in_order and (await handle.status()).finished:
                claimed_in_order.append(handle.run_id)
    assert claimed_in_order[:2] == [high.run_id, middle.run_id]
    assert sorted(claimed_in_order[2:]) == sorted(h.run_id for h in low)
    meta = await conductor.store.read_meta(high.run_id)
    assert meta is not None
    assert meta.priority == 9


def test_the_queues_served_can_be_set_and_survive_a_worker_rebuild() -> None:
    from substantial._cli.agent import _rebuilt

    conductor = Conductor("memory://")
    conductor.register(invoice)
    assert conductor.queues == ["billing"]
    assert conductor.queues_given is None
    conductor.queues = ["billing", "urgent"]  # what `substantial worker --queue` sets
    assert conductor.queues == ["billing", "urgent"]
    assert _rebuilt(conductor, MemoryBackend()).queues == ["billing", "urgent"]
    conductor.queues = None
    assert conductor.queues == ["billing"]


async def test_an_agent_that_took_a_pause_of_an_unknown_workflow_hands_the_run_on(
    backend: Backend,
) -> None:
    knows_invoice = make_conductor(backend, invoice)
    run = await knows_invoice.start("queues.refund", 5, queue="billing")
    await run.pause()  # any agent of the queue may carry out a pause...
    await run.resume()  # ...and the pause and resume cancel out
    assert await _poll(knows_invoice) == 1
    assert await run.status() is RunStatus.PENDING  # not parked: handed on, untouched
    assert [e.kind for e in await run.history()] == ["started"]
    async with make_conductor(backend, invoice, refund):
        assert await run.result(timeout=WAIT) == -5
