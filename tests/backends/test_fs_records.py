"""
The files backend's record files (append logs): the storage contract on record keys,
keys written before record files existed, torn tails, and real processes killed while
appending or racing for the same record.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from substantial import Conductor, Context, CorruptLog, RunStatus, workflow
from substantial.backends import FSBackend
from substantial.backends._records import FRAME, HEADER, frame
from substantial.ops import gc, list_runs
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until
from tests.racers import race_processes

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
LOG = "runs/r1/log/"


def seg(seq: int, run: str = "r1") -> str:
    return f"runs/{run}/log/{seq:012d}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


async def test_records_live_in_one_file_per_log(root: Path) -> None:
    store = FSBackend(root)
    for seq in range(3):
        assert await store.create(seg(seq), b"s%d" % seq) is not None
    assert await store.create(seg(1), b"again") is None
    assert sorted(os.listdir(root / "runs" / "r1")) == ["log"]
    assert await store.list_all("runs/") == [seg(0), seg(1), seg(2)]
    assert await store.list("runs/r1/log/00000000000", after=seg(0)) == [seg(1), seg(2)]
    assert await store.list("runs/r1/l", limit=2) == [seg(0), seg(1)]
    assert await store.get_many([seg(2), seg(5), seg(0)]) == [
        (b"s2", (await store.get(seg(2)) or (b"", ""))[1]),
        None,
        (b"s0", (await store.get(seg(0)) or (b"", ""))[1]),
    ]
    with pytest.raises(ValueError, match="log folder"):
        await store.put("runs/r1/log", b"x")


@pytest.mark.parametrize(
    "key", ["runs/r1/log/x", "runs/r1/log/7", "runs/r1/log/000000000001/below"]
)
async def test_a_log_folder_holds_only_records(root: Path, key: str) -> None:
    """Else the key would make the folder, and the log would be kept one file per key."""
    store = FSBackend(root)
    with pytest.raises(ValueError, match="holds only records"):
        await store.put(key, b"x")
    assert await store.create(seg(1), b"s1") is not None
    assert (root / "runs/r1/log").is_file()


async def test_deleting_small_records_rewrites_the_file_rarely(root: Path) -> None:
    """Frame headers are live bytes too: counted as dead, every drop of a file of small
    records would rewrite the whole file (quadratic, with an fsync each)."""
    store = FSBackend(root, fsync=False)
    for seq in range(4500):
        await store.create(seg(seq), b"8 bytes!")
    files = set()
    for seq in range(200):
        assert await store.delete(seg(seq))
        files.add((root / "runs/r1/log").stat().st_ino)
    assert len(files) <= 2  # the file as it was, and at most one rewrite
    assert await store.list_all(LOG) == [seg(seq) for seq in range(200, 4500)]


async def test_deletes_and_prune_leave_nothing(root: Path) -> None:
    store = FSBackend(root)
    await store.put("runs/r1/meta", b"m")
    for seq in range(400):
        await store.create(seg(seq), os.urandom(300))
    for seq in range(399):  # a compaction: the file is rewritten without dead frames
        assert await store.delete(seg(seq))
    assert (root / "runs/r1/log").stat().st_size < 64 * 1024 * 3
    assert await store.list_all(LOG) == [seg(399)]
    assert await store.create(seg(5), b"stale") is not None  # a number freed by a delete
    assert await store.list_all(LOG) == [seg(5), seg(399)]
    for key in await store.list_all("runs/r1/"):
        assert await store.delete(key)
    await store.prune("runs/r1/")
    assert not (root / "runs" / "r1").exists()


async def test_keys_written_one_file_each_still_work(root: Path) -> None:
    """A log begun before record files: read, listed, fenced, extended, deleted."""
    old = FSBackend(root, append_logs=())
    for seq in range(3):
        await old.create(seg(seq), b"old%d" % seq)
    store = FSBackend(root)
    assert (await store.get(seg(1)) or (b"",))[0] == b"old1"
    assert await store.create(seg(2), b"new") is None
    assert await store.create(seg(3), b"new3") is not None
    assert await store.list_all(LOG) == [seg(0), seg(1), seg(2), seg(3)]
    assert [entry and entry[0] for entry in await store.get_many(await store.list_all(LOG))] == [
        b"old0",
        b"old1",
        b"old2",
        b"new3",
    ]
    version = (await store.get(seg(0)) or (b"", ""))[1]
    assert await store.replace(seg(0), b"r0", version) is not None
    assert await store.delete(seg(1))
    assert await store.get(seg(1)) is None
    assert await store.list_all(LOG) == [seg(0), seg(2), seg(3)]
    assert (await store.get(seg(0)) or (b"",))[0] == b"r0"
    assert (root / "runs/r1/log").is_dir()  # that log stays one file per key


async def test_an_older_writer_cannot_bypass_a_record_file(root: Path) -> None:
    await FSBackend(root).create(seg(0), b"new")
    old = FSBackend(root, append_logs=())  # as a process of the version before
    with pytest.raises(ValueError, match="cannot be stored"):
        await old.create(seg(1), b"stale")
    assert await FSBackend(root).list_all(LOG) == [seg(0)]


async def test_a_torn_tail_is_invisible_and_cut_by_the_next_writer(root: Path) -> None:
    store = FSBackend(root)
    await store.create(seg(0), b"zero")
    path = root / "runs/r1/log"
    whole = frame(1, 0, b"one" * 100)
    big = frame(1, 0, random.Random(1).randbytes(12_000))
    lost_page = b"\0" * 4096 + big[4096:]  # a power loss wrote all but its first page
    for torn in (whole[:5], whole[: FRAME.size + 10], whole[:-1] + b"X", b"\0" * 64, lost_page):
        reader = FSBackend(root)  # a fresh process's view
        with path.open("ab") as file:
            file.write(torn)
        assert await reader.list_all(LOG) == [seg(0)]
        assert await reader.get(seg(1)) is None
        assert await store.create(seg(1), b"one") is not None
        assert await reader.list_all(LOG) == [seg(0), seg(1)]
        assert await store.delete(seg(1))
    assert (await FSBackend(root).get(seg(0)) or (b"",))[0] == b"zero"


async def test_damage_before_the_last_frame_fails_reads_and_writes_and_is_kept(
    root: Path,
) -> None:
    # Only a writer's last append can be torn: a bad frame with good ones after it is
    # damage (a flipped bit, a lost page), and cutting the file there would drop records.
    store = FSBackend(root)
    for seq in range(4):
        await store.create(seg(seq), f"record {seq}".encode() * 10)
    path = root / "runs/r1/log"
    damaged = bytearray(path.read_bytes())
    second = HEADER.size + FRAME.size + len(b"record 0" * 10)  # where frame 1 begins
    damaged[second + FRAME.size + 3] ^= 0x01
    path.write_bytes(bytes(damaged))
    fresh = FSBackend(root)  # another process: nothing cached
    for call in (fresh.list_all(LOG), fresh.get(seg(0)), fresh.create(seg(4), b"four")):
        with pytest.raises(CorruptLog, match=f"damaged: the frame at byte {second} ") as bad:
            await call
        assert (bad.value.run_id, bad.value.key) == ("r1", "runs/r1/log")
    assert path.read_bytes() == bytes(damaged)
    # A process that parsed the file before the damage appends after its end: it cuts
    # nothing either.
    assert await store.create(seg(4), b"four") is not None
    assert path.read_bytes().startswith(bytes(damaged))


async def test_a_file_not_begun_as_a_record_file_is_damage_unless_it_is_zeros(
    root: Path,
) -> None:
    path = root / "runs/r1/log"
    path.parent.mkdir(parents=True)
    first = frame(0, 0, random.Random(2).randbytes(12_000))
    # A first writer died in its header, or a power loss kept all but the first page of
    # its first append: nothing was acknowledged, so the file is not begun.
    for unbegun in (b"\0" * (HEADER.size + 40), b"SUBR", b"\0" * 4096 + first[4096:]):
        path.write_bytes(unbegun)
        assert await FSBackend(root).list_all(LOG) == []
        assert await FSBackend(root).create(seg(0), b"zero") is not None
        assert await FSBackend(root).list_all(LOG) == [seg(0)]
    for notes in (b"somebody's notes, not a record file at all", b"my notes"):
        path.write_bytes(notes)
        for call in (FSBackend(root).get(seg(0)), FSBackend(root).create(seg(1), b"one")):
            with pytest.raises(CorruptLog, match="does not begin with the record-file header"):
                await call
        assert path.read_bytes() == notes


@workflow(name="records.two_then_wait")
async def two_then_wait(c: Context, n: int) -> int:
    total = await c.save(lambda: n) + await c.save(lambda: n)
    return total + int(await c.receive("go"))


async def test_a_damaged_log_parks_its_run_only_and_is_left_for_repair(root: Path) -> None:
    async with make_conductor(FSBackend(root), two_then_wait) as first:
        victim = await first.start(two_then_wait, 1, run_id="victim")
        healthy = await first.start(two_then_wait, 2, run_id="healthy")
        await wait_for_status(victim, RunStatus.WAITING)
        await wait_for_status(healthy, RunStatus.WAITING)
    path = root / "runs/victim/log"
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[HEADER.size + FRAME.size + 1] ^= 0x40  # inside the start's frame
    path.write_bytes(bytes(damaged))
    async with make_conductor(FSBackend(root), two_then_wait, virtual_clock=True) as second:
        victim, healthy = second.handle("victim"), second.handle("healthy")
        await victim.send("go", 10)
        await wait_for_status(victim, RunStatus.PARKED)
        meta = await second.store.read_meta("victim")
        assert meta is not None
        assert "runs/victim/log" in meta.parked_reason
        assert "damaged" in meta.parked_reason
        await healthy.send("go", 20)
        assert await healthy.result(timeout=WAIT) == 24
        assert path.read_bytes() == bytes(damaged)  # no writer cut it
        repaired = root / "repaired"
        repaired.write_bytes(original)
        repaired.replace(path)  # whole at once: a retry never reads a half-written file
        assert await victim.result(timeout=WAIT) == 12


def _damage(path: Path, frame_index: int) -> None:
    """Flip a bit inside frame ``frame_index`` of the record file at ``path``."""
    damaged = bytearray(path.read_bytes())
    at = HEADER.size
    for _ in range(frame_index):  # past the frames before
        at += FRAME.size + FRAME.unpack_from(damaged, at)[0]
    damaged[at + FRAME.size + 1] ^= 0x40
    path.write_bytes(bytes(damaged))


@workflow(name="records.big_then_wait")
async def big_then_wait(c: Context, data: str) -> int:
    step = await c.save(lambda: 1)  # a second frame: damage to the only one looks torn
    return len(data) + step + int(await c.receive("go"))


async def test_listing_and_gc_go_past_a_damaged_log(root: Path) -> None:
    async with make_conductor(FSBackend(root), two_then_wait, big_then_wait) as conductor:
        for name in ("kept", "lost", "done"):
            handle = await conductor.start(two_then_wait, 1, run_id=name)
            await handle.send("go", 1)
            assert await handle.result(timeout=WAIT) == 3
        big = await conductor.start(big_then_wait, "x" * 300_000, run_id="big")  # a blob
        await wait_for_status(big, RunStatus.WAITING)
    for name in ("lost", "big"):
        (root / f"runs/{name}/meta").unlink()  # no summary either: listing reads the log
    _damage(root / "runs/kept/log", 1)
    _damage(root / "runs/lost/log", 0)
    _damage(root / "runs/big/log", 0)
    for ref in (root / "blobrefs").rglob("big"):
        ref.write_bytes(b"1")  # written long ago: past the grace a start's blob gets
    backend = FSBackend(root)
    # A listing of more than one log shows the intact records before the damage, or
    # record 0 when none is (reading it raises); listing or reading that log raises.
    assert await backend.list_all("runs/kept/") == ["runs/kept/log/000000000000", "runs/kept/meta"]
    assert await backend.list_all("runs/lost/") == ["runs/lost/log/000000000000"]
    with pytest.raises(CorruptLog):
        await backend.list_all("runs/lost/log/")
    runs = {run.run_id: run for run in await list_runs(backend)}
    assert runs["lost"].status is RunStatus.CORRUPT
    assert "damaged" in runs["lost"].error
    assert runs["kept"].status is RunStatus.COMPLETED  # its summary says so
    blobs = sorted(path.name for path in (root / "blobs").iterdir())
    assert blobs
    later = datetime.now(UTC) + timedelta(days=2)
    collected = await gc(backend, timedelta(days=1), now=later)
    assert collected.runs == ["done"]
    assert collected.live == ["kept"]  # finished by its summary, but its log cannot say
    assert collected.blobs == []  # the damaged log may still refer to its blob
    assert sorted(path.name for path in (root / "blobs").iterdir()) == blobs
    for name in ("kept", "lost", "big"):
        assert (root / f"runs/{name}/log").exists()


# -- the contract on record keys, against a model -------------------------------------------

MODEL_KEYS = [f"log/{seq:012d}" for seq in range(4)] + ["log-1", "logs/000000000001", "meta"]
_spaces = itertools.count()
version_st = st.integers(min_value=0, max_value=8)
operation_st = st.one_of(
    st.tuples(st.just("get"), st.sampled_from(MODEL_KEYS)),
    st.tuples(st.just("put"), st.sampled_from(MODEL_KEYS), st.binary(max_size=8)),
    st.tuples(st.just("create"), st.sampled_from(MODEL_KEYS), st.binary(max_size=8)),
    st.tuples(st.just("replace"), st.sampled_from(MODEL_KEYS), st.binary(max_size=8), version_st),
    st.tuples(st.just("delete"), st.sampled_from(MODEL_KEYS), st.none() | version_st),
    st.tuples(
        st.just("list"), st.sampled_from(["", "l", "log/", "log/0000", "m"]), st.integers(1, 4)
    ),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    legacy=st.sets(st.sampled_from(MODEL_KEYS[:4])),
    operations=st.lists(operation_st, max_size=30),
)
async def test_record_keys_match_a_dict_model(
    root: Path, legacy: set[str], operations: list[tuple[Any, ...]]
) -> None:
    space = f"runs/m{next(_spaces)}/"
    model: dict[str, tuple[bytes, str]] = {}
    old = FSBackend(root, append_logs=())
    for key in sorted(legacy):
        model[key] = (b"old", await old.create(space + key, b"old") or "")
    store = FSBackend(root)
    seen = [version for _, version in model.values()]

    def pick(key: str, choice: int) -> str:
        if choice == 0 and key in model:
            return model[key][1]
        return seen[choice % len(seen)] if choice > 1 and seen else "not-a-version"

    for op, key, *args in operations:
        if op == "get":
            assert await store.get(space + key) == model.get(key)
        elif op == "put":
            model[key] = (args[0], await store.put(space + key, args[0]))
            seen.append(model[key][1])
        elif op == "create":
            version = await store.create(space + key, args[0])
            assert (version is None) is (key in model)
            if version is not None:
                model[key] = (args[0], version)
                seen.append(version)
        elif op == "replace":
            expected = pick(key, args[1])
            version = await store.replace(space + key, args[0], expected)
            assert (version is not None) is (key in model and model[key][1] == expected)
            if version is not None:
                model[key] = (args[0], version)
        elif op == "delete":
            expected_version = None if args[0] is None else pick(key, args[0])
            should = key in model and expected_version in (None, model[key][1])
            assert await store.delete(space + key, expected_version) is should
            if should:
                del model[key]
        else:
            want = sorted(k for k in model if k.startswith(key))[: args[0]]
            assert await store.list(space + key, limit=args[0]) == [space + k for k in want]
    assert await store.list_all(space) == [space + k for k in sorted(model)]
    assert await FSBackend(root).get_many([space + k for k in MODEL_KEYS]) == [
        model.get(k) for k in MODEL_KEYS
    ]


# -- real processes, real kills ------------------------------------------------------------

# Appends the next record of each of RUNS logs in turn, forever, racing other appenders
# of the same logs; prints each record it won once create returned. Records are big, so a
# kill often lands inside a write.
APPENDER = """
import hashlib, json, os, sys
import anyio
from substantial.backends.fs import FSBackend

async def main(root, tag, runs):
    store = FSBackend(root)
    seqs = {run: 0 for run in range(runs)}
    while True:
        for run in range(runs):
            key = f"runs/k{run}/log/{seqs[run]:012d}"
            body = f"{tag}:{key}:".encode() * 4000
            data = hashlib.sha256(body).hexdigest().encode() + body
            if await store.create(key, data) is not None:
                os.write(1, (json.dumps([tag, key]) + "\\n").encode())  # one write: whole
            seqs[run] += 1

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def check_record(key: str, data: bytes) -> str:
    """The writer of a record, after checking it is whole and is the record ``key``."""
    digest, body = data[:64], data[64:]
    import hashlib

    assert hashlib.sha256(body).hexdigest().encode() == digest, f"torn record {key}"
    tag, written_key, _ = body.split(b":", 2)
    assert written_key.decode() == key
    return tag.decode()


def kill_appenders(root: Path, processes: int, runs: int, seed: int) -> dict[str, str]:
    """Start appenders, kill them all at a random moment; the records each reported."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(seed)
    read_end, write_end = os.pipe()  # one pipe for all: short lines are written whole
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(root), f"p{seed}-{i}", str(runs)],
            stdout=write_end,
            env=env,
        )
        for i in range(processes)
    ]
    os.close(write_end)
    won: dict[str, str] = {}
    with open(read_end) as lines:
        try:
            # Let them write a random number of records, then kill them: a record is
            # big, so the kill lands inside a write as likely as not.
            target = rng.randint(1, 40)
            while len(won) < target:
                tag, key = json.loads(lines.readline())
                assert key not in won, f"{key} won twice"
                won[key] = tag
            for proc in procs:
                os.kill(proc.pid, signal.SIGKILL)
            for proc in procs:
                proc.wait()
            for line in lines:  # reported before the kill
                tag, key = json.loads(line)
                assert key not in won, f"{key} won twice"
                won[key] = tag
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    return won


async def test_appenders_killed_mid_write_lose_and_double_nothing(root: Path) -> None:
    runs = 2
    reported: dict[str, str] = {}
    for seed in range(8):
        won = await anyio.to_thread.run_sync(kill_appenders, root, 2, runs, seed)
        reported.update(won)
        store = FSBackend(root)  # a fresh process's view after the kills
        for run in range(runs):
            keys = await store.list_all(f"runs/k{run}/log/")
            seqs = [int(key.rsplit("/", 1)[1]) for key in keys]
            assert seqs == list(range(len(seqs))), "a gap or a double in the log"
            entries = await store.get_many(keys)
            for key, entry in zip(keys, entries, strict=True):
                assert entry is not None
                writer = check_record(key, entry[0])
                if key in reported:
                    assert reported[key] == writer
            # the next writer appends after the records, whatever tail the kill left
            next_key = f"runs/k{run}/log/{len(seqs):012d}"
            assert await store.create(keys[-1], b"x") is None
            data = b"after:" + next_key.encode()
            assert await store.create(next_key, data) is not None
            assert (await store.get(next_key) or (b"",))[0] == data
            assert await store.delete(next_key)
    missing = [key for key in reported if await FSBackend(root).get(key) is None]
    assert not missing, f"records reported written are gone: {missing[:3]}"


# Each racer says "ready", waits for a line on stdin so all start together, then creates
# records 0..n-1 of one log; it prints the numbers it won.
RACER = """
import json, sys
import anyio
from substantial.backends.fs import FSBackend

async def main(root, tag, n):
    store = FSBackend(root)
    print("ready", flush=True)
    sys.stdin.readline()
    won = []
    for seq in range(n):
        if await store.create(f"runs/race/log/{seq:012d}", tag.encode()) is not None:
            won.append(seq)
    print(json.dumps(won), flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
"""


def race_records(root: Path, processes: int, n: int) -> dict[str, list[int]]:
    argvs = {f"p{i}": [str(root), f"p{i}", str(n)] for i in range(processes)}
    return race_processes(RACER, argvs)


async def test_processes_racing_for_the_same_records_win_each_once(root: Path) -> None:
    won = await anyio.to_thread.run_sync(race_records, root, 4, 300)
    winners = sorted((seq, tag) for tag, seqs in won.items() for seq in seqs)
    assert [seq for seq, _ in winners] == list(range(300))  # each won, and won once
    keys = [f"runs/race/log/{seq:012d}" for seq in range(300)]
    entries = await FSBackend(root).get_many(keys)
    assert [entry and entry[0] for entry in entries] == [tag.encode() for _, tag in winners]


async def test_a_run_begun_before_record_files_finishes_after_the_upgrade(root: Path) -> None:
    @workflow(name="records.upgrade")
    async def steps_then_wait(c: Context) -> int:
        total = 0
        for i in range(3):
            total += await c.save(lambda i=i: i)
        return total + await c.receive("go")

    async with Conductor(FSBackend(root, append_logs=())) as before:  # the version before
        before.register(steps_then_wait)
        handle = await before.start(steps_then_wait, run_id="old-run")

        async def waiting() -> bool:
            return await handle.status() == RunStatus.WAITING

        await wait_until(waiting, what="the run to wait for its event")
    assert (root / "runs/old-run/log").is_dir()
    async with Conductor(FSBackend(root)) as after:
        after.register(steps_then_wait)
        await after.handle("old-run").send("go", 10)
        assert await after.handle("old-run").result(timeout=30) == 13
        fresh = await after.start(steps_then_wait, run_id="new-run")
        await fresh.send("go", 1)
        assert await fresh.result(timeout=30) == 4
    assert (root / "runs/old-run/log").is_dir()
    assert (root / "runs/new-run/log").is_file()


# Takes the log's lock as a writer does, writes part of the next frame, and dies by
# SIGKILL while holding the lock, as a writer killed inside its append would.
DIES_MID_APPEND = """
import os, signal, sys
from substantial.backends.fs import FSBackend
from substantial.backends._records import frame

store = FSBackend(sys.argv[1])
with store._locked("runs/r1/log"):
    whole = frame(int(sys.argv[2]), 0, b"half" * 1000)
    with open(os.path.join(sys.argv[1], "runs/r1/log"), "ab") as log:
        log.write(whole[: len(whole) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
"""


async def test_a_writer_killed_inside_its_append_leaves_nothing_visible(root: Path) -> None:
    store = FSBackend(root)
    await store.create(seg(0), b"zero")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for seq in (1, 2):
        died = await anyio.run_process(
            [sys.executable, "-c", DIES_MID_APPEND, str(root), str(seq)], env=env, check=False
        )
        assert died.returncode == -signal.SIGKILL
        fresh = FSBackend(root)  # another process's view: the half frame is not there
        assert await fresh.list_all(LOG) == [seg(i) for i in range(seq)]
        assert await fresh.get(seg(seq)) is None
        # the lock died with its holder; the next writer cuts the tail and appends
        assert await fresh.create(seg(seq), b"whole") is not None
        assert (await FSBackend(root).get(seg(seq)) or (b"",))[0] == b"whole"
    assert await FSBackend(root).list_all(LOG) == [seg(0), seg(1), seg(2)]
