"""
The web view's flow-control parts over real runs: pausing and resuming a run from its
page, queued and paused runs on the runs page, the schedules page and the limits and
queues page with their actions, and the safety rules for all of them.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta

import pytest

from substantial import Conductor, Context, RunStatus, workflow
from substantial.backends import Backend
from tests.harness import WAIT, wait_for_status
from tests.ui_app import HOSTILE, approval, double
from tests.ui_client import csrf_of, ui_client

gate = threading.Event()


@workflow(name="ui.gated", queue="ui-flow", concurrency_per_key=1)
async def gated(c: Context, name: str) -> str:
    return await c.save(lambda: gate.wait(WAIT) and name)


def _run_ids(page: str) -> list[str]:
    return re.findall(r'<td><a href="/runs/([^"]+)">', page)


YES = {"confirmed": "yes"}


def _posts(page: str) -> list[str]:
    return re.findall(r'<form method="post" action="([^"]+)"', page)


@pytest.mark.conductor(approval)
async def test_pause_and_resume_a_run_from_its_page(conductor: Conductor) -> None:
    handle = await conductor.start(approval, "o-1", run_id="pause-me", priority=3)
    await wait_for_status(handle, RunStatus.WAITING)
    async with ui_client(conductor.backend) as client:
        page = (await client.get("/runs/pause-me")).text
        assert "/runs/pause-me/pause" in _posts(page)
        assert "/runs/pause-me/resume" not in _posts(page)
        assert "substantial pause --backend memory:// pause-me" in page
        assert re.search(r">default</a>, priority 3<", page)
        csrf = csrf_of(page)
        asked = await client.post("/runs/pause-me/pause", data={"csrf": csrf})
        assert asked.status_code == 200
        assert "Yes, pause the run" in asked.text
        assert "substantial pause --backend memory:// pause-me" in asked.text
        assert await handle.status() is RunStatus.WAITING  # not before the confirmation
        done = await client.post("/runs/pause-me/pause", data={"csrf": csrf, **YES})
        assert done.status_code == 303
        assert done.headers["location"] == "/runs/pause-me?said=pause%20requested"
        await wait_for_status(handle, RunStatus.PAUSED)

        paused = (await client.get("/runs/pause-me")).text
        assert 'id="run-status">paused<' in paused
        assert "paused: no agent runs it until it is resumed" in paused
        assert "/runs/pause-me/resume" in _posts(paused)
        assert "/runs/pause-me/pause" not in _posts(paused)
        async with ui_client(conductor.backend) as fresh:  # a new snapshot of summaries
            assert _run_ids((await fresh.get("/?status=paused")).text) == ["pause-me"]
            assert _run_ids((await fresh.get("/?status=waiting")).text) == []

        asked = await client.post("/runs/pause-me/resume", data={"csrf": csrf})
        assert "substantial resume --backend memory:// pause-me" in asked.text
        await client.post("/runs/pause-me/resume", data={"csrf": csrf, **YES})
        await wait_for_status(handle, RunStatus.WAITING)
    await handle.send("approve", True)
    assert (await handle.result())["decision"] is True


@pytest.mark.conductor(gated)
async def test_queued_runs_show_their_limit_and_filter_by_queue(conductor: Conductor) -> None:
    gate.clear()
    first = await conductor.start(gated, "a1", run_id="gated-1", concurrency_key="tenant-a")
    await wait_for_status(first, RunStatus.RUNNING)
    second = await conductor.start(
        gated, "a2", run_id="gated-2", concurrency_key="tenant-a", priority=7
    )
    await wait_for_status(second, RunStatus.QUEUED)
    try:
        async with ui_client(conductor.backend) as client:
            queued = (await client.get("/?status=queued&queue=ui-flow")).text
            assert _run_ids(queued) == ["gated-2"]
            assert "queued behind the concurrency limit of workflow ui.gated" in queued
            assert '<option value="ui-flow" selected>' in queued
            assert "cancel --backend memory:// --status queued --queue ui-flow</code>" in queued
            assert _run_ids((await client.get("/?queue=default")).text) == []
            assert set(_run_ids((await client.get("/?queue=ui-flow")).text)) == {
                "gated-1", "gated-2"
            }  # fmt: skip
            page = (await client.get("/runs/gated-2")).text
            assert "ui.gated (key &#39;tenant-a&#39;)" in page
            assert re.search(r'href="/\?queue=ui-flow">ui-flow</a>, priority 7<', page)
    finally:
        gate.set()
    assert await second.result() == "a2"


@pytest.mark.parametrize("backend", ["memory", "files"], indirect=True)
async def test_schedules_page_shows_and_steers_each_schedule(backend: Backend) -> None:
    conductor = Conductor(backend)  # no agent: nothing ticks while the test looks
    await conductor.schedule(
        "nightly", HOSTILE, 2, cron="0 3 * * *", timezone="Europe/Zurich", catchup="all"
    )
    async with ui_client(backend) as client:
        page = (await client.get("/schedules")).text
        assert "<code>0 3 * * *</code> in Europe/Zurich" in page
        assert "<dd>all</dd>" in page
        assert HOSTILE not in page
        assert "&lt;script&gt;" in page
        ticks = re.findall(r"\d{4}-\d\d-\d\dT03:00:00\+0[12]:00", page)
        assert len(ticks) == 5
        assert set(_posts(page)) == {"/schedules/nightly/pause", "/schedules/nightly/trigger"}
        assert "substantial schedule pause --backend memory:// nightly" in page
        csrf = csrf_of(page)
        asked = await client.post("/schedules/nightly/pause", data={"csrf": csrf})
        assert "substantial schedule pause --backend memory:// nightly" in asked.text
        assert not (await conductor.get_schedule("nightly").describe()).paused
        done = await client.post("/schedules/nightly/pause", data={"csrf": csrf, **YES})
        assert done.headers["location"] == "/schedules?said=schedule%20nightly%20paused"
        assert (await conductor.get_schedule("nightly").describe()).paused
        paused = (await client.get("/schedules")).text
        assert "none while paused" in paused
        assert "/schedules/nightly/resume" in _posts(paused)

        fired = await client.post("/schedules/nightly/trigger", data={"csrf": csrf, **YES})
        run_id = fired.headers["location"].partition("?")[0].removeprefix("/runs/")
        assert run_id.startswith("nightly%40manual-")
        async with ui_client(backend) as fresh:  # a new snapshot of summaries
            listed = (await fresh.get("/schedules")).text
        assert re.findall(r'<a href="/runs/([^"]+)">', listed) == [run_id]

        await client.post("/schedules/nightly/resume", data={"csrf": csrf, **YES})
        assert not (await conductor.get_schedule("nightly").describe()).paused
        await conductor.get_schedule("nightly").delete()
        gone = await client.post("/schedules/nightly/pause", data={"csrf": csrf, **YES})
        assert gone.status_code == 409
        assert "nightly" in gone.text


@pytest.mark.parametrize("backend", ["memory", "files"], indirect=True)
async def test_limits_page_shows_limits_and_steers_queues(backend: Backend) -> None:
    conductor = Conductor(backend)  # no agent: the run stays pending in its queue
    conductor.register(gated)
    await conductor.set_limit("openai", concurrency=5, rate=100, per=timedelta(minutes=1))
    await conductor.set_limit("slow", concurrency=2)
    await conductor.start(gated, "x", run_id="in-billing")
    async with ui_client(backend) as client:
        page = (await client.get("/limits")).text
        rows = re.findall(r"<tr>\s*<td>(\w+)</td>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>", page)
        assert rows == [("openai", "5", "0/5"), ("slow", "2", "0/2")]
        assert "100 per 1m" in page or "100 per 60" in page
        assert set(_posts(page)) == {"/queues/pause"}
        assert 'aria-label="Pause queue ui-flow"' in page
        assert 'aria-label="Pause queue default"' in page
        csrf = csrf_of(page)
        form = {"csrf": csrf, "queue": "ui-flow"}
        asked = await client.post("/queues/pause", data=form)
        assert "substantial queue pause --backend memory:// ui-flow" in asked.text
        assert not await conductor.queue_paused("ui-flow")
        done = await client.post("/queues/pause", data={**form, "confirmed": "yes"})
        assert done.headers["location"] == "/limits?said=queue%20ui-flow%20paused"
        assert await conductor.queue_paused("ui-flow")
        assert 'aria-label="Resume queue ui-flow"' in (await client.get("/limits")).text
        await client.post("/queues/resume", data={**form, "confirmed": "yes"})
        assert not await conductor.queue_paused("ui-flow")
        bad = await client.post("/queues/pause", data={"csrf": csrf, "queue": "<b>x</b>"})
        assert bad.status_code == 400
        assert "&lt;b&gt;x&lt;/b&gt;" in bad.text
        assert "<b>x</b>" not in bad.text


@pytest.mark.conductor(approval, double)
@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_flow_actions_need_csrf_and_vanish_when_read_only(conductor: Conductor) -> None:
    handle = await conductor.start(approval, "o-1", run_id="guarded")
    await wait_for_status(handle, RunStatus.WAITING)
    await conductor.schedule("hourly", double, 1, cron="0 * * * *")
    writes = {
        "/runs/guarded/pause": {}, "/runs/guarded/resume": {},
        "/schedules/hourly/pause": {}, "/schedules/hourly/trigger": {},
        "/queues/pause": {"queue": "default"}, "/queues/resume": {"queue": "default"},
    }  # fmt: skip
    async with ui_client(conductor.backend) as client:
        for path, form in writes.items():
            refused = await client.post(path, data={**form, "confirmed": "yes"})
            assert refused.status_code == 403, path
            wrong = await client.post(path, data={**form, "csrf": "nope", "confirmed": "yes"})
            assert wrong.status_code == 403, path
    assert await handle.status() is RunStatus.WAITING
    assert not (await conductor.get_schedule("hourly").describe()).paused
    assert not await conductor.queue_paused("default")
    async with ui_client(conductor.backend, read_only=True) as client:
        for path in ("/runs/guarded", "/schedules", "/limits"):
            page = (await client.get(path)).text
            assert _posts(page) == [], path
            assert 'name="csrf"' not in page, path
            assert 'href="/schedules"' in page
            assert 'href="/limits"' in page
        for path, form in writes.items():
            gone = await client.post(path, data={**form, "csrf": "x", "confirmed": "yes"})
            assert gone.status_code in (404, 405), path
    assert await handle.status() is RunStatus.WAITING
