"""
The key layout: every key substantial stores, built and parsed here and nowhere else.

::

    runs/{run}/meta                     RunMeta: a summary, rebuilt from the log if lost
    runs/{run}/log/{seq:012d}           Segment: immutable, written with create (fencing)
    runs/{run}/snapshot/{seq:012d}      Segment: a compacted prefix of the log up to seq
    runs/{run}/inbox/{ms:015d}-{id}     InboxEntry: sent, not yet merged into the log
    runs/{run}/quarantine/{ms}-{id}     an inbox entry set aside: unreadable, or undecodable
    runs/{run}/forks/{fork}             ForkRecord: a fork of this run (its log is the truth)
    schedule/at/{bucket}/{due_ms:015d}-{run}~{tag}
                                        ScheduleEntry: look at this run at that time; the
                                        bucket is four folders of the due time (below)
    queues/{queue}/schedule/at/...      the same, for a run of a queue other than "default"
    schedule/!paused                    the queue is paused (Conductor.pause_queue); in
                                        each queue's index, before every entry
    leases/{run}                        Lease: who works on the run, until when
    runs/{run}/blobs/{sha}              the run refers to blob {sha} (deleted with the run)
    blobrefs/{sha}/{run}                the same reference, listed by gc (content: ms)
    blobgc/{sha}                        gc is deleting blob {sha} (see _store/payloads.py)
    blobs/{sha}                         a payload's bytes, stored once by content (sha256)
    attrs/{name}/{value}/{run}          search index of Context.set_attributes (content: ms)
    flow/schedules/{id}                 CronSchedule: a cron schedule (Conductor.schedule)

A schedule's next tick is an entry in its queue's index like a run's, tagged ``cron``,
with the schedule id in the place of a run id.

Each queue has its own schedule index, so agents poll only the queues they serve; the
queue ``default`` keeps the ``schedule/`` prefix, so entries written before queues existed
are still served (docs/decisions.md). A tag may end in ``.`` and eight hex digits of the
run's workflow name (:class:`Route`): an agent skips entries of workflows it does not
know, without reading anything; an entry without them is for any agent of the queue.

A schedule key's bucket is ``{due // 10**10:05d}/{due // 10**8 % 100:02d}/{due // 10**6 %
100:02d}/{due // 10**4 % 100:02d}``: folders of about 116 days, 28 hours, 17 minutes and 10
seconds, so keys sort by due time and a time range is a few folders. A poll lists the
index only up to a bound a little past now (:func:`schedule_bound`,
:meth:`Backend.list_before`): on the files backend, where one listing reads whole folders,
it reads the paused mark, the folders of the past and present (emptied ones are removed as
it passes) and never a folder of the future, so an idle poll costs the same with 10 or
300,000 runs sleeping (docs/decisions.md). Entries written before buckets existed, straight
under the index as ``{due_ms:015d}-{run}~{tag}``, sort before ``at/`` and are still served:
the poll reads them first, and once it meets one not yet due it lists ``at/`` on its own
(unless its page already reached it).

A schedule key carries a tag after ``~``: ``t`` for the run's own next wake-up (written
with create, so repeating it is harmless); every other entry (a start, a send, a hold-off,
more events to merge) has a short reason and a random suffix, so none reuses a key an
agent is about to delete.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from substantial._core.runids import is_stored_run_id
from substantial.errors import InvalidName

__all__ = [
    "ATTRS_PREFIX",
    "BLOBS_PREFIX",
    "BLOB_MARKS_PREFIX",
    "BUCKETS",
    "DEFAULT_QUEUE",
    "DEFAULT_ROUTE",
    "QUEUES_PREFIX",
    "RUNS_PREFIX",
    "SCHEDULES_PREFIX",
    "SCHEDULE_PREFIX",
    "TICK_TAG",
    "Route",
    "ScheduleEntry",
    "attr_key",
    "attr_prefix",
    "blob_key",
    "blob_mark_key",
    "blob_ref_key",
    "blob_ref_prefix",
    "check_name",
    "cron_key",
    "flat_schedule_key",
    "fork_key",
    "forks_prefix",
    "inbox_key",
    "inbox_prefix",
    "is_flat_schedule_key",
    "lease_key",
    "log_prefix",
    "meta_key",
    "past_run",
    "quarantine_key",
    "quarantine_prefix",
    "queue_paused_key",
    "run_blob_key",
    "run_blobs_prefix",
    "run_id_of",
    "run_prefix",
    "schedule_bound",
    "schedule_key",
    "schedule_parts",
    "schedule_prefix",
    "segment_key",
    "snapshot_key",
    "snapshot_prefix",
]

RUNS_PREFIX = "runs/"
SCHEDULE_PREFIX = "schedule/"
BLOBS_PREFIX = "blobs/"
BLOB_MARKS_PREFIX = "blobgc/"
ATTRS_PREFIX = "attrs/"
QUEUES_PREFIX = "queues/"
DEFAULT_QUEUE = "default"

NAME_RULE = "use 1-64 letters, digits or ._- starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str, what: str) -> str:
    """
    Check a queue, limit or schedule name: it becomes part of keys.

    :raises InvalidName: unless it is 1-64 letters, digits or ``._-``
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(what, name, NAME_RULE)
    return name


def workflow_mark(workflow: str) -> str:
    """The eight hex digits that stand for a workflow name in schedule keys."""
    return hashlib.sha256(workflow.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Route:
    """
    Which agents a schedule entry is for: those serving ``queue`` that know the
    workflow marked ``mark`` (``""``: any of them).
    """

    queue: str = DEFAULT_QUEUE
    mark: str = ""
    #: the run's priority (0-9): of the entries a poll finds due, higher ones go first
    priority: int = 0

    @classmethod
    def of(cls, queue: str, workflow: str, priority: int = 0) -> Route:
        """The route of a run of ``workflow`` in ``queue`` (``""``: the default queue)."""
        mark = workflow_mark(workflow) if workflow else ""
        return cls(queue or DEFAULT_QUEUE, mark, min(max(priority, 0), 9) if mark else 0)

    def any_agent(self) -> Route:
        """The same queue, for any agent (terminate, pause: no workflow code needed)."""
        return Route(self.queue)

    @property
    def suffix(self) -> str:
        """What a schedule key's tag ends in: ``.``, the mark, and a priority over 0."""
        if not self.mark:
            return ""
        return f".{self.mark}{self.priority or ''}"


#: The route of entries for any agent of the default queue (and of entries written
#: before queues existed).
DEFAULT_ROUTE = Route()


def schedule_prefix(queue: str = DEFAULT_QUEUE) -> str:
    """Where the schedule index of ``queue`` lives."""
    if queue == DEFAULT_QUEUE:
        return SCHEDULE_PREFIX
    return f"{QUEUES_PREFIX}{queue}/{SCHEDULE_PREFIX}"


#: The tag of a cron schedule's tick entry.
TICK_TAG = "cron"
SCHEDULES_PREFIX = "flow/schedules/"


def cron_key(schedule_id: str) -> str:
    return f"{SCHEDULES_PREFIX}{schedule_id}"


def queue_paused_key(queue: str) -> str:
    """
    The mark of a paused queue: in the queue's own index, sorted before every entry
    (``!`` before digits), so the poll that lists the index sees it at no extra cost.
    """
    return f"{schedule_prefix(queue)}!paused"


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


#: Where the time buckets of a schedule index start, below its prefix: after the entries
#: of the flat layout (digits) and the paused mark (``!``).
BUCKETS = "at/"
_BUCKET_CHARS = len("00000/00/00/00/")


def _bucket(due_ms: int) -> str:
    """The folders of a due time: about 116 days, 28 hours, 17 minutes, 10 seconds."""
    return (
        f"{due_ms // 10**10:05d}/{due_ms // 10**8 % 100:02d}/"
        f"{due_ms // 10**6 % 100:02d}/{due_ms // 10**4 % 100:02d}/"
    )


def schedule_key(due_ms: int, run_id: str, tag: str, route: Route = DEFAULT_ROUTE) -> str:
    due = max(due_ms, 0)
    name = f"{due:015d}-{run_id}~{tag}{route.suffix}"
    return f"{schedule_prefix(route.queue)}{BUCKETS}{_bucket(due)}{name}"


def flat_schedule_key(due_ms: int, run_id: str, tag: str, route: Route = DEFAULT_ROUTE) -> str:
    """The key the same entry had before buckets: agents of that version still write it."""
    return f"{schedule_prefix(route.queue)}{max(due_ms, 0):015d}-{run_id}~{tag}{route.suffix}"


def schedule_bound(queue: str, until_ms: int) -> str:
    """A key after every entry of ``queue`` due at ``until_ms`` or before, and before the rest."""
    until = max(until_ms, 0)
    return f"{schedule_prefix(queue)}{BUCKETS}{_bucket(until)}{until:015d}."


def is_flat_schedule_key(key: str, queue: str = DEFAULT_QUEUE) -> bool:
    """Whether a key of ``queue``'s index is of the flat layout (written before buckets)."""
    return not key.startswith(schedule_prefix(queue) + BUCKETS)


@dataclass(frozen=True)
class ScheduleEntry:
    """One schedule key: run ``run_id`` wants an agent at ``due_ms``."""

    key: str
    run_id: str
    due_ms: int
    #: the queue and workflow mark the key names
    route: Route = DEFAULT_ROUTE
    #: a cron schedule's tick (``run_id`` is the schedule's id), not a run's wake-up
    tick: bool = False

    @classmethod
    def parse(cls, key: str) -> ScheduleEntry | None:
        """
        :return: the entry, or None if ``key`` is no schedule key or names no run (its
            run id breaks the rule: ``..``, ``order-42/``)
        """
        parts = schedule_parts(key)
        if parts is None or not is_stored_run_id(parts[1]):
            return None
        queue, tag = _queue_of(key), parts[2]
        reason, dot, mark = tag.rpartition(".")
        if not dot:
            reason, mark = tag, ""
        priority = int(mark[8:]) if mark[8:].isdigit() else 0
        route = Route(queue, mark[:8], priority)
        return cls(key, parts[1], int(parts[0]), route, reason == TICK_TAG)


def _queue_of(key: str) -> str:
    if key.startswith(QUEUES_PREFIX):
        return key[len(QUEUES_PREFIX) :].partition("/")[0]
    return DEFAULT_QUEUE


def schedule_parts(key: str) -> tuple[str, str, str] | None:
    """
    A schedule key's due time, run id and tag, if it has the shape of one (in a time
    bucket that matches its due time, or in the flat layout of before buckets).
    """
    if key.startswith(QUEUES_PREFIX):
        _, _, rest = key[len(QUEUES_PREFIX) :].partition("/")
        if not rest.startswith(SCHEDULE_PREFIX):
            return None
        body = rest[len(SCHEDULE_PREFIX) :]
    elif key.startswith(SCHEDULE_PREFIX):
        body = key[len(SCHEDULE_PREFIX) :]
    else:
        return None
    if body.startswith(BUCKETS):
        bucket, body = (
            body[len(BUCKETS) : len(BUCKETS) + _BUCKET_CHARS],
            body[len(BUCKETS) + _BUCKET_CHARS :],
        )
        if not body[:15].isdigit() or bucket != _bucket(int(body[:15])):
            return None
    due, dash, rest = body[:15], body[15:16], body[16:]
    run_id, tilde, tag = rest.rpartition("~")
    if not (due.isdigit() and dash == "-" and tilde):
        return None
    return due, run_id, tag


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
