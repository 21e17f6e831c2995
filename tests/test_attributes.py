"""Search attributes: set by a run, indexed on the backend, found by `--where` exactly."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Context, InvalidAttribute, RunFailed, RunStatus, workflow
from substantial._core.attributes import check_attributes, parse_where
from substantial._store.attrs import index_key
from substantial._store.keys import ATTRS_PREFIX
from substantial.backends import Backend, FSBackend, MemoryBackend
from substantial.ops import gc, list_runs
from tests.harness import WAIT, make_conductor, wait_for_status
from tests.ui_client import ui_client

ROOT = Path(__file__).resolve().parent.parent


@workflow(name="attrs.tagged")
async def tagged(c: Context, attributes: dict[str, Any]) -> str:
    c.set_attributes(**attributes)
    await c.save(lambda: 1)
    return "ok"


@workflow(name="attrs.moves")
async def moves(c: Context) -> str:
    c.set_attributes(customer="acme", region="eu")
    await c.receive("move")
    c.set_attributes(customer="globex", region=None)
    return "moved"


@workflow(name="attrs.bad")
async def bad(c: Context) -> None:
    c.set_attributes(customer=["not", "small"])  # type: ignore[arg-type]


async def ids(backend: Backend, where: Any) -> list[str]:
    return sorted(run.run_id for run in await list_runs(backend, where=where))


async def test_where_finds_exactly_the_runs_with_the_attribute(backend: Backend) -> None:
    runs = {
        "a": {"customer": "acme", "region": "eu", "amount": 5},
        "b": {"customer": "acme", "region": "us"},
        "c": {"customer": "globex", "region": "eu"},
        "d": {},
        "e": {"customer": "acme corp/é.."},  # quoted into one key component
    }
    async with make_conductor(backend, tagged, virtual_clock=True) as conductor:
        for run_id, attributes in runs.items():
            handle = await conductor.start(tagged, attributes, run_id=run_id)
            assert await handle.result(timeout=WAIT) == "ok"
    assert await ids(backend, {"customer": "acme"}) == ["a", "b"]
    assert await ids(backend, ["customer=acme", "region=eu"]) == ["a"]
    assert await ids(backend, ["region=eu"]) == ["a", "c"]
    assert await ids(backend, {"amount": 5}) == ["a"]
    assert await ids(backend, ["amount=5"]) == ["a"]  # compared as text
    assert await ids(backend, ["customer=acme corp/é.."]) == ["e"]
    assert await ids(backend, ["customer=nobody"]) == []
    (a,) = await list_runs(backend, where={"customer": "acme", "region": "eu"})
    assert a.attributes == {"amount": 5, "customer": "acme", "region": "eu"}
    assert a.to_json()["attributes"] == a.attributes


async def test_a_changed_attribute_leaves_no_match_behind(backend: Backend) -> None:
    async with make_conductor(backend, moves, virtual_clock=True) as conductor:
        handle = await conductor.start(moves, run_id="mover")
        await wait_for_status(handle, RunStatus.WAITING)
        assert await ids(backend, ["customer=acme"]) == ["mover"]
        await handle.send("move")
        assert await handle.result(timeout=WAIT) == "moved"
    assert await ids(backend, ["customer=acme"]) == []
    assert await ids(backend, ["region=eu"]) == []
    assert await ids(backend, ["customer=globex"]) == ["mover"]
    assert await backend.list_all(ATTRS_PREFIX) == [index_key("customer", "globex", "mover")]


async def test_stale_index_entries_are_harmless_and_pruned(backend: Backend) -> None:
    async with make_conductor(backend, tagged, virtual_clock=True) as conductor:
        handle = await conductor.start(tagged, {"customer": "beta"}, run_id="real")
        await handle.result(timeout=WAIT)
    stale = index_key("customer", "acme", "real")  # the run does not say acme
    gone = index_key("customer", "acme", "deleted-run")  # no such run
    await backend.create(stale, b"0")
    await backend.create(gone, b"0")
    assert await ids(backend, ["customer=acme"]) == []
    assert await backend.list_all(index_key("customer", "acme", "")) == []


async def test_gc_deletes_a_runs_index_entries(backend: Backend) -> None:
    async with make_conductor(backend, tagged, virtual_clock=True) as conductor:
        handle = await conductor.start(tagged, {"customer": "acme"}, run_id="old")
        await handle.result(timeout=WAIT)
    soon = datetime.now(UTC) + timedelta(minutes=1)  # none is too recent
    assert (await gc(backend, timedelta(0), now=soon)).runs == ["old"]
    assert await backend.list("") == []


@pytest.mark.conductor(bad)
async def test_a_bad_attribute_fails_the_run_with_a_named_error(conductor: Any) -> None:
    handle = await conductor.start(bad)
    with pytest.raises(RunFailed, match=r"InvalidAttribute.*'customer'.*not list"):
        await handle.result(timeout=WAIT)


def test_attribute_validation() -> None:
    assert check_attributes({"a": "x", "b": 2, "c": 1.5, "d": None}) == {
        "a": "x",
        "b": 2,
        "c": 1.5,
        "d": None,
    }
    for name, value, message in [
        ("1bad", "x", "a name is a letter"),
        ("ok", True, "not bool"),
        ("ok", b"x", "not bytes"),
        ("ok", float("nan"), "finite"),
        ("ok", 2**63, "64 bits"),
        ("ok", "x" * 257, "at most 256"),
        ("ok", "line\nbreak", "printable"),
    ]:
        with pytest.raises(InvalidAttribute, match=message):
            check_attributes({name: value})
    with pytest.raises(InvalidAttribute, match="name=value"):
        parse_where(["customer"])


async def test_cli_list_where(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "store")
    async with make_conductor(backend, tagged, virtual_clock=True) as conductor:
        for run_id, customer in [("r1", "acme"), ("r2", "globex"), ("r3", "acme")]:
            handle = await conductor.start(tagged, {"customer": customer}, run_id=run_id)
            await handle.result(timeout=WAIT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SUBSTANTIAL_BACKEND", None)
    url = f"file://{tmp_path / 'store'}"
    script = str(Path(sys.executable).with_name("substantial"))
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [script, "list", "--where", "customer=acme", "--json", "--backend", url],
            env=env,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert [run["run_id"] for run in json.loads(done.stdout)] == ["r1", "r3"]
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [script, "list", "--where", "customer", "--backend", url], env=env, check=False
        )
    assert done.returncode != 0
    assert "a filter is name=value" in done.stderr.decode()


async def test_the_web_view_filters_by_attribute() -> None:
    backend = MemoryBackend()
    async with make_conductor(backend, tagged, virtual_clock=True) as conductor:
        for run_id, customer in [("w1", "acme"), ("w2", "globex"), ("w3", "acme")]:
            handle = await conductor.start(tagged, {"customer": customer}, run_id=run_id)
            await handle.result(timeout=WAIT)
        async with ui_client(backend) as client:
            page = (await client.get("/", params={"where": "customer=acme"})).text
            assert sorted(re.findall(r'<td><a href="/runs/([^"]+)">', page)) == ["w1", "w3"]
            assert 'value="customer=acme"' in page
            everything = (await client.get("/", params={"where": "not a filter"})).text
            assert len(re.findall(r'<td><a href="/runs/([^"]+)">', everything)) == 3
