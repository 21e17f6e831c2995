"""What only the files backend promises: other processes, the folder layout, bad keys."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from substantial.backends import FSBackend
from substantial.backends._files import content_version, fsync_removed
from substantial.errors import BackendUnavailable
from tests.racers import race_processes

# Marked here, not only by the conftest hook: anyio's plugin must see the marker at
# collection, or it re-parametrizes the test over every event loop and drops its own
# parameters.
pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]

# Each racer says "ready" once imported and opened, then waits for a line on stdin, so all
# of them start writing together; it prints what it won (or the final count) as JSON.
RACER = """
import json, sys
import anyio
from substantial.backends.fs import FSBackend

async def main(root, mode, tag, n):
    store = FSBackend(root, fsync=(mode == "create"))
    print("ready", flush=True)
    sys.stdin.readline()
    won = []
    for i in range(n):
        key = f"race/{i:04d}"
        if mode == "create":
            if await store.create(key, f"{tag}:{key}".encode()) is not None:
                won.append(key)
        else:  # increment one counter n times with get + replace
            while True:
                data, version = await store.get("race/counter")
                if await store.replace("race/counter", b"%d" % (int(data) + 1), version):
                    break
    print(json.dumps(won), flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""


def race(root: Path, mode: str, processes: int, n: int) -> dict[str, list[str]]:
    """Run ``processes`` racers on ``root`` at once; what each one won, by tag."""
    argvs = {f"p{i}": [str(root), mode, f"p{i}", str(n)] for i in range(processes)}
    return race_processes(RACER, argvs)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


async def test_cross_process_creates_have_one_winner_per_key(root: Path) -> None:
    won = await anyio.to_thread.run_sync(race, root, "create", 4, 200)
    keys = [f"race/{i:04d}" for i in range(200)]
    winners = [(key, tag) for tag, wins in won.items() for key in wins]
    assert sorted(key for key, _ in winners) == keys  # every key won, and won once
    store = FSBackend(root)
    for key, tag in winners:
        entry = await store.get(key)
        assert entry is not None
        assert entry[0] == f"{tag}:{key}".encode()
    assert await store.list_all("race/") == keys


async def test_cross_process_replaces_lose_no_update(root: Path) -> None:
    store = FSBackend(root)
    await store.create("race/counter", b"0")
    await anyio.to_thread.run_sync(race, root, "replace", 4, 50)
    entry = await store.get("race/counter")
    assert entry is not None
    assert entry[0] == b"200"


ILLEGAL_KEYS = [
    "",
    "/abs",
    "a//b",
    "a/",
    ".",
    "..",
    "./a",
    "a/./b",
    "a/../b",
    "a/..",
    "nul\0byte",
    ".tmp/x",
    ".locks/x",
    "x" * 256,
    "lone\udcffsurrogate",
]


@pytest.mark.parametrize("key", ILLEGAL_KEYS, ids=[repr(k)[:24] for k in ILLEGAL_KEYS])
async def test_illegal_keys_raise_value_error(root: Path, key: str) -> None:
    store = FSBackend(root)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.get(key),
        lambda: store.put(key, b"x"),
        lambda: store.create(key, b"x"),
        lambda: store.replace(key, b"x", "v"),
        lambda: store.delete(key),
        lambda: store.get_many(["fine", key]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="illegal key") as info:
            await call()
        assert repr(key) in str(info.value)
    assert not await anyio.Path(root).exists()  # rejected before touching the disk


async def test_list_with_a_prefix_no_key_can_have_is_empty(root: Path) -> None:
    store = FSBackend(root)
    await store.create("a/b", b"x")
    for prefix in ["/a", "a//", "./a", "../", ".tmp/", ".locks/", "a\0"]:
        assert await store.list(prefix) == [], prefix


async def test_a_fresh_backend_sees_the_data(root: Path) -> None:
    first = FSBackend(root)
    version = await first.create("runs/r1/meta", b"meta")
    assert version is not None
    await first.put("runs/r1/log/000000000000", b"start")
    second = FSBackend(root)
    assert await second.get("runs/r1/meta") == (b"meta", version)
    assert await second.list_all("") == ["runs/r1/log/000000000000", "runs/r1/meta"]
    # Versions come from the content, so one process can replace what another wrote.
    new = await second.replace("runs/r1/meta", b"meta 2", version)
    assert new is not None
    assert await first.get("runs/r1/meta") == (b"meta 2", new)
    assert await first.replace("runs/r1/meta", b"meta 3", version) is None


async def test_internal_folders_never_show_in_listings(root: Path) -> None:
    store = FSBackend(root)
    version = await store.create("k/a", b"1")
    assert version is not None
    await store.replace("k/a", b"2", version)
    await store.put("top", b"3")
    await store.create("k/b", b"4")
    await store.delete("k/b")
    internal = {name for name in os.listdir(root) if name.startswith(".")}
    assert internal  # the lock and temp folders exist, so the filtering is exercised
    for prefix in ["", ".", ".t", ".l", "k", "k/"]:
        listed = await store.list_all(prefix)
        assert all(not key.startswith(".") for key in listed), (prefix, listed)
    assert await store.list_all("") == ["k/a", "top"]


async def test_leftover_temp_files_are_ignored(root: Path) -> None:
    await FSBackend(root).put("k/a", b"before")
    # What a process killed half-way through a write leaves behind.
    (root / ".tmp").mkdir(exist_ok=True)
    (root / ".tmp" / "0123456789abcdef0123456789abcdef").write_bytes(b"torn wri")
    (root / ".tmp" / "k").mkdir()
    store = FSBackend(root)
    assert await store.list_all("") == ["k/a"]
    assert await store.create("k/b", b"b") is not None
    assert await store.get("k/a") is not None
    assert await store.list_all("") == ["k/a", "k/b"]


async def test_a_key_and_keys_below_it_cannot_coexist(root: Path) -> None:
    store = FSBackend(root)
    await store.put("a/b", b"file")
    await store.put("c/d/e", b"deeper")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.create("a/b/c", b"x"),
        lambda: store.put("a/b/c", b"x"),
        lambda: store.create("c/d", b"x"),
        lambda: store.put("c/d", b"x"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="cannot both exist"):
            await call()
    # Reads and conditional writes see such keys as absent.
    assert await store.get("a/b/c") is None
    assert await store.get("c/d") is None
    assert await store.delete("c/d") is False
    assert await store.delete("a/b/c") is False
    assert await store.replace("c/d", b"x", "v") is None
    assert await store.list_all("") == ["a/b", "c/d/e"]
    assert list((root / ".tmp").iterdir()) == []  # failed writes leave no temp file


async def test_listing_one_folder_reads_only_that_folder(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FSBackend(root, fsync=False)
    for i in range(5):
        await store.create(f"schedule/{i:015d}-r{i}", b"")
        await store.create(f"runs/r{i}/inbox/000000000000", b"")
    await store.create("runs/r1/inbox/000000000001", b"")
    scanned: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: str) -> Iterator[os.DirEntry[str]]:
        scanned.append(os.path.relpath(path, root))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert len(await store.list("schedule/00000000000000")) == 5
    assert await store.list("runs/r1/inbox/") == [
        "runs/r1/inbox/000000000000",
        "runs/r1/inbox/000000000001",
    ]
    assert scanned == ["schedule", "runs/r1/inbox"]


async def test_without_fsync_it_still_works(root: Path) -> None:
    store = FSBackend(root, fsync=False)
    version = await store.create("k/a", b"1")
    assert version is not None
    assert await store.create("k/a", b"2") is None
    assert await store.replace("k/a", b"3", version) is not None
    assert await FSBackend(root).get("k/a") is not None


async def test_storage_errors_become_backend_unavailable(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FSBackend(root)
    await store.put("k/a", b"1")

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(BackendUnavailable) as info:
        await store.create("k/b", b"2")
    assert info.value.backend == "files"
    assert info.value.operation == "create"
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EIO
    with pytest.raises(BackendUnavailable):
        await store.put("k/a", b"2")
    monkeypatch.undo()
    assert await store.get("k/b") is None
    entry = await store.get("k/a")
    assert entry is not None
    assert entry[0] == b"1"
    assert list((root / ".tmp").iterdir()) == []


async def test_other_os_errors_are_not_disguised(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FSBackend(root)

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        await store.create("k/b", b"2")
    assert not isinstance(info.value, BackendUnavailable)
    assert info.value.errno == errno.EBADF


async def test_an_empty_key_is_made_in_place_with_one_fsync(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schedule entry is empty: nothing to tear, so no temp file and no data flush."""
    store = FSBackend(root)
    await store.create("schedule/at/warm-up", b"")  # makes the folders
    synced: list[str] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    assert await store.create("schedule/at/e1", b"") is not None
    assert synced == [str(root / "schedule" / "at")]  # the folder's entry, nothing else
    assert await store.create("schedule/at/e1", b"") is None  # still create-if-absent
    assert await store.create("schedule/at/e1", b"x") is None
    assert await store.get("schedule/at/e1") == (b"", content_version(b""))
    synced.clear()
    assert await store.put("schedule/at/e2", b"") is not None
    assert synced == [str(root / "schedule" / "at")]


async def test_an_empty_put_over_content_replaces_it_whole(root: Path) -> None:
    """Truncating in place could hand a reader half the old bytes: an existing file is
    replaced by rename, as any other put."""
    store = FSBackend(root)
    await store.put("k", b"old content")
    inode = os.stat(root / "k").st_ino
    assert await store.put("k", b"") == content_version(b"")
    assert await store.get("k") == (b"", content_version(b""))
    assert os.stat(root / "k").st_ino != inode  # a new file took the name
    entry = await store.get("k")
    assert entry is not None
    assert await store.replace("k", b"", entry[1]) is not None
    with pytest.raises(ValueError, match="cannot be stored"):
        await store.create("k/below", b"")


def test_a_delete_whose_folder_a_listing_removed_meanwhile_flushes_the_folder_above(
    tmp_path: Path,
) -> None:
    # Two agents deleting in one schedule folder: one's listing removes the folder the
    # other's unlink left empty before that one flushes it (test_run_ids saw it in CI).
    (tmp_path / "kept").mkdir()
    fsync_removed(str(tmp_path / "kept" / "gone" / "deeper" / "key"), str(tmp_path))
    with pytest.raises(FileNotFoundError):  # the root itself gone is the store's trouble
        fsync_removed(str(tmp_path / "no-root" / "key"), str(tmp_path / "no-root"))
