"""
The web view in a real browser: Debian's Chromium driven by Playwright, against
``substantial ui`` started as a real subprocess beside a real agent process. The core
flow (filter, open a waiting run, send its event through the form, see it complete) runs
on files, Redis and S3 (moto); the rest on files.

With ``UI_SCREENSHOTS=DIR`` set, ``test_screenshots`` writes the pictures the README
shows (``UI_SCREENSHOTS=docs/images``).
With ``CI=true`` a browser that cannot start fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents import backend_url
from tests.harness import WAIT
from tests.ui_app import HOSTILE
from tests.ui_sites import Site, in_thread

# One browser and one set of processes per module: the tests share a worker under xdist.
pytestmark = pytest.mark.xdist_group("ui-browser")

try:
    from playwright import sync_api as playwright_api
except ImportError:  # the [dev] extra brings it; on CI its absence is a failure
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)
expect = playwright_api.expect

CHROMIUM = os.environ.get("UI_CHROMIUM", "/usr/bin/chromium")
#: Playwright's expect() polls up to this long (milliseconds); it returns as soon as it holds.
PATIENCE = int(WAIT * 1000)
expect.set_options(timeout=PATIENCE)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the whole module."""
    try:
        manager = playwright_api.sync_playwright().start()
    except Exception as exc:
        _unavailable(f"cannot start Playwright: {exc}")
        raise
    try:
        try:
            chromium = manager.chromium.launch(executable_path=CHROMIUM)
        except Exception as exc:
            _unavailable(f"cannot start Chromium at {CHROMIUM}: {exc}")
            raise
        yield chromium
        chromium.close()
    finally:
        manager.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(PATIENCE)
    opened = context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    opened.dialogs = dialogs
    yield opened
    context.close()


def _site(
    url: str, tmp_path_factory: pytest.TempPathFactory, *, read_only: bool = False
) -> Iterator[Site]:
    site = Site(url, tmp_path_factory.mktemp("ui-site"), read_only).start()
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def files_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = f"file://{tmp_path_factory.mktemp('ui-store')}"
    yield from _site(url, tmp_path_factory, read_only=True)


@pytest.fixture(
    params=[
        pytest.param("files", id="files"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
        pytest.param("s3", id="s3", marks=pytest.mark.s3),
    ]
)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    if request.param == "files":
        yield request.getfixturevalue("files_site")
        return
    url = in_thread(backend_url, request.param, request, tmp_path_factory.mktemp("store"))
    yield from _site(url, tmp_path_factory)


def _run_id(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def test_filter_open_a_waiting_run_and_send_its_event(site: Site, page: Any) -> None:
    run_id = _run_id("approve")
    site.start_run("approval", "order-17", run_id=run_id)
    page.goto(site.ui.url)
    page.get_by_label("waiting", exact=True).check()
    page.get_by_label("Run id starts with").fill(run_id)
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"status=waiting"))
    page.get_by_role("link", name=run_id).click()  # appears once the run waits (refresh: 1s)
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_label("Event", exact=True).fill("approve")
    page.get_by_label("Value", exact=True).fill('{"by": "the browser"}')
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("substantial send --backend")).to_be_visible()
    page.get_by_role("button", name="Yes, send").click()
    expect(page.get_by_role("status")).to_have_text("sent approve")
    expect(page.locator("#run-status")).to_have_text("completed")  # the page refreshed itself
    expect(page.locator("#run-result")).to_contain_text('"by": "the browser"')
    expect(page.get_by_role("button", name="Send")).to_have_count(0)  # nothing left to do


def test_pause_resume_and_cancel_runs_from_their_page(files_site: Site, page: Any) -> None:
    paused = _run_id("approve")
    files_site.start_run("approval", "order-16", run_id=paused)
    page.goto(f"{files_site.ui.url}/runs/{paused}")
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_role("button", name="Pause", exact=True).click()
    expect(page.get_by_text("substantial pause --backend")).to_be_visible()
    page.get_by_role("button", name="Yes, pause the run").click()
    expect(page.get_by_role("status")).to_have_text("pause requested")
    expect(page.locator("#run-status")).to_have_text("paused")  # once an agent took it
    page.reload()  # the refresh redraws the run's state, not its buttons
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.get_by_text("substantial resume --backend")).to_be_visible()
    page.get_by_role("button", name="Yes, resume the run").click()
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_label("Event", exact=True).fill("approve")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("button", name="Yes, send").click()
    expect(page.locator("#run-status")).to_have_text("completed")

    run_id = _run_id("approve")
    files_site.start_run("approval", "order-18", run_id=run_id)
    page.goto(f"{files_site.ui.url}/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text(re.compile("pending|running|waiting"))
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_text("substantial cancel --backend")).to_be_visible()
    page.get_by_role("button", name="Yes, cancel the run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled")


def test_hostile_names_and_values_show_as_text(files_site: Site, page: Any) -> None:
    run_id = _run_id("hostile")
    files_site.start_run(f"hostile{HOSTILE}", HOSTILE, run_id=run_id)
    page.goto(f"{files_site.ui.url}/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text("waiting")
    page.get_by_label("Event", exact=True).fill(HOSTILE)
    page.get_by_label("Value", exact=True).fill(f'"{HOSTILE}"')
    page.get_by_role("button", name="Send").click()
    page.get_by_role("button", name="Yes, send").click()
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#run-result")).to_contain_text(HOSTILE + HOSTILE)
    expect(page.get_by_text(f"hostile{HOSTILE}", exact=True).first).to_be_visible()
    page.goto(f"{files_site.ui.url}/?prefix={run_id}")
    expect(page.get_by_role("link", name=run_id)).to_be_visible()
    assert page.locator("script").count() == 1  # ui.js, and no script from a value
    assert page.dialogs == []


def test_read_only_hides_every_action(files_site: Site, page: Any) -> None:
    run_id = _run_id("approve")
    files_site.start_run("approval", "order-19", run_id=run_id)
    view = files_site.read_only.url
    page.goto(f"{view}/?prefix={run_id}")
    expect(page.get_by_role("link", name=run_id)).to_be_visible()
    page.goto(f"{view}/runs/{run_id}")
    expect(page.locator("#run-status")).to_have_text(re.compile("pending|running|waiting"))
    pages = ("/schedules", "/limits", f"/?prefix={run_id}", f"/runs/{run_id}")
    for address in (view + path for path in pages):
        page.goto(address)
        assert page.locator("form[method=post]").count() == 0
        for name in ("Send", "Cancel", "Terminate", "Cancel selected", "Pause", "Resume"):
            assert page.get_by_role("button", name=name, exact=True).count() == 0
        expect(page.get_by_text("read-only", exact=True)).to_be_visible()
    status = page.evaluate(
        "run => fetch(`/runs/${run}/cancel`, {method: 'POST'}).then(r => r.status)", run_id
    )
    assert status in (404, 405)


def test_pause_stops_the_refresh(files_site: Site, page: Any) -> None:
    fetches: list[str] = []
    page.on("request", lambda request: fetches.append(request.url))
    page.goto(files_site.ui.url)
    live = page.locator("#live")
    expect(live).to_have_attribute("data-refreshed", re.compile(r"\d+"))  # it refreshes
    page.get_by_role("button", name="Pause refresh").click()
    expect(page.get_by_role("button", name="Resume refresh")).to_have_attribute(
        "aria-pressed", "true"
    )
    ticks = int(live.get_attribute("data-ticks") or 0)
    seen = len(fetches)
    deadline = time.monotonic() + WAIT
    while int(live.get_attribute("data-ticks") or 0) < ticks + 2:  # two refresh periods
        assert time.monotonic() < deadline, "the page's refresh timer stopped ticking"
        page.wait_for_timeout(50)  # polling the page's tick counter
    assert len(fetches) == seen, "the page fetched while paused"


def test_timeline_of_parallel_steps_retries_a_timer_and_a_child(
    files_site: Site, page: Any, tmp_path: Path
) -> None:
    """Also takes the README's screenshots; ``UI_SCREENSHOTS=DIR`` keeps them in DIR."""
    tag = uuid.uuid4().hex[:4]
    runs = [("pipeline", 5, f"shop-{tag}-pipeline"), ("charge", 250, f"shop-{tag}-charge"),
            ("reminder", 48, f"shop-{tag}-reminder"), ("charge", 40, f"shop-{tag}-charge-ok"),
            ("approval", "order-20", f"shop-{tag}-approval-1"),
            ("approval", "order-21", f"shop-{tag}-approval-2")]  # fmt: skip
    for workflow, argument, run_id in runs:
        files_site.start_run(workflow, argument, run_id=run_id)
    page.goto(f"{files_site.ui.url}/runs/shop-{tag}-pipeline")
    expect(page.locator("#run-status")).to_have_text("completed")
    steps = page.locator("g.bar.b-step")
    expect(steps).to_have_count(4)
    expect(page.locator("g.bar.b-step", has_text="\u00d73")).to_have_count(1)  # 3 attempts
    expect(page.locator("g.bar.b-step rect.bad")).to_have_count(2)  # 2 of them failed
    expect(page.locator("g.bar.b-timer line.deadline")).to_have_count(1)
    expect(page.get_by_role("link", name=f"shop-{tag}-pipeline-c5").first).to_be_visible()
    lanes = {steps.nth(i).locator("rect").first.get_attribute("y") for i in range(4)}
    assert len(lanes) >= 3, "the three steps of the gather ran side by side, in lanes"
    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shots / "ui-run.png", full_page=True)
    page.goto(f"{files_site.ui.url}/?prefix=shop-{tag}")
    expect(page.locator("table.runs tbody tr")).to_have_count(len(runs) + 1)  # and the child
    expect(page.get_by_text("card declined for 250")).to_be_visible()
    expect(page.get_by_text("sleeping until")).to_be_visible()
    page.screenshot(path=shots / "ui-runs.png", full_page=True)
