"""
A run whose summary the start has not written yet (it writes segment 0 first, and an
agent in another process may wake the run in between), or never wrote (it died): the
summary the agent writes still names the workflow, the arguments and the start time, so
``list`` and the web view can show them.
"""

from __future__ import annotations

import pytest

from substantial import Conductor, Context, RunStatus, ops, workflow
from substantial._store.keys import meta_key
from substantial.protocol import substantial_pb2 as pb
from tests.harness import wait_for_status


@workflow(name="summary.echo")
async def echo(c: Context, text: str) -> str:
    return text


@pytest.mark.conductor(echo)
async def test_agent_fills_in_the_summary_a_start_has_not_written(conductor: Conductor) -> None:
    store = conductor.store
    started = pb.Started(run_id="early", workflow=echo.name,
                         args=pb.Payload(codec="json", data=b'[["hi"], {}]'))  # fmt: skip
    at = store.clock.now_ms()
    # What Client.create_run writes before the summary: the schedule entry and segment 0.
    await store.schedule("early", at, "s")
    assert await store.append("early", 0, [pb.Event(at_ms=at, started=started)])
    await wait_for_status(conductor.handle("early"), RunStatus.COMPLETED)
    assert await conductor.handle("early").result() == "hi"
    summary = await ops.get_run(conductor.backend, "early")
    assert (summary.workflow, summary.args, summary.result) == ("summary.echo", [["hi"], {}], "hi")
    assert summary.created is not None
    assert int(summary.created.timestamp() * 1000) == at
    assert await conductor.backend.get(meta_key("early")) is not None
