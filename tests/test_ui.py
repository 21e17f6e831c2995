"""
The web view (``substantial ui``) as an ASGI app, over real runs on every backend: the
runs page and its filters, a run's page and timeline, the actions and their
confirmations, and the safety rules (escaping, CSRF, the token, read-only).
The browser tests (tests/test_ui_browser.py) drive the same pages in Chromium.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from substantial import Conductor, RunStatus
from substantial.backends import FSBackend
from tests.harness import wait_for_status
from tests.ui_app import approval, double, hostile, pipeline
from tests.ui_client import csrf_of, ui_client

pytestmark = pytest.mark.conductor(approval, double, pipeline, hostile)


def _run_ids(page: str) -> list[str]:
    return re.findall(r'<td><a href="/runs/([^"]+)">', page)


async def _waiting(conductor: Conductor, run_id: str, order: str = "o-1") -> None:
    handle = await conductor.start(approval, order, run_id=run_id)
    await wait_for_status(handle, RunStatus.WAITING)


async def test_runs_page_filters_counts_and_pages(conductor: Conductor) -> None:
    await _waiting(conductor, "approve-a")
    await _waiting(conductor, "approve-b")
    done = await conductor.start(double, 4, run_id="double-a")
    assert await done.result() == 8
    async with ui_client(conductor.backend) as client:
        page = (await client.get("/")).text
        assert set(_run_ids(page)) == {"approve-a", "approve-b", "double-a"}
        assert re.search(r"waiting <b>2</b>", page)
        assert re.search(r"completed <b>1</b>", page)
        assert "waiting for event &#39;approve&#39;" in page
        assert "awaiting approval" in page
        waiting = (await client.get("/?status=waiting")).text
        assert set(_run_ids(waiting)) == {"approve-a", "approve-b"}
        assert _run_ids((await client.get("/?prefix=approve-b")).text) == ["approve-b"]
        assert _run_ids((await client.get("/?workflow=double")).text) == ["double-a"]
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert _run_ids((await client.get("/", params={"after": later})).text) == []
        assert len(_run_ids((await client.get("/?since=15m")).text)) == 3


async def test_runs_page_pages_through_many_runs(tmp_path: Path) -> None:
    from substantial._ui.runs_page import PAGE_SIZE

    backend = FSBackend(tmp_path / "store")
    conductor = Conductor(backend)  # no agent: every run stays pending
    for n in range(PAGE_SIZE + 3):
        await conductor.start("nobody.runs.this", n, run_id=f"many-{n:03d}")
    async with ui_client(backend) as client:
        first = _run_ids((await client.get("/?prefix=many-")).text)
        second = (await client.get("/?prefix=many-&page=2")).text
    await backend.aclose()
    assert len(first) == PAGE_SIZE
    assert len(_run_ids(second)) == 3
    assert set(first) | set(_run_ids(second)) == {f"many-{n:03d}" for n in range(PAGE_SIZE + 3)}
    assert "pending: no agent has picked it up yet" in second
    assert "page 2 of 2" in second


@pytest.mark.real_clock  # bars need the times steps really took, not a virtual clock's
async def test_run_page_draws_parallel_steps_retries_timer_and_child(conductor: Conductor) -> None:
    handle = await conductor.start(pipeline, 5, run_id="pipe-1")
    assert await handle.result() == 16
    async with ui_client(conductor.backend) as client:
        page = (await client.get("/runs/pipe-1")).text
        child = (await client.get("/runs/pipe-1-c5")).text
    steps = re.findall(r'<g class="bar b-step[^"]*" data-kind="step" data-label="([^"]+)"', page)
    assert len(steps) == 4, steps
    assert "pipeline.&lt;locals&gt;.call_supplier \u00d73" in page  # three attempts: two failed
    assert page.count("upstream busy (attempt") >= 2
    assert 'data-kind="timer"' in page
    assert 'class="deadline"' in page
    assert '<a href="/runs/pipe-1-c5">pipe-1-c5</a>' in page  # the child, linked
    assert re.search(r'<pre class="value" id="run-result">16</pre>', page)
    assert '<dt>Parent</dt><dd><a href="/runs/pipe-1">pipe-1</a>' in child
    lanes = {
        int(y)
        for y in re.findall(r'<rect class="span[^"]*" x="[^"]+" width="[^"]+" y="(\d+)"', page)
    }
    assert len(lanes) >= 3, "the three steps of the gather ran at once: three lanes"


async def test_send_through_the_form_after_a_confirmation(conductor: Conductor) -> None:
    await _waiting(conductor, "approve-s")
    async with ui_client(conductor.backend, "redis://u:hunter2@127.0.0.1:1/0") as client:
        page = (await client.get("/runs/approve-s")).text
        assert '<label for="a-event">Event</label>' in page
        assert '<label for="a-value">Value</label>' in page
        assert ">Send</button>" in page
        assert ">Cancel</button>" in page
        assert "hunter2" not in page
        assert "u:***@127.0.0.1" in page
        form = {"csrf": csrf_of(page), "event": "approve", "value": '{"by": "ann"}'}
        confirm = await client.post("/runs/approve-s/send", data=form)
        assert confirm.status_code == 200
        assert "Yes, send" in confirm.text
        assert "substantial send --backend" in confirm.text
        assert "approve-s approve" in confirm.text
        assert await conductor.handle("approve-s").status() is RunStatus.WAITING  # not yet
        done = await client.post("/runs/approve-s/send", data={**form, "confirmed": "yes"})
        assert done.status_code == 303
        assert done.headers["location"].startswith("/runs/approve-s")
        result = await conductor.handle("approve-s").result()
        assert result["decision"] == {"by": "ann"}
        shown = (await client.get("/runs/approve-s")).text
    assert "completed" in shown
    assert "&#34;by&#34;: &#34;ann&#34;" in shown
    assert ">Send</button>" not in shown  # a finished run has no actions


async def test_send_refuses_a_value_that_is_not_json(conductor: Conductor) -> None:
    await _waiting(conductor, "approve-j")
    async with ui_client(conductor.backend) as client:
        csrf = csrf_of((await client.get("/runs/approve-j")).text)
        form = {"csrf": csrf, "event": "approve", "value": "{nope", "confirmed": "yes"}
        refused = await client.post("/runs/approve-j/send", data=form)
    assert refused.status_code == 400
    assert "the value is not JSON" in refused.text
    assert (await conductor.handle("approve-j").history())[-1].kind != "event_received"


async def test_cancel_and_terminate_act_once_confirmed(conductor: Conductor) -> None:
    await _waiting(conductor, "approve-c")
    await _waiting(conductor, "approve-t")
    async with ui_client(conductor.backend) as client:
        csrf = csrf_of((await client.get("/runs/approve-c")).text)
        ask = await client.post("/runs/approve-c/cancel", data={"csrf": csrf})
        assert "Yes, cancel the run" in ask.text
        assert "substantial cancel --backend" in ask.text
        await client.post("/runs/approve-c/cancel", data={"csrf": csrf, "confirmed": "yes"})
        form = {"csrf": csrf, "reason": "stuck", "confirmed": "yes"}
        await client.post("/runs/approve-t/terminate", data=form)
    assert await wait_for_status(conductor.handle("approve-c"), RunStatus.CANCELLED)
    assert await wait_for_status(conductor.handle("approve-t"), RunStatus.TERMINATED)


async def test_cancel_selected_cancels_what_the_filter_selects(conductor: Conductor) -> None:
    for name in ("sel-a", "sel-b", "other-a"):
        await _waiting(conductor, name)
    async with ui_client(conductor.backend) as client:
        page = (await client.get("/?prefix=sel-")).text
        assert "Cancel selected" in page
        form = {"csrf": csrf_of(page), "filters": "prefix=sel-"}
        ask = await client.post("/cancel-selected", data=form)
        assert "Cancel 2 unfinished run(s)" in ask.text
        assert "| xargs -n1 substantial cancel" in ask.text
        by_workflow = await client.post(
            "/cancel-selected", data={**form, "filters": "workflow=approval"}
        )
        assert "substantial cancel --backend memory:// --status pending" in by_workflow.text
        assert "--workflow approval" in by_workflow.text
        assert "Cancel 3 unfinished" in by_workflow.text
        done = await client.post("/cancel-selected", data={**form, "confirmed": "yes"})
        assert done.status_code == 303
        unfiltered = await client.post(
            "/cancel-selected", data={**form, "filters": "", "confirmed": "yes"}
        )
        assert unfiltered.status_code == 400  # never every run at once
    for name in ("sel-a", "sel-b"):
        await wait_for_status(conductor.handle(name), RunStatus.CANCELLED)
    assert await conductor.handle("other-a").status() is RunStatus.WAITING
