"""
Recovery after a reboot lets the files backend write two more things without a flush:
the schedule entry of a run's start, and the summary of a run that ended.

Only a power loss or a kernel crash can undo a write that was not flushed (a killed
process leaves its writes in the page cache), and both end in a reboot. Linux gives each
boot a new id (``/proc/sys/kernel/random/boot_id``). The root records in ``.boot`` the
boot in which an agent last woke every unfinished run (``substantial._agent.reboot``).
While ``.boot`` holds the current boot, a crash from now on leaves a different one
there, so the first agent after it wakes every unfinished run again, and each wake-up
rewrites from the log what the crash undid: an entry that wakes the run, a summary that
says it ended.

A root with no ``.boot`` yet has nothing to recover: a process skips a flush only after
it has read ``.boot`` and made sure it is on disk, so its first boot is recorded at once.

That holds on one machine's page cache, so it is used only where the root's file system,
and any mounted inside it, is local (not NFS, SMB, FUSE...), the boot id can be read,
and ``fsync`` is on. Anywhere else those writes stay flushed.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import suppress

import anyio.to_thread

from substantial.backends._files import BOOT, fsync_dir, read_file, replace_file
from substantial.backends.base import RecoveryBusy

__all__ = [
    "BOOT_ID",
    "LOCAL_FILESYSTEMS",
    "MARKER",
    "Reboots",
    "filesystem_type",
    "filesystem_types",
]

BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: The root's record of the boot whose recovery is done (a name no key can have).
MARKER = BOOT
#: File systems whose unflushed writes live in this machine's page cache only.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "zfs", "bcachefs", "jfs", "reiserfs",
     "nilfs2", "tmpfs", "overlay"}
)  # fmt: skip
#: How long a "not recovered yet" answer is kept before ``.boot`` is read again.
RECHECK_SECONDS = 1.0


class Reboots:
    """
    The boot record of one files backend root.

    :param root: the backend's root folder
    :param tmp: its folder of files being written
    :param locks: its folder of lock files: one process at a time recovers
    :param boot_id: the file holding the current boot id
    """

    def __init__(self, root: str, tmp: str, locks: str, boot_id: str = BOOT_ID) -> None:
        self.root, self.tmp, self.locks, self.boot_id = root, tmp, locks, boot_id
        self._boot: str | None = None
        self._supported: bool | None = None
        self._covered = False
        self._checked = -RECHECK_SECONDS
        self._lock: int | None = None

    async def covered(self) -> bool:
        """
        Whether a crash from now on is recovered from by the next agent: writes the
        recovery rewrites may skip their flush. Once true, it stays true for the process.
        """
        if self._covered or self._supported is False:
            return self._covered
        now = time.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return False
        self._checked = now
        with suppress(OSError):  # .boot unreadable: not covered, writes stay flushed
            self._covered = await anyio.to_thread.run_sync(self._recorded_is_current)
        return self._covered

    async def pending(self) -> str | None:
        """
        The current boot id if this root has not recovered from the last reboot yet; the
        caller then holds the root's recovery lock until its :meth:`mark` or
        :meth:`release`.

        :raises RecoveryBusy: while another process, or task, recovers
        """
        if self._lock is not None:
            raise RecoveryBusy(f"a recovery of {self.root} is under way in this process")
        with anyio.CancelScope(shield=True):  # a lock taken is never dropped on the floor
            found = await anyio.to_thread.run_sync(self._pending)
        if found is None:
            self._covered = self._covered or self._current() is not None
            return None
        boot, lock = found
        if self._lock is not None:  # another task took it meanwhile (on another fd)
            os.close(lock)
            raise RecoveryBusy(f"a recovery of {self.root} is under way in this process")
        self._lock = lock
        return boot

    async def mark(self, boot: str) -> None:
        """Record that every run unfinished at ``boot``'s start has been woken."""
        await anyio.to_thread.run_sync(self._mark, boot)
        self._covered = self._current() == boot
        self.release()

    def release(self) -> None:
        """Let another recover: for the caller :meth:`pending` gave a boot to."""
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)

    def _current(self) -> str | None:
        if self._supported is None:
            data = read_file(self.boot_id)
            self._boot = data.decode(errors="replace").strip() if data else None
            types = filesystem_types(self.root)
            self._supported = (
                bool(self._boot) and types is not None and LOCAL_FILESYSTEMS.issuperset(types)
            )
        return self._boot if self._supported else None

    def _recorded(self) -> str | None:
        data = read_file(f"{self.root}/{MARKER}")
        return None if data is None else data.decode(errors="replace").strip()

    def _recorded_is_current(self) -> bool:
        boot = self._current()
        if boot is None or self._recorded() != boot:
            return False
        # Trusted once on disk: a crash can then not take it back to a root never
        # recorded, which has nothing to recover (see _pending).
        fsync_dir(self.root)
        return True

    def _pending(self) -> tuple[str, int] | None:
        """The boot to recover from and the recovery lock held, or None: nothing to do."""
        boot = self._current()
        if boot is None or self._recorded_is_current():
            return None
        if self._recorded() is None:
            # Never recorded: no process has trusted a record, so every write was
            # flushed and there is nothing to recover (an upgrade, a new root).
            self._mark(boot)
            return None
        os.makedirs(self.locks, exist_ok=True)
        lock = os.open(f"{self.locks}/{MARKER}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RecoveryBusy(f"another process is recovering {self.root}") from None
            if not self._recorded_is_current():  # else another one just did
                return boot, lock
        except BaseException:
            os.close(lock)
            raise
        os.close(lock)
        return None

    def _mark(self, boot: str) -> None:
        replace_file(self.tmp, f"{self.root}/{MARKER}", boot.encode() + b"\n", True)
        fsync_dir(self.root)


def filesystem_types(path: str) -> list[str] | None:
    """
    The types of the file systems under ``path`` (``/proc/self/mountinfo``): the one it
    is on, first, then any mounted inside it (a ``runs/`` on NFS, say); None if unknown.
    """
    target = os.path.realpath(path)
    over: tuple[int, str] | None = None
    inside: list[str] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields, _, rest = line.partition(" - ")
                parts = fields.split()
                if len(parts) < 5 or not rest:
                    continue
                point, kind = _unescape(parts[4]), rest.split()[0]
                if target == point or target.startswith(point.rstrip("/") + "/"):
                    if over is None or len(point) >= over[0]:
                        over = (len(point), kind)  # the last mount over it wins
                elif point.startswith(target.rstrip("/") + "/"):
                    inside.append(kind)
    except OSError:
        return None
    return None if over is None else [over[1], *inside]


def filesystem_type(path: str) -> str | None:
    """The type of the file system ``path`` is on, if known."""
    types = filesystem_types(path)
    return None if types is None else types[0]


def _unescape(field: str) -> str:
    """A mountinfo path: space, tab, newline and backslash come as octal escapes."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")
