"""
The web view's safety rules, on one backend (files): values are escaped, every write
needs the page's CSRF value and comes from the view's own origin, a token guards every
request when set and never shows in a page, ``--read-only`` leaves no way to change a
run, and the CLI refuses to serve beyond loopback without a token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from substantial import Conductor, RunStatus
from substantial._ui.text import public_url
from substantial.backends import FSBackend
from substantial.cli import main
from tests.harness import make_conductor, wait_for_status
from tests.ui_app import HOSTILE, approval, hostile
from tests.ui_client import csrf_of, ui_client


@pytest.fixture
async def conductor(tmp_path: Path) -> AsyncIterator[Conductor]:
    backend = FSBackend(tmp_path / "store")
    async with make_conductor(backend, approval, hostile, virtual_clock=True) as running:
        yield running
    await backend.aclose()


async def _hostile_run(conductor: Conductor) -> None:
    handle = await conductor.start(hostile, HOSTILE, run_id="hostile-1")
    await wait_for_status(handle, RunStatus.WAITING)
    await handle.send("ping", HOSTILE)  # an event nobody receives: shown in the inbox/log


async def test_names_values_and_queries_render_as_text(conductor: Conductor) -> None:
    await _hostile_run(conductor)
    async with ui_client(conductor.backend) as client:
        pages = [
            (await client.get("/")).text,
            (await client.get("/", params={"prefix": HOSTILE, "workflow": HOSTILE})).text,
            (await client.get("/runs/hostile-1")).text,
            (await client.get("/", params={"said": HOSTILE})).text,
        ]
        csrf = csrf_of(pages[2])
        form = {"csrf": csrf, "event": HOSTILE, "value": f'"{HOSTILE}"'}
        pages.append((await client.post("/runs/hostile-1/send", data=form)).text)
    for page in pages:
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    scripts = {tag for page in pages for tag in re.findall(r"<script[^>]*>", page)}
    assert scripts == {'<script src="/static/ui.js" defer>'}


async def test_every_response_forbids_inline_scripts_and_framing(conductor: Conductor) -> None:
    async with ui_client(conductor.backend) as client:
        response = await client.get("/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"


async def test_writes_need_the_csrf_value_and_the_same_origin(conductor: Conductor) -> None:
    handle = await conductor.start(approval, "o-1", run_id="approve-1")
    await wait_for_status(handle, RunStatus.WAITING)
    async with ui_client(conductor.backend) as client:
        csrf = csrf_of((await client.get("/runs/approve-1")).text)
        form = {"event": "approve", "value": "1", "confirmed": "yes"}
        missing = await client.post("/runs/approve-1/send", data=form)
        wrong = await client.post("/runs/approve-1/send", data={**form, "csrf": csrf[:-1] + "x"})
        foreign = await client.post(
            "/runs/approve-1/send",
            data={**form, "csrf": csrf},
            headers={"origin": "http://evil.example"},
        )
        by_get = await client.get("/runs/approve-1/send", params={**form, "csrf": csrf})
    assert [r.status_code for r in (missing, wrong, foreign)] == [403, 403, 403]
    assert by_get.status_code == 405
    assert [e.kind for e in await handle.history()].count("event_received") == 0
    assert await handle.status() is RunStatus.WAITING


async def test_a_token_guards_every_request_and_never_shows(conductor: Conductor) -> None:
    token = "s3cret-token-value"
    async with ui_client(conductor.backend, token=token) as client:
        assert (await client.get("/")).status_code == 401
        assert (await client.get("/static/ui.css")).status_code == 401
        assert (await client.get("/?token=wrong")).status_code == 401
        opened = await client.get("/", params={"token": token, "status": "waiting"})
        assert opened.status_code == 303
        assert opened.headers["location"] == "/?status=waiting"
        assert "HttpOnly" in opened.headers["set-cookie"]
        page = await client.get("/")  # the cookie it set
        assert page.status_code == 200
        assert token not in page.text
    async with ui_client(conductor.backend, token=token) as client:
        bearer = await client.get("/", headers={"authorization": f"Bearer {token}"})
        assert bearer.status_code == 200


async def test_read_only_leaves_no_way_to_change_a_run(conductor: Conductor) -> None:
    handle = await conductor.start(approval, "o-1", run_id="approve-1")
    await wait_for_status(handle, RunStatus.WAITING)
    async with ui_client(conductor.backend, read_only=True) as client:
        pages = [(await client.get(p)).text for p in ("/", "/?prefix=approve", "/runs/approve-1")]
        posts = [
            await client.post(path, data={"csrf": "x", "confirmed": "yes"})
            for path in ("/runs/approve-1/send", "/runs/approve-1/cancel",
                         "/runs/approve-1/terminate", "/cancel-selected")
        ]  # fmt: skip
    for page in pages:
        assert '<form method="post"' not in page
        assert '<button type="submit" class="danger"' not in page
        assert "read-only" in page
    assert {r.status_code for r in posts} <= {404, 405}
    assert await handle.status() is RunStatus.WAITING


def test_cli_will_not_serve_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"file://{tmp_path}"
    refused = runner.invoke(
        main, ["ui", "--backend", url, "--host", "0.0.0.0"], env={"SUBSTANTIAL_UI_TOKEN": ""}
    )
    assert refused.exit_code == 2
    assert "give --token" in refused.output
    missing = runner.invoke(main, ["ui"], env={"SUBSTANTIAL_BACKEND": ""})
    assert missing.exit_code == 2
    assert "--backend" in missing.output


def test_pages_show_backend_urls_without_their_secrets() -> None:
    assert (
        public_url("redis://user:pw@host:6379/0?prefix=x")
        == "redis://user:***@host:6379/0?prefix=x"
    )
    shown = public_url("s3://bucket/p?endpoint_url=http://h:9000&aws_secret_access_key=abc")
    assert "abc" not in shown
    assert "endpoint_url=http://h:9000" in shown
    assert public_url("file:///var/runs") == "file:///var/runs"
    assert public_url("memory://") == "memory://"


async def test_on_loopback_it_answers_to_loopback_names_only(conductor: Conductor) -> None:
    hosts = ("127.0.0.1", "localhost", "::1")
    async with ui_client(conductor.backend, hosts=hosts) as client:
        rebound = await client.get("/", headers={"host": "attacker.example:8233"})
        assert rebound.status_code == 421
        for host in ("127.0.0.1:8233", "localhost:8233", "[::1]:8233"):
            assert (await client.get("/", headers={"host": host})).status_code == 200


async def test_unknown_and_malformed_run_ids_are_404(conductor: Conductor) -> None:
    async with ui_client(conductor.backend) as client:
        missing = await client.get("/runs/nope")
        malformed = await client.get("/runs/-x")  # a run id starts with a letter or digit
        csrf = csrf_of((await client.get("/?prefix=x")).text)
        bad_post = await client.post("/runs/-x/cancel", data={"csrf": csrf})
    assert missing.status_code == 404
    assert "no run &#39;nope&#39;" in missing.text
    assert malformed.status_code == 404
    assert bad_post.status_code == 404
