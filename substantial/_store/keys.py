"""
The key layout: every key substantial stores, built and parsed here and nowhere else.

::

    runs/{run}/meta                     RunMeta: a summary, rebuilt from the log if lost
    runs/{run}/log/{seq:012d}           Segment: immutable, written with create (fencing)
    runs/{run}/snapshot/{seq:012d}      Segment: a compacted prefix of the log up to seq
    runs/{run}/inbox/{ms:015d}-{id}     InboxEntry: sent, not yet merged into the log
    runs/{run}/quarantine/{ms}-{id}     an inbox entry set aside: unreadable, or undecodable
    runs/{run}/forks/{fork}             ForkRecord: a fork of this run (its log is the truth)
    schedule/{due_ms:015d}-{run}~{tag}  ScheduleEntry: look at this run at that time
    leases/{run}                        Lease: who works on the run, until when
    runs/{run}/blobs/{sha}              the run refers to blob {sha} (deleted with the run)
    blobrefs/{sha}/{run}                the same reference, listed by gc (content: ms)
    blobgc/{sha}                        gc is deleting blob {sha} (see _store/payloads.py)
    blobs/{sha}                         a payload's bytes, stored once by content (sha256)
    attrs/{name}/{value}/{run}          search index of Context.set_attributes (content: ms)

A schedule key carries a tag after ``~``: ``t`` for the run's own next wake-up (written
with create, so repeating it is harmless); every other entry (a start, a send, a hold-off,
more events to merge) has a short reason and a random suffix, so none reuses a key an
agent is about to delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from substantial._core.runids import is_stored_run_id

__all__ = [
    "ATTRS_PREFIX",
    "BLOBS_PREFIX",
    "BLOB_MARKS_PREFIX",
    "RUNS_PREFIX",
    "SCHEDULE_PREFIX",
    "ScheduleEntry",
    "attr_key",
    "attr_prefix",
    "blob_key",
    "blob_mark_key",
    "blob_ref_key",
    "blob_ref_prefix",
    "fork_key",
    "forks_prefix",
    "inbox_key",
    "inbox_prefix",
    "lease_key",
    "log_prefix",
    "meta_key",
    "past_run",
    "quarantine_key",
    "quarantine_prefix",
    "run_blob_key",
    "run_blobs_prefix",
    "run_id_of",
    "run_prefix",
    "schedule_key",
    "schedule_parts",
    "segment_key",
    "snapshot_key",
    "snapshot_prefix",
]

RUNS_PREFIX = "runs/"
SCHEDULE_PREFIX = "schedule/"
BLOBS_PREFIX = "blobs/"
BLOB_MARKS_PREFIX = "blobgc/"
ATTRS_PREFIX = "attrs/"


def run_prefix(run_id: str) -> str:
    """The prefix of every key of one run."""
    return f"{RUNS_PREFIX}{run_id}/"


def past_run(run_id: str) -> str:
    """
    A key that sorts after every key under ``runs/{run}/`` (their next character is a
    lowercase letter), so listing ``after=past_run(run)`` skips the rest of a run at once.
    """
    return f"{run_prefix(run_id)}~"


def run_id_of(key: str) -> str:
    """The run a ``runs/...`` key belongs to."""
    return key[len(RUNS_PREFIX) :].partition("/")[0]


def meta_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}meta"


def log_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}log/"


def segment_key(run_id: str, seq: int) -> str:
    return f"{log_prefix(run_id)}{seq:012d}"


def snapshot_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}snapshot/"


def snapshot_key(run_id: str, seq: int) -> str:
    return f"{snapshot_prefix(run_id)}{seq:012d}"


def inbox_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}inbox/"


def inbox_key(run_id: str, sent_at_ms: int, entry_id: str) -> str:
    """Inbox keys sort by the time the entry was sent."""
    return f"{inbox_prefix(run_id)}{sent_at_ms:015d}-{entry_id}"


def quarantine_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}quarantine/"


def quarantine_key(run_id: str, inbox_key: str) -> str:
    """Where the inbox entry ``inbox_key`` is kept once it is set aside."""
    return quarantine_prefix(run_id) + inbox_key.rpartition("/")[2]


def forks_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}forks/"


def fork_key(run_id: str, fork_id: str) -> str:
    """The record, kept beside run ``run_id``, that ``fork_id`` is a fork of it."""
    return f"{forks_prefix(run_id)}{fork_id}"


def lease_key(run_id: str) -> str:
    return f"leases/{run_id}"


def schedule_key(due_ms: int, run_id: str, tag: str) -> str:
    return f"{SCHEDULE_PREFIX}{max(due_ms, 0):015d}-{run_id}~{tag}"


@dataclass(frozen=True)
class ScheduleEntry:
    """One ``schedule/`` key: run ``run_id`` wants an agent at ``due_ms``."""

    key: str
    run_id: str
    due_ms: int

    @classmethod
    def parse(cls, key: str) -> ScheduleEntry | None:
        """
        :return: the entry, or None if ``key`` is no schedule key or names no run (its
            run id breaks the rule: ``..``, ``order-42/``)
        """
        parts = schedule_parts(key)
        if parts is None or not is_stored_run_id(parts[1]):
            return None
        return cls(key, parts[1], int(parts[0]))


def schedule_parts(key: str) -> tuple[str, str] | None:
    """A schedule key's due time and run id, if it has the shape of one."""
    body = key[len(SCHEDULE_PREFIX) :]
    due, dash, rest = body[:15], body[15:16], body[16:]
    run_id, tilde, _tag = rest.rpartition("~")
    if not (due.isdigit() and dash == "-" and tilde):
        return None
    return due, run_id


def run_blobs_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}blobs/"


def run_blob_key(run_id: str, sha: str) -> str:
    return f"{run_blobs_prefix(run_id)}{sha}"


def blob_key(sha: str) -> str:
    return f"{BLOBS_PREFIX}{sha}"


def blob_ref_prefix(sha: str) -> str:
    return f"blobrefs/{sha}/"


def blob_ref_key(sha: str, run_id: str) -> str:
    return f"{blob_ref_prefix(sha)}{run_id}"


def blob_mark_key(sha: str) -> str:
    return f"{BLOB_MARKS_PREFIX}{sha}"


def attr_prefix(name: str, value: str) -> str:
    """The index prefix of runs whose attribute ``name`` is ``value`` (already quoted)."""
    return f"{ATTRS_PREFIX}{name}/{value}/"


def attr_key(name: str, value: str, run_id: str) -> str:
    return f"{attr_prefix(name, value)}{run_id}"
