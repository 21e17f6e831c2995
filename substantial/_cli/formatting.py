"""How the commands print: times, JSON values, call arguments, tables, progress, and one
line per log event."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from substantial._client.handle import HistoryEvent

__all__ = ["Progress", "call_args", "count", "event_text", "json_text", "table", "time_text"]


class Progress:
    """A progress bar on stderr when it is a terminal; otherwise nothing until the end."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty and total is None:
            click.echo(f"\r{self.label}: {done}", err=True, nl=False)
        elif self.tty and total:
            if self.bar is None:
                click.echo("\r\033[K", err=True, nl=False)
                self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.update(done - self.done)
        self.done = done

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()
        elif self.tty and self.done:
            click.echo("\r\033[K", err=True, nl=False)


def count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def time_text(value: datetime | None, *, ms: bool = False) -> str:
    if value is None:
        return "-"
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{value.microsecond // 1000:03d}Z" if ms else f"{text}Z"


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def call_args(args: Any) -> str:
    """``[[1, "a"], {"k": 2}]`` as ``1, "a", k=2``."""
    if isinstance(args, list) and len(args) == 2 and isinstance(args[1], dict):
        parts = [json_text(a) for a in args[0]] + [
            f"{k}={json_text(v)}" for k, v in args[1].items()
        ]
        return ", ".join(parts)
    return json_text(args)


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


def event_text(event: HistoryEvent) -> str:
    d = event.details
    kind = event.kind
    if kind == "started":
        fork = d.get("forked_from")
        of = f"  (fork of {fork} at #{d.get('fork_step', 0)})" if fork else ""
        return f"{d.get('workflow', '')}({call_args(d.get('args'))}){of}"
    if kind == "step_completed":
        step = f"#{d.get('position', 0)} {d.get('name', '')}"
        tries = f" (attempt {d['attempts']})" if d.get("attempts", 0) > 1 else ""
        if "failure" in d:
            return f"{step} failed{tries}: {d['failure']['type']}: {d['failure']['message']}"
        return f"{step} -> {json_text(d.get('result'))}{tries}"
    if kind == "step_attempt_failed":
        failure = d.get("failure", {})
        retry = time_text(datetime.fromtimestamp(d.get("retry_at_ms", 0) / 1000, UTC))
        return (
            f"#{d.get('position', 0)} {d.get('name', '')} attempt {d.get('attempt', 0)}: "
            f"{failure.get('type')}: {failure.get('message')}; retry at {retry}"
        )
    if kind == "timer_started":
        fire = time_text(datetime.fromtimestamp(d.get("fire_at_ms", 0) / 1000, UTC))
        return f"#{d.get('position', 0)} sleep until {fire}"
    if kind == "timer_fired":
        return f"#{d.get('position', 0)}"
    if kind == "event_received":
        return f"{d.get('name', '')} = {json_text(d.get('value'))}"
    if kind == "completed":
        return f"-> {json_text(d.get('result'))}"
    if kind == "failed":
        return f"{d['failure']['type']}: {d['failure']['message']}" if "failure" in d else ""
    if kind in ("cancel_requested", "cancelled"):
        return ""
    if kind == "terminated":
        return str(d.get("reason", ""))
    return json_text(d)
