"""
Where the store recovers from reboots (the files backend on a local file system, on
Linux), a run's start entry and its final summary are written without a flush, and the
first agent after a reboot wakes every unfinished run. A power loss cannot be caused
here, so these tests act one out on files: they undo what it may undo (what was not
flushed), give the machine a new boot id, and check that every run still ends.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from substantial import Conductor, Context, RunStatus, workflow
from substantial._agent.reboot import recover_after_reboot, wake_unfinished_runs
from substantial._store.keys import SCHEDULE_PREFIX, meta_key
from substantial._store.runs import RunStore
from substantial.backends import FSBackend
from substantial.backends._boot import Reboots, _unescape, filesystem_type
from substantial.protocol import substantial_pb2 as pb
from tests.harness import WAIT, make_conductor, wait_for_status, wait_until


@workflow(name="reboot.two")
async def two(c: Context, x: int) -> int:
    a = await c.save(lambda: x)
    return await c.save(lambda: a + 1)


def machine(tmp_path: Path, boot: str) -> FSBackend:
    """The store as a process of the boot ``boot`` opens it."""
    boot_id = tmp_path / "boot_id"
    boot_id.write_text(f"{boot}\n")
    return FSBackend(tmp_path / "store", boot_id=str(boot_id))


async def covered(backend: FSBackend) -> bool:
    return await RunStore(backend).hints_recovered()


async def test_a_boot_is_recorded_once_its_unfinished_runs_are_woken(tmp_path: Path) -> None:
    backend = machine(tmp_path, "boot-1")
    assert backend.reboots is not None
    assert await backend.reboots.pending() == "boot-1"  # a new root has never recovered
    assert not await covered(backend)
    await recover_after_reboot(RunStore(backend))
    assert await backend.reboots.pending() is None
    assert await covered(backend)
    assert await covered(machine(tmp_path, "boot-1"))  # another process, same boot

    rebooted = machine(tmp_path, "boot-2")
    assert rebooted.reboots is not None
    assert await rebooted.reboots.pending() == "boot-2"
    assert not await covered(rebooted)
    assert await rebooted.list("") == []  # the record is no key


async def test_writes_stay_flushed_where_a_reboot_cannot_be_told(tmp_path: Path) -> None:
    no_boot_id = FSBackend(tmp_path / "a", boot_id=str(tmp_path / "missing"))
    await recover_after_reboot(RunStore(no_boot_id))
    assert not await covered(no_boot_id)
    assert not (tmp_path / "a" / ".boot").exists()
    assert FSBackend(tmp_path / "b", fsync=False).reboots is None  # nothing is flushed

    (tmp_path / "boot_id").write_text("boot-1\n")
    assert filesystem_type("/proc") == "proc"  # not a disk: stands in for NFS, SMB, FUSE
    remote = Reboots("/proc", str(tmp_path / "tmp"), str(tmp_path / "boot_id"))
    assert await remote.pending() is None
    assert not await remote.covered()
    assert _unescape(r"/mnt/a\040b\134c") == "/mnt/a b\\c"


async def test_every_run_a_power_loss_left_unwoken_ends_after_the_reboot(
    tmp_path: Path,
) -> None:
    backend = machine(tmp_path, "boot-1")
    before = make_conductor(backend, two)
    async with before:
        await wait_until(lambda: covered(backend), what="the boot recorded")
        ended = await before.start(two, 1, run_id="ended")
        assert await ended.result() == 2
    # Started while no agent serves: its entry is due now, its summary says pending.
    waiting = await before.start(two, 10, run_id="waiting")
    entries = await backend.list_all(SCHEDULE_PREFIX)
    assert [key for key in entries if "~s" in key] != []

    # The power loss: what was written without a flush is undone. The ended run's
    # summary is the one before its end, and the deletion of its entry held; the
    # waiting run lost its entry and its summary.
    stale = pb.RunMeta.FromString((await backend.get(meta_key("ended")) or (b"", ""))[0])
    assert stale.status == pb.RUN_STATUS_COMPLETED
    stale.status = pb.RUN_STATUS_RUNNING
    stale.ClearField("result")
    await backend.put(meta_key("ended"), stale.SerializeToString())
    for key in await backend.list_all(SCHEDULE_PREFIX):
        await backend.delete(key)
    await backend.delete(meta_key("waiting"))
    # And a run no recovery can mend: its summary and its log are garbage.
    (tmp_path / "store" / "runs" / "broken").mkdir()
    (tmp_path / "store" / "runs" / "broken" / "log").write_bytes(b"not a log" * 10)
    await backend.put(meta_key("broken"), b"\xff garbage")

    rebooted = machine(tmp_path, "boot-2")
    assert await wake_unfinished_runs(RunStore(rebooted)) == 3  # no agent yet: only entries
    woken = {key.rsplit("/", 1)[-1] for key in await rebooted.list_all(SCHEDULE_PREFIX)}
    assert sorted(name.split("~")[0].split("-", 1)[1] for name in woken) == [
        "broken", "ended", "waiting"
    ]  # fmt: skip
    for key in await rebooted.list_all(SCHEDULE_PREFIX):
        await rebooted.delete(key)  # the agent below finds them itself

    after: Conductor = make_conductor(rebooted, two)
    async with after:
        with anyio.fail_after(WAIT):
            assert await after.handle(waiting.run_id).result() == 11
            assert await after.handle(ended.run_id).result() == 2
        await wait_for_status(after.handle("ended"), RunStatus.COMPLETED)
        await wait_for_status(after.handle("broken"), RunStatus.PARKED)
        assert rebooted.reboots is not None
        assert await rebooted.reboots.pending() is None
