"""
Schedule keys in time buckets: a poll reads the index only up to a little past now, so on
the files backend an idle poll opens no folder of the future however many runs sleep;
entries of the flat layout of before buckets are still served.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from substantial import Context, workflow
from substantial._store.keys import (
    BUCKETS,
    SCHEDULE_PREFIX,
    Route,
    ScheduleEntry,
    flat_schedule_key,
    schedule_bound,
    schedule_key,
)
from substantial._store.runs import RunStore
from substantial.backends import Backend, FSBackend
from substantial.codec import encode_payload
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor

HOUR_MS = 3_600_000
ROUTE = Route.of("billing", "buckets.send", 3)


def test_bucketed_keys_sort_by_due_time_and_parse_back() -> None:
    rng = random.Random(7)
    dues = [rng.randrange(0, 10**15) for _ in range(2000)] + [0, 9_999, 10_000, 10**15 - 1]
    keys = [schedule_key(due, f"r{due}", "t", ROUTE) for due in dues]
    assert [ScheduleEntry.parse(key).due_ms for key in sorted(keys)] == sorted(dues)  # type: ignore[union-attr]
    for key, due in zip(keys, dues, strict=True):
        assert ScheduleEntry.parse(key) == ScheduleEntry(key, f"r{due}", due, ROUTE)
        flat = flat_schedule_key(due, f"r{due}", "t", ROUTE)
        assert ScheduleEntry.parse(flat) == ScheduleEntry(flat, f"r{due}", due, ROUTE)
    # A key whose bucket is not its due time's is no schedule entry.
    assert ScheduleEntry.parse(schedule_key(10_000, "r", "t").replace("/01/", "/02/")) is None


def test_the_bound_splits_the_index_at_its_time() -> None:
    rng = random.Random(8)
    for _ in range(2000):
        due, until = rng.randrange(0, 10**13), rng.randrange(0, 10**13)
        if rng.random() < 0.2:
            due = until + rng.choice((-1, 0, 1))
        bound = schedule_bound("billing", until)
        assert (schedule_key(due, "r", "t", ROUTE) < bound) == (due <= until)
        # Every flat key (and the paused mark) sorts before the buckets.
        assert flat_schedule_key(due, "r", "t", ROUTE) < bound
        assert flat_schedule_key(due, "r~", "t", ROUTE) < schedule_key(0, "r", "t", ROUTE)


async def test_list_before_lists_every_key_before_its_bound(backend: Backend) -> None:
    """On every backend: the keys before the bound, in order, as ``list`` gives them."""
    rng = random.Random(9)
    base = 1_800_000_000_000
    dues = sorted({base + rng.randrange(0, 3 * 10**8) for _ in range(60)})
    keys = sorted(schedule_key(due, f"r{i}", "t") for i, due in enumerate(dues))
    keys.append(flat_schedule_key(base, "flat", "t"))
    for key in keys:
        await backend.put(key, b"")
    everything = await backend.list(SCHEDULE_PREFIX)
    for until in (base - 1, dues[0], dues[7], dues[30] + 1, base + 3 * 10**8):
        bound = schedule_bound("default", until)
        wanted = [key for key in everything if key < bound]
        for after, limit in ((None, 1000), (None, 5), (everything[3], 1000)):
            got = await backend.list_before(SCHEDULE_PREFIX, bound, after=after, limit=limit)
            start = 0 if after is None else everything.index(after) + 1
            assert got == everything[start : start + len(got)]
            assert got[: max(len(wanted) - start, 0)] == wanted[start : start + limit]


async def test_a_flat_sleeper_holds_back_no_due_bucketed_entry(backend: Backend) -> None:
    """Flat entries sort first: one still asleep must not hide due entries behind it."""
    store = RunStore(backend)
    now = store.clock.now_ms()
    await backend.put(flat_schedule_key(now - 5, "flat-due", "t"), b"")
    await backend.put(flat_schedule_key(now + HOUR_MS, "flat-asleep", "t"), b"")
    await store.schedule("new-due", now - 1)
    await store.schedule("new-asleep", now + 2 * HOUR_MS)
    for horizon in (None, 2000):
        lists = backend.requests["list"]
        due, next_due, more = await store.due(now, limit=16, horizon_ms=horizon)
        assert [entry.run_id for entry in due] == ["flat-due", "new-due"]
        assert (next_due, more) == (now + HOUR_MS, False)
        assert backend.requests["list"] == lists + 1  # the page held the buckets too
    await store.schedule("new-soon", now + 30)
    due, next_due, _ = await store.due(now, limit=16, horizon_ms=2000)
    assert next_due == now + 30
    # A page full of flat sleepers: the buckets are listed on their own.
    for i in range(20):
        await backend.put(flat_schedule_key(now + HOUR_MS + i, f"flat-{i}", "t"), b"")
    lists = backend.requests["list"]
    due, next_due, more = await store.due(now, limit=16, horizon_ms=2000)
    assert [entry.run_id for entry in due] == ["flat-due", "new-due"]
    assert (next_due, more) == (now + 30, False)
    assert backend.requests["list"] == lists + 2


async def test_a_poll_reads_nothing_past_its_horizon_on_files(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "s", fsync=False)
    store = RunStore(backend)
    now = store.clock.now_ms()
    for i in range(50):  # the same time, and spread: all in the future
        await store.schedule(f"same-{i}", now + HOUR_MS)
        await store.schedule(f"spread-{i}", now + (i + 2) * HOUR_MS)
    await store.schedule("soon", now + 500)
    with _opened_folders() as opened:
        due, next_due, more = await store.due(now, limit=16, horizon_ms=2000)
    assert (due, next_due, more) == ([], now + 500, False)
    future = {os.path.dirname(backend._path(schedule_key(now + HOUR_MS, "x", "t")))}
    assert not future & set(opened)
    assert len(opened) <= 7  # schedule/, at/ and four folders of the present
    # Unbounded (a clock that jumps), it reads on to the next entry.
    due, next_due, _ = await store.due(now + 1000, limit=16)
    assert next_due == now + HOUR_MS


async def test_a_poll_removes_emptied_folders_of_the_past_on_files(tmp_path: Path) -> None:
    backend = FSBackend(tmp_path / "s", fsync=False)
    store = RunStore(backend)
    now = store.clock.now_ms()
    past = [schedule_key(now - i * 10**6, f"r{i}", "t") for i in range(1, 30)]
    for key in past:
        await backend.create(key, b"")
        await backend.delete(key)
    await store.schedule("now", now)
    for _ in range(4):  # a folder a level per poll at most
        await store.due(now, limit=16, horizon_ms=2000)
    top = tmp_path / "s" / SCHEDULE_PREFIX / BUCKETS
    leaf = Path(backend._path(schedule_key(now, "now", "t"))).parent
    folders = {path for path in top.rglob("*") if path.is_dir()}
    assert folders == {leaf, *list(leaf.parents)[:3]}  # only the present's
    # A write into a folder a poll just removed makes it again.
    await backend.create(past[0], b"")
    assert await backend.get(past[0]) is not None


async def test_a_write_makes_its_folder_again_if_a_poll_removes_it_meanwhile(
    tmp_path: Path,
) -> None:
    backend = FSBackend(tmp_path / "s", fsync=False)
    key = schedule_key(10**12, "r", "t")
    folder = os.path.dirname(backend._path(key))
    real_link = os.link
    removed = []

    def racing_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if not removed and os.path.isdir(folder):  # the folder is made: a poll empties it
            os.rmdir(folder)
            removed.append(folder)
        real_link(src, dst, *args, **kwargs)

    os.makedirs(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "link", racing_link)
        assert await backend.create(key, b"x") is not None
    assert removed
    assert await backend.get(key) is not None


@workflow(name="buckets.send")
async def send(c: Context, to: str) -> str:
    return f"sent to {to}"


async def test_a_run_written_before_schedule_buckets_is_still_run(backend: Backend) -> None:
    """A run whose schedule entry an agent of the flat layout wrote (before buckets)."""
    conductor = make_conductor(backend, send)
    started = pb.Started(run_id="flat-1", workflow="buckets.send", seed=os.urandom(16))
    started.args.CopyFrom(encode_payload([["bob"], {}]))
    at = conductor.store.clock.now_ms()
    route = Route.of("default", "buckets.send")
    await backend.put(flat_schedule_key(at + HOUR_MS, "flat-asleep", "t", route), b"")
    await backend.put(flat_schedule_key(at, "flat-1", "s1234abcd", route), b"")
    assert await conductor.store.append("flat-1", 0, [pb.Event(at_ms=at, started=started)])
    async with conductor:
        assert await conductor.handle("flat-1").result(timeout=WAIT) == "sent to bob"
        new = await conductor.start(send, "ann")  # behind the flat sleeper in the index
        assert await new.result(timeout=WAIT) == "sent to ann"


@contextmanager
def _opened_folders() -> Iterator[list[str]]:
    """The folders ``os.scandir`` opens in the block (the files backend lists with it)."""
    opened: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        opened.append(os.fspath(path))
        return real(path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "scandir", scandir)
        yield opened
