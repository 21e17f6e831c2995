"""
A run whose summary the start has not written yet (it writes segment 0 first, and an
agent in another process may wake the run in between), or never wrote (it died): the
summary the agent writes still names the workflow, the arguments and the start time, so
``list`` and the web view can show them.
"""

from __future__ import annotations

import json

import pytest

from substantial import Conductor, Context, workflow
from substantial._store.keys import meta_key
from substantial.protocol import substantial_pb2 as pb
from tests.harness import wait_until


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
    assert await conductor.handle("early").result() == "hi"  # read from the log

    async def summary() -> pb.RunMeta | None:
        entry = await conductor.backend.get(meta_key("early"))
        return None if entry is None else pb.RunMeta.FromString(entry[0])

    async def summary_says_completed() -> bool:
        meta = await summary()
        return meta is not None and meta.status == pb.RUN_STATUS_COMPLETED

    await wait_until(summary_says_completed, what="the agent's summary of the ended run")
    meta = await summary()
    assert meta is not None  # the stored record itself: list and the web view read it
    assert (meta.workflow, meta.created_ms) == ("summary.echo", at)
    assert json.loads(meta.args.data) == [["hi"], {}]
