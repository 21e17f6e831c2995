"""
Where the store recovers from reboots (the files backend on a local file system, on
Linux), a run's start entry and its final summary are written without a flush, and the
first agent after a reboot wakes every run a power loss may have left unwoken. A power
loss cannot be caused here, so these tests act one out on files: they undo what it may
undo (what was not flushed), give the machine a new boot id, and check that every run
still ends.
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from substantial import Conductor, Context, RunStatus, workflow
from substantial._agent.reboot import recover_after_reboot, wake_unfinished_runs
from substantial._store.keys import SCHEDULE_PREFIX, meta_key, schedule_parts
from substantial._store.runs import RunStore
from substantial.backends import FSBackend
from substantial.backends._boot import (
    BOOT_ID,
    LOCAL_FILESYSTEMS,
    Reboots,
    _unescape,
    filesystem_type,
    filesystem_types,
)
from substantial.backends.base import RecoveryBusy
from substantial.ops import gc
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until

pytestmark = pytest.mark.skipif(
    not os.path.exists(BOOT_ID) or filesystem_type(tempfile.gettempdir()) not in LOCAL_FILESYSTEMS,
    reason="recovery after a reboot needs Linux's boot id and a local file system",
)


@workflow(name="reboot.two")
async def two(c: Context, x: int) -> int:
    a = await c.save(lambda: x)
    return await c.save(lambda: a + 1)


@workflow(name="reboot.nap")
async def nap(c: Context) -> str:
    await c.sleep(3600)
    return "rested"


@workflow(name="reboot.told")
async def told(c: Context) -> str:
    c.set_status("halfway")
    return await c.save(lambda: "done")


class Recording(FSBackend):
    """A files backend that notes, for each write, whether it was to be flushed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[tuple[str, bool]] = []

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        self.writes.append((key, durable))
        return await super().put(key, data, durable=durable)

    async def create(self, key: str, data: bytes, *, durable: bool = True) -> str | None:
        self.writes.append((key, durable))
        return await super().create(key, data, durable=durable)

    async def replace(
        self, key: str, data: bytes, version: str, *, durable: bool = True
    ) -> str | None:
        self.writes.append((key, durable))
        return await super().replace(key, data, version, durable=durable)

    async def delete(self, key: str, version: str | None = None, *, durable: bool = True) -> bool:
        self.writes.append((f"delete {key}", durable))
        return await super().delete(key, version, durable=durable)

    def start_entry_flushed(self, run_id: str) -> list[bool]:
        return [
            durable
            for key, durable in self.writes
            if (parts := schedule_parts(key)) and parts[1] == run_id and parts[2].startswith("s")
        ]

    def last_summary_flushed(self, run_id: str) -> bool:
        return [durable for key, durable in self.writes if key == meta_key(run_id)][-1]


def machine(tmp_path: Path, boot: str, backend: type[FSBackend] = FSBackend) -> Any:
    """The store as a process of the boot ``boot`` opens it."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(f"{boot}\n")
    return backend(tmp_path / "store", boot_id=str(boot_id))


async def covered(backend: FSBackend) -> bool:
    return await RunStore(backend).hints_recovered()


async def test_a_boot_is_recorded_once_its_runs_are_woken(tmp_path: Path) -> None:
    backend = machine(tmp_path, "boot-1")
    assert backend.reboots is not None
    # A root never recorded has nothing to recover: every write so far was flushed.
    assert await backend.reboots.pending() is None
    assert (tmp_path / "store" / ".boot").read_text() == "boot-1\n"
    assert await covered(backend)

    rebooted, other = machine(tmp_path, "boot-2"), machine(tmp_path, "boot-2")
    assert await rebooted.reboots.pending() == "boot-2"
    with pytest.raises(RecoveryBusy):  # one process at a time recovers
        await other.reboots.pending()
    rebooted.reboots.release()
    assert await other.reboots.pending() == "boot-2"
    assert not await covered(other)
    await other.reboots.mark("boot-2")
    assert await rebooted.reboots.pending() is None
    assert await covered(rebooted)
    assert await covered(machine(tmp_path, "boot-2"))  # another process, same boot
    assert await rebooted.list("") == []  # the record is no key


async def test_writes_stay_flushed_where_a_reboot_cannot_be_told(tmp_path: Path) -> None:
    no_boot_id = FSBackend(tmp_path / "a", boot_id=str(tmp_path / "missing"))
    await recover_after_reboot(RunStore(no_boot_id))
    assert not await covered(no_boot_id)
    assert not (tmp_path / "a" / ".boot").exists()
    assert FSBackend(tmp_path / "b", fsync=False).reboots is None  # nothing is flushed
    assert FSBackend(tmp_path / "c", boot_id=None).reboots is None  # turned off

    (tmp_path / "boot_id").write_text("boot-1\n")
    assert filesystem_type("/proc") == "proc"  # not a disk: stands in for NFS, SMB, FUSE
    remote = Reboots("/proc", str(tmp_path / "tmp"), str(tmp_path / "locks"),
                     str(tmp_path / "boot_id"))  # fmt: skip
    assert await remote.pending() is None
    assert not await remote.covered()
    # A local disk with a foreign mount inside (a runs/ on NFS; here, / with /proc in it)
    assert "proc" in (filesystem_types("/") or [])
    beside = Reboots("/", str(tmp_path / "tmp"), str(tmp_path / "locks"), str(tmp_path / "boot_id"))
    assert await beside.pending() is None
    assert _unescape(r"/mnt/a\040b\134c") == "/mnt/a b\\c"


async def test_a_start_and_an_end_skip_their_flush_only_once_the_boot_is_recorded(
    tmp_path: Path,
) -> None:
    assert await machine(tmp_path, "boot-0").reboots.pending() is None  # recorded
    backend: Recording = machine(tmp_path, "boot-1", Recording)
    recovering = machine(tmp_path, "boot-1")
    assert await recovering.reboots.pending() == "boot-1"  # and holds the lock meanwhile
    async with make_conductor(backend, two, told) as conductor:
        assert await (await conductor.start(two, 1, run_id="early")).result() == 2
        assert backend.start_entry_flushed("early") == [True]
        assert backend.last_summary_flushed("early")

        await recovering.reboots.mark("boot-1")
        await wait_until(lambda: covered(backend), what="the boot recorded, seen")
        assert await (await conductor.start(two, 1, run_id="late")).result() == 2
        assert backend.start_entry_flushed("late") == [False]
        assert not backend.last_summary_flushed("late")
        # A status the workflow set is replayed state: a wake-up of an ended run cannot
        # rebuild it, so that summary stays flushed.
        assert await (await conductor.start(told, run_id="told")).result() == "done"
        assert backend.last_summary_flushed("told")


async def test_every_run_a_power_loss_left_unwoken_ends_after_the_reboot(
    tmp_path: Path,
) -> None:
    backend = machine(tmp_path, "boot-1")
    before = make_conductor(backend, two, nap)
    async with before:
        await wait_until(lambda: covered(backend), what="the boot recorded")
        for run_id in ("ended", "ended-asleep", "finished"):
            assert await (await before.start(two, 1, run_id=run_id)).result() == 2
        asleep = await before.start(nap, run_id="asleep")
        await wait_for_status(asleep, RunStatus.SLEEPING)
    # Started while no agent serves: its entry is due now, its summary says pending.
    await before.start(two, 10, run_id="waiting")

    # The power loss: what was written without a flush is undone. An ended run's
    # summary is one from before its end, and the deletion of its entry held; the
    # waiting run lost its entry and its summary.
    for run_id, status in (("ended", pb.RUN_STATUS_RUNNING),
                           ("ended-asleep", pb.RUN_STATUS_SLEEPING)):  # fmt: skip
        stale = pb.RunMeta.FromString((await backend.get(meta_key(run_id)) or (b"", ""))[0])
        assert stale.status == pb.RUN_STATUS_COMPLETED
        stale.status = status
        stale.log_seq = 1
        stale.ClearField("result")
        await backend.put(meta_key(run_id), stale.SerializeToString())
    for key in await backend.list_all(SCHEDULE_PREFIX):
        if (parts := schedule_parts(key)) and parts[1] == "waiting":
            await backend.delete(key)
    await backend.delete(meta_key("waiting"))
    # And a run no recovery can mend: its summary and its log are garbage.
    (tmp_path / "store" / "runs" / "broken").mkdir()
    (tmp_path / "store" / "runs" / "broken" / "log").write_bytes(b"not a log" * 10)
    await backend.put(meta_key("broken"), b"\xff garbage")
    (tmp_path / "store" / "runs" / ("x" * 240)).mkdir()  # names no run this version made

    rebooted = machine(tmp_path, "boot-2")
    entries = set(await rebooted.list_all(SCHEDULE_PREFIX))
    assert await wake_unfinished_runs(RunStore(rebooted)) == 4
    woken = [schedule_parts(key) for key in set(await rebooted.list_all(SCHEDULE_PREFIX)) - entries]
    assert sorted(parts[1] for parts in woken if parts) == [
        "broken",
        "ended",
        "ended-asleep",
        "waiting",
    ]  # fmt: skip  (not the finished run, nor the one asleep on its timer)

    after: Conductor = make_conductor(rebooted, two, nap)
    async with after:
        with anyio.fail_after(WAIT):
            assert await after.handle("waiting").result() == 11
            assert await after.handle("ended").result() == 2
            assert await after.handle("ended-asleep").result() == 2
        for run_id in ("ended", "ended-asleep", "finished"):
            await wait_for_status(after.handle(run_id), RunStatus.COMPLETED)
        await wait_for_status(after.handle("broken"), RunStatus.PARKED)
        boot = tmp_path / "store" / ".boot"
        await wait_until(lambda: boot.read_text() == "boot-2\n", what="the boot recorded")


async def test_the_boot_is_recorded_only_once_every_run_is_woken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = machine(tmp_path, "boot-1")
    await recover_after_reboot(RunStore(backend))
    await make_conductor(backend, two).start(two, 1, run_id="unwoken")
    rebooted = machine(tmp_path, "boot-2")
    schedule, boot = tmp_path / "store" / "schedule", tmp_path / "store" / ".boot"
    schedule.rename(tmp_path / "schedule-aside")
    schedule.write_bytes(b"")  # no entry can be written now
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: recover_after_reboot(RunStore(rebooted), retry=0.01))
            await wait_until(lambda: caplog.text.count("trying again") >= 3, what="three tries")
            assert boot.read_text() == "boot-1\n"
            schedule.unlink()
            (tmp_path / "schedule-aside").rename(schedule)
    assert boot.read_text() == "boot-2\n"
    woken = [schedule_parts(key) for key in await rebooted.list_all(SCHEDULE_PREFIX)]
    assert ("unwoken", "boot") in [(parts[1], parts[2][:4]) for parts in woken if parts]


async def test_agents_sharing_a_store_wake_each_run_once(tmp_path: Path) -> None:
    backend = machine(tmp_path, "boot-1")
    await recover_after_reboot(RunStore(backend))
    starter = make_conductor(backend, two)
    for number in range(5):
        await starter.start(two, number, run_id=f"run-{number}")
    rebooted = machine(tmp_path, "boot-2")
    other_process = machine(tmp_path, "boot-2")
    async with anyio.create_task_group() as tg:  # two conductors of one process, and another
        for store in (RunStore(rebooted), RunStore(rebooted), RunStore(other_process)):
            tg.start_soon(lambda store=store: recover_after_reboot(store, retry=0.01))
    woken = [parts[1] for key in await rebooted.list_all(SCHEDULE_PREFIX)
             if (parts := schedule_parts(key)) and parts[2].startswith("boot")]  # fmt: skip
    assert sorted(woken) == [f"run-{number}" for number in range(5)]


async def test_summaries_no_wake_up_rebuilds_stay_flushed(tmp_path: Path) -> None:
    backend: Recording = machine(tmp_path, "boot-1", Recording)
    store = RunStore(backend)
    await recover_after_reboot(store)
    # A run of an older version with an id over 200 characters: recovery skips it.
    long_id = "x" * 205
    assert await store.write_meta(pb.RunMeta(run_id=long_id, status=pb.RUN_STATUS_COMPLETED))
    assert backend.last_summary_flushed(long_id)
    assert await store.write_meta(pb.RunMeta(run_id="short", status=pb.RUN_STATUS_COMPLETED))
    assert not backend.last_summary_flushed("short")


async def test_gc_flushes_a_summary_before_it_deletes_the_log(tmp_path: Path) -> None:
    backend: Recording = machine(tmp_path, "boot-1", Recording)
    async with make_conductor(backend, two) as conductor:
        await wait_until(lambda: covered(backend), what="the boot recorded")
        assert await (await conductor.start(two, 1, run_id="old")).result() == 2
    assert not backend.last_summary_flushed("old")
    backend.writes.clear()
    result = await gc(backend, timedelta(0), now=datetime.now(UTC) + timedelta(days=1))
    assert result.runs == ["old"]
    keys = [key for key, _ in backend.writes]
    flushed = keys.index(meta_key("old"))
    assert backend.writes[flushed][1]
    assert flushed < min(i for i, key in enumerate(keys) if key.startswith("delete runs/old/log"))


class Flaky(FSBackend):
    """A files backend whose first write of a recovery's entry fails as EAGAIN would."""

    failed = False

    async def put(self, key: str, data: bytes, *, durable: bool = True) -> str:
        if "~boot" in key and not self.failed:
            self.failed = True
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return await super().put(key, data, durable=durable)


async def test_the_recovery_lock_is_held_by_the_task_that_took_it(tmp_path: Path) -> None:
    await recover_after_reboot(RunStore(machine(tmp_path, "boot-1")))
    await make_conductor(machine(tmp_path, "boot-1"), two).start(two, 1, run_id="unwoken")
    rebooted: Flaky = machine(tmp_path, "boot-2", Flaky)
    assert await rebooted.reboots.pending() == "boot-2"  # this task holds the lock
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:  # another task waits, then stops
            tg.start_soon(lambda: recover_after_reboot(RunStore(rebooted), retry=0.01))
            await anyio.wait_all_tasks_blocked()  # it found the lock taken, and waits
            tg.cancel_scope.cancel()
    with pytest.raises(RecoveryBusy):  # its stop released nothing it did not take
        await machine(tmp_path, "boot-2").reboots.pending()
    rebooted.reboots.release()

    # A store error that looks like a busy lock (EAGAIN) fails one try, not the recovery.
    with anyio.fail_after(WAIT):
        await recover_after_reboot(RunStore(rebooted), retry=0.01)
    assert rebooted.failed
    assert (tmp_path / "store" / ".boot").read_text() == "boot-2\n"
    woken = [schedule_parts(key) for key in await rebooted.list_all(SCHEDULE_PREFIX)]
    assert ("unwoken", "boot") in [(parts[1], parts[2][:4]) for parts in woken if parts]
