"""
A run's page in the web view, on one backend (files): a failure's traceback, the links
along a ``continue_using`` chain, and the raw events a page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from substantial import Conductor, RunFailed
from substantial._ui.run_page import load_run_page
from substantial.backends import FSBackend
from tests.harness import make_conductor
from tests.ui_app import charge, countdown
from tests.ui_client import ui_client


@pytest.fixture
async def conductor(tmp_path: Path) -> AsyncIterator[Conductor]:
    backend = FSBackend(tmp_path / "store")
    async with make_conductor(backend, charge, countdown, virtual_clock=True) as running:
        yield running
    await backend.aclose()


async def test_a_failed_run_shows_its_error_and_traceback(conductor: Conductor) -> None:
    handle = await conductor.start(charge, 250, run_id="charge-1")
    with pytest.raises(RunFailed):
        await handle.result()
    async with ui_client(conductor.backend) as client:
        page = (await client.get("/runs/charge-1")).text
    assert "card declined for 250" in page
    assert "<summary>Traceback</summary>" in page
    assert "Traceback (most recent call last)" in page
    assert ", in charge\n" in page  # the workflow's frame, where the failed step raised


async def test_links_follow_a_continue_using_chain(conductor: Conductor) -> None:
    handle = await conductor.start(countdown, 2, run_id="count")
    assert await handle.result() == "lift-off"  # at the end of the chain: count.2
    async with ui_client(conductor.backend) as client:
        first = (await client.get("/runs/count")).text
        last = (await client.get("/runs/count.2")).text
    assert '<dt>Continued as</dt><dd><a href="/runs/count.1">count.1</a>' in first
    assert '<dt>Continued from</dt><dd><a href="/runs/count.1">count.1</a>' in last
    assert '<dt>First of its chain</dt><dd><a href="/runs/count">count</a>' in last


async def test_raw_events_come_a_page_at_a_time(conductor: Conductor) -> None:
    handle = await conductor.start(countdown, 0, run_id="short")
    await handle.result()
    now = datetime.now(UTC)
    everything = await load_run_page(conductor.backend, "short", 1, now)
    kinds = [event.kind for _, event in everything.events]
    assert kinds == ["started", "step_completed", "completed"]
    pages = [await load_run_page(conductor.backend, "short", n, now, per_page=2) for n in (1, 2, 9)]
    assert [[i for i, _ in page.events] for page in pages] == [[0, 1], [2], [2]]
    assert {page.events_pages for page in pages} == {2}
