"""Timing defaults, in one place. Key layout lives in :mod:`substantial._store.keys`."""

from __future__ import annotations

#: How long a lease lasts unless renewed. An agent that dies holds its runs this long.
LEASE_SECONDS = 10.0
#: A lease is renewed when this fraction of it has passed.
LEASE_RENEW_FRACTION = 1 / 3
#: Shortest and longest wait between schedule polls; the wait doubles while idle.
POLL_MIN_SECONDS = 0.02
POLL_MAX_SECONDS = 1.0
#: Schedule keys a poll reads first; it reads further pages only while all are due.
POLL_FIRST_PAGE = 16
#: How many runs one agent works on at once.
CONCURRENCY = 64
#: How long a parked run (one that no longer replays) waits before agents try it again.
PARK_RETRY_SECONDS = 60.0
#: A schedule entry whose run has no log yet is kept this long (its `start` may still be
#: writing) before it is dropped as the trace of a `start` that died half-way.
START_GRACE_SECONDS = 60.0
#: How often `Handle.result()` re-reads a run's status when no local agent can notify it.
RESULT_POLL_MIN_SECONDS = 0.02
RESULT_POLL_MAX_SECONDS = 1.0
#: First hold-off of a run whose wake-up failed with an error of its own (not the
#: store's); it doubles with each failure in a row, up to the conductor's ``park_retry``.
RUN_ERROR_RETRY_SECONDS = 1.0
#: A lease whose expiry lies more than this many lease lengths past the reader's clock
#: was written by a clock far ahead (or is forged): it is treated as expired. Agents
#: tolerate clocks up to this many lease lengths minus one ahead of each other.
LEASE_MAX_AHEAD = 5
#: Backoff for a run whose wake-up hit a storage outage.
OUTAGE_RETRY_MIN_SECONDS = 0.05
OUTAGE_RETRY_MAX_SECONDS = 5.0
#: A run's log is compacted into a snapshot object every this many segments, so that
#: resuming a long run reads one object and the few segments after it.
SNAPSHOT_EVERY = 64
#: A run that called ``compact()`` has its history compacted once this many segments
#: have been written since the last compaction: the bound on what it stores.
COMPACT_EVERY = 16
#: At most this many inbox events are merged in one wake-up; a run with more is woken
#: again at once. Bounds the memory and the history one wake-up adds, and keeps a run
#: flooded with events from holding an agent for long.
MERGE_LIMIT = 256
#: At most about this many bytes of inbox entries are merged in one wake-up (at least one
#: entry is, whatever its size); the rest waits for the next wake-up, at once.
MERGE_BYTES = 32 * 1024 * 1024
#: ``compact()`` compacts in memory once this many records were added since the last
#: compaction, so its cost per call stays constant however often it is called.
COMPACT_MIN_RECORDS = 32
#: How long cancelling an agent waits for in-flight steps before abandoning them.
SHUTDOWN_GRACE_SECONDS = 10.0
#: The most bytes one encoded value (arguments, an event's value, a step's or a run's
#: result, a status) may take, checked where it is encoded, before anything is written.
#: Fits every backend (Redis strings hold 512 MiB; S3 objects far more) with room for the
#: other events of a segment; an agent needs a few times this much memory per payload.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

#: A wake-up whose steps have run this long writes ``running`` into the run's summary
#: (quicker wake-ups leave it as it was: no extra write for a fast step).
RUNNING_AFTER_SECONDS = 1.0
#: How many of the things a waiting run waits for its summary names (then "N more").
WAITING_FOR_SHOWN = 5
