"""How statuses, times, durations, values and commands read on a page."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from substantial._core.status import RunStatus
from substantial.ops import RunSummary

__all__ = [
    "call_args",
    "cli_command",
    "doing",
    "duration_text",
    "json_text",
    "ms_time",
    "public_url",
    "run_duration",
    "time_ms_text",
    "time_text",
]

_SECRET_WORDS = ("password", "secret", "token", "key", "credential", "signature")


def time_text(value: datetime | None) -> str:
    """``2026-12-01 05:09:24Z``, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ms_time(seconds: float) -> str:
    """An epoch time in seconds as ``05:09:24.123``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S.%f")[:-3]


def time_ms_text(value: datetime | None) -> str:
    """``2026-12-01 05:09:24.123Z``, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def duration_text(seconds: float | None) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``3h07m``, ``2d04h``; ``-`` when unknown."""
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def run_duration(run: RunSummary, now: datetime) -> float | None:
    """From start to the last update of a finished run, or to now for one still going."""
    if run.created is None:
        return None
    end = run.updated if run.status.finished else now
    return None if end is None else (end - run.created).total_seconds()


def json_text(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr, indent=indent)


def call_args(args: Any) -> str:
    """``[[1, "a"], {"k": 2}]`` as ``1, "a", k=2``."""
    if isinstance(args, list) and len(args) == 2 and isinstance(args[1], dict):
        parts = [json_text(a) for a in args[0]]
        parts += [f"{k}={json_text(v)}" for k, v in args[1].items()]
        return ", ".join(parts)
    return json_text(args)


def doing(run: RunSummary, now: datetime) -> str:
    """What the run is doing, in a few words, from its summary alone."""
    status = run.status
    if status is RunStatus.PENDING:
        return "pending: no agent has picked it up yet"
    if status is RunStatus.QUEUED:
        return f"queued behind the concurrency limit of workflow {run.workflow}"
    if status is RunStatus.PAUSED:
        return "paused: no agent runs it until it is resumed"
    if status is RunStatus.RUNNING:
        return "running steps"
    if status in (RunStatus.SLEEPING, RunStatus.WAITING) and run.waiting_for:
        # a receive with a timeout sleeps until the timeout: say what it waits for
        timeout = f" (timeout {time_text(run.wake_at)})" if run.wake_at is not None else ""
        return "waiting for " + ", ".join(run.waiting_for) + timeout
    if status is RunStatus.SLEEPING:
        return f"sleeping until {time_text(run.wake_at)}" + _in(run.wake_at, now)
    if status is RunStatus.WAITING:
        return "waiting for an event"
    if status is RunStatus.PARKED:
        retry = f" (tried again at {time_text(run.wake_at)})" if run.wake_at is not None else ""
        return f"parked: {run.parked_reason or 'its code no longer replays its log'}{retry}"
    if status is RunStatus.FAILED:
        return f"failed: {run.error}" if run.error else "failed"
    if status is RunStatus.CORRUPT:
        return f"unreadable: {run.error}"
    return str(status.value)


def _in(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    left = (when - now).total_seconds()
    return f" (in {duration_text(left)})" if left > 0 else " (due)"


def public_url(url: str) -> str:
    """The backend URL without a password or secret-looking query values: pages show it."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:***@{host}" if ":" in user else f"{user}@{host}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = [any(word in name.lower() for word in _SECRET_WORDS) for name, _ in pairs]
    if netloc == parts.netloc and not any(secret):
        return url  # nothing to hide: as given (urlunsplit would turn memory:// into memory:)
    query = [
        (name, "***" if hide else value) for (name, value), hide in zip(pairs, secret, strict=True)
    ]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe="*/:")))


def cli_command(backend_url: str, *words: str, group: str = "") -> str:
    """
    The ``substantial`` command line that does the same as a button.

    :param group: the command group ``words[0]`` belongs to (``schedule``, ``queue``)
    """
    command = ["substantial", *([group] if group else []), words[0]]
    return shlex.join([*command, "--backend", public_url(backend_url), *words[1:]])
