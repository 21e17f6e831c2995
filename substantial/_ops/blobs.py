"""
Garbage collection of blobs: a blob no run refers to any more is deleted. The protocol
that keeps a run from referring to a blob as it is deleted is in
:mod:`substantial._store.payloads`; why it is safe is in docs/decisions.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from substantial._core import constants
from substantial._core.clock import now_ms
from substantial._store.keys import (
    BLOB_MARKS_PREFIX,
    BLOBS_PREFIX,
    blob_key,
    blob_mark_key,
    blob_ref_prefix,
    run_blob_key,
    run_blobs_prefix,
    run_prefix,
)
from substantial.backends.base import Backend

__all__ = ["drop_run_refs", "sweep_blobs"]


async def drop_run_refs(backend: Backend, run_id: str, run_keys: Sequence[str]) -> None:
    """
    Delete the blob references of a run being deleted (its keys ``run_keys``): the
    blob's side first, so a reference is never left that no run key vouches for.
    """
    prefix = run_blobs_prefix(run_id)
    for key in run_keys:
        if key.startswith(prefix):
            await backend.delete(f"{blob_ref_prefix(key[len(prefix) :])}{run_id}")


async def _referenced(backend: Backend, sha: str, *, dry_run: bool) -> bool:
    """
    Whether a run refers to blob ``sha``. A reference counts while its run's own key
    for it exists (written first, deleted last) and the run has more than blob keys, or
    is younger than ``BLOB_START_GRACE_SECONDS`` (a start writes its arguments' blob
    before the run's first segment). Others are stale (the run was deleted, or its start
    died half-way) and deleted.
    """
    refs = await backend.list_all(blob_ref_prefix(sha))
    entries = await backend.get_many(refs)
    for ref, entry in zip(refs, entries, strict=True):
        run_id = ref.rpartition("/")[2]
        if entry is None:
            continue
        if await backend.get(run_blob_key(run_id, sha)) is not None:
            if await _has_more_than_blobs(backend, run_id) or _young(entry[0]):
                return True
            if not dry_run:  # a start that died before its first segment
                await backend.delete(run_blob_key(run_id, sha))
        if not dry_run:
            await backend.delete(ref)
    return False


async def _has_more_than_blobs(backend: Backend, run_id: str) -> bool:
    """Whether the run has a key besides its blob references (they sort first)."""
    past_blobs = run_blobs_prefix(run_id)[:-1] + "~"
    return bool(await backend.list(run_prefix(run_id), after=past_blobs, limit=1))


def _young(stamp: bytes) -> bool:
    try:
        written = int(stamp)
    except ValueError:
        return False
    return now_ms() - written < constants.BLOB_START_GRACE_SECONDS * 1000


async def sweep_blobs(backend: Backend, *, dry_run: bool = False) -> list[str]:
    """
    Delete every blob no run refers to; return their hashes (on a dry run: that would be).

    Each one is marked first (``blobgc/{sha}``), its references listed again, and only
    then deleted: a writer that reuses a blob creates its reference before it reads the
    mark, so either this second listing sees the reference, or the writer sees the mark
    and keeps its bytes in its own record.
    """
    deleted: list[str] = []
    for key in await backend.list_all(BLOBS_PREFIX):
        sha = key[len(BLOBS_PREFIX) :]
        if await _referenced(backend, sha, dry_run=dry_run):
            continue
        if dry_run:
            deleted.append(sha)
            continue
        mark = blob_mark_key(sha)
        await backend.put(mark, str(now_ms()).encode())
        if not await _referenced(backend, sha, dry_run=False):
            await backend.delete(blob_key(sha))
            deleted.append(sha)
        await backend.delete(mark)
    if not dry_run:
        await _drop_old_marks(backend)
    return deleted


async def _drop_old_marks(backend: Backend) -> None:
    """
    Delete the marks a gc left when it died (they make writers keep their bytes inline).
    Only old ones: a live gc's mark lasts one blob's check, and deleting it under that
    gc would let a writer reuse the blob it is deleting.
    """
    cutoff = now_ms() - round(constants.BLOB_MARK_GRACE_SECONDS * 1000)
    marks = await backend.list_all(BLOB_MARKS_PREFIX)
    for mark, entry in zip(marks, await backend.get_many(marks), strict=True):
        if entry is None:
            continue
        try:
            written = int(entry[0])
        except ValueError:
            written = 0  # unreadable: treat as old
        if written < cutoff:
            await backend.delete(mark, entry[1])
