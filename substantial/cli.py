"""
The ``substantial`` command. It parses arguments, imports, and calls the public API;
the logic lives in the library (operator commands: :mod:`substantial.inspect`).

    substantial worker myapp.flows:conductor
    substantial worker --app myapp.flows --backend redis://127.0.0.1:6379/0
    substantial check --backend file://./runs
    substantial list|show|send|cancel|result|replay|quarantine|gc --backend URL ...

Errors are one line on stderr (``error: ...``); a bad argument exits 2, a failed
operation 1.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import anyio
import click

from substantial import inspect, logs, quarantine
from substantial.backends import Backend, from_url
from substantial.conductor import Conductor
from substantial.errors import BackendError, CodecError, RunNotFound, SubstantialError
from substantial.handle import HistoryEvent, RunStatus
from substantial.runs import check_run_id
from substantial.workflow import Workflow

__all__ = ["main"]

log = logging.getLogger("substantial.cli")

backend_option = click.option(
    "--backend",
    "backend_url",
    envvar="SUBSTANTIAL_BACKEND",
    help="Storage URL: file://PATH, redis://HOST:PORT/DB, s3://BUCKET/PREFIX?endpoint_url=..., "
    "memory://. Default: $SUBSTANTIAL_BACKEND.",
)


@click.group()
@click.version_option(package_name="substantial")
def main() -> None:
    """Brokerless durable execution: run agents and inspect runs."""


def _import_object(path: str) -> Any:
    """Import ``module`` or ``module:attribute``."""
    module_name, _, attribute = path.partition(":")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from None
    if not attribute:
        return module
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise click.UsageError(f"module {module_name!r} has no attribute {attribute!r}") from None


def _workflows_in(module: Any) -> list[Workflow[Any]]:
    return [value for value in vars(module).values() if isinstance(value, Workflow)]


def _open_backend(url: str) -> Backend:
    try:
        return from_url(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


async def _check_reachable(backend: Backend) -> None:
    check = getattr(backend, "check", None)
    if check is not None:
        await check()
    await backend.list("schedule/", limit=1)


async def _check_writable(backend: Backend) -> None:
    """Write and delete a probe key: a store that answers reads may still refuse writes."""
    key = f"health/probe-{uuid.uuid4().hex}"
    await backend.create(key, b"substantial check")
    await backend.delete(key)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
    )
    for handler in logging.getLogger().handlers:
        logs.install(handler)


@main.command()
@click.argument("target", required=False)
@click.option("--app", help="Module whose @workflow functions the agent runs (with --backend).")
@backend_option
@click.option("--concurrency", type=click.IntRange(min=1), help="Runs worked on at once.")
@click.option("--lease", type=click.FloatRange(min=0.1), help="Lease length in seconds.")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(
    target: str | None,
    app: str | None,
    backend_url: str | None,
    concurrency: int | None,
    lease: float | None,
    log_level: str,
) -> None:
    """
    Run an agent until SIGTERM or SIGINT.

    TARGET is `module:conductor`, a Conductor with its workflows registered. Or give
    --app MODULE and --backend URL: every @workflow in MODULE is registered.
    """
    _configure_logging(log_level)
    if target is not None:
        conductor = _import_object(target)
        if not isinstance(conductor, Conductor):
            raise click.UsageError(f"{target!r} is a {type(conductor).__name__}, not a Conductor")
        if backend_url:
            conductor = _rebuilt(conductor, _open_backend(backend_url))
    elif app and backend_url:
        module = _import_object(app)
        conductor = Conductor(_open_backend(backend_url))
        workflows = _workflows_in(module)
        if not workflows:
            raise click.UsageError(f"module {app!r} defines no @workflow functions")
        conductor.register(*workflows)
    else:
        raise click.UsageError("give TARGET (module:conductor), or both --app and --backend")
    if concurrency is not None:
        conductor.concurrency = concurrency
    if lease is not None:
        conductor.lease_seconds = lease
    try:
        anyio.run(_serve_until_signal, conductor)
    except BackendError as exc:
        click.echo(f"error: backend unreachable: {exc}", err=True)
        sys.exit(1)


def _rebuilt(conductor: Conductor, backend: Backend) -> Conductor:
    """The same conductor settings and workflows on another backend."""
    fresh = Conductor(
        backend,
        concurrency=conductor.concurrency,
        lease=conductor.lease_seconds,
        park_retry=conductor.park_retry,
        shutdown_grace=conductor.shutdown_grace,
    )
    fresh.register(*conductor.workflows)
    return fresh


async def _serve_until_signal(conductor: Conductor) -> None:
    await _check_reachable(conductor.backend)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await tg.start(conductor.serve)
            log.info(
                "worker %s: %d workflows, concurrency %d, lease %gs",
                conductor.name,
                len(conductor.workflows),
                conductor.concurrency,
                conductor.lease_seconds,
            )
            async for signum in signals:
                log.info("worker %s: %s, stopping", conductor.name, signal.Signals(signum).name)
                tg.cancel_scope.cancel()
                break
    await conductor.aclose()


@main.command()
@backend_option
def check(backend_url: str | None) -> None:
    """
    Exit 0 if the backend answers and takes writes, 1 if not (unreachable, or refusing
    writes: full, out of memory, read-only, a permission).
    """
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    backend = _open_backend(backend_url)

    async def probe() -> None:
        try:
            await _check_reachable(backend)
            await _check_writable(backend)
        finally:
            await backend.aclose()

    try:
        anyio.run(probe)
    except (BackendError, OSError) as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    click.echo(f"healthy: {backend_url}")


# ---- operator commands: presentation only; the logic is in substantial.inspect ----

T = TypeVar("T")

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class _Duration(click.ParamType[timedelta]):
    """``90s``, ``30m``, ``2h``, ``30d``, ``1w``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 2h, 30d or 1w", param, ctx)
        return timedelta(**{_UNITS[match[2]]: float(match[1])})


class _When(click.ParamType[datetime]):
    """An ISO 8601 time (UTC unless it says otherwise), or an age like ``2h`` (ago)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if re.fullmatch(r"\d+(?:\.\d+)?[smhdw]", text):
            return datetime.now(UTC) - _Duration().convert(text, param, ctx)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither an ISO time nor an age like 2h or 30d", param, ctx)
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _run_id(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        for run_id in value if isinstance(value, tuple) else (value,):
            check_run_id(run_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _with_backend(backend_url: str | None, body: Callable[[Backend], Awaitable[T]]) -> T:
    """Open the backend, run ``body`` on it, close it; errors become one line and exit 1."""
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    backend = _open_backend(backend_url)

    async def run() -> T:
        try:
            return await body(backend)
        finally:
            with anyio.CancelScope(shield=True):
                await backend.aclose()

    try:
        return anyio.run(run)
    except Exception as exc:
        error = _leaf(exc)
        if isinstance(error, RunNotFound):
            _fail(f"run {error.run_id!r} not found")
        if isinstance(error, BackendError | OSError):
            _fail(f"backend unreachable: {error}")
        if isinstance(error, SubstantialError):
            _fail(str(error))
        raise


class _Progress:
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


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _time(value: datetime | None, *, ms: bool = False) -> str:
    if value is None:
        return "-"
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{value.microsecond // 1000:03d}Z" if ms else f"{text}Z"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


def _call_args(args: Any) -> str:
    """``[[1, "a"], {"k": 2}]`` as ``1, "a", k=2``."""
    if isinstance(args, list) and len(args) == 2 and isinstance(args[1], dict):
        parts = [_json(a) for a in args[0]] + [f"{k}={_json(v)}" for k, v in args[1].items()]
        return ", ".join(parts)
    return _json(args)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())


@main.command("list")
@backend_option
@click.option("--workflow", help="Only runs of this workflow name.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Only runs in this status (repeatable).",
)
@click.option("--started-before", type=_When(), help="ISO time, or an age like 2h or 30d.")
@click.option("--started-after", type=_When(), help="ISO time, or an age like 2h or 30d.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_command(
    backend_url: str | None,
    workflow: str | None,
    statuses: tuple[str, ...],
    started_before: datetime | None,
    started_after: datetime | None,
    as_json: bool,
) -> None:
    """List runs, oldest first. Reads every key under runs/: an operator command."""
    progress = _Progress("runs read")

    async def body(backend: Backend) -> list[inspect.RunSummary]:
        return await inspect.list_runs(
            backend,
            workflow=workflow,
            status=[RunStatus(s) for s in statuses] or None,
            started_before=started_before,
            started_after=started_after,
            progress=progress,
        )

    runs = _with_backend(backend_url, body)
    progress.finish()
    if as_json:
        click.echo(json.dumps([run.to_json() for run in runs], indent=2))
    elif runs:
        rows = [["RUN", "WORKFLOW", "STATUS", "STARTED", "UPDATED"]]
        for run in runs:
            rows.append(
                [run.run_id, run.workflow, run.status.value, _time(run.created), _time(run.updated)]
            )
        _table(rows)
    click.echo(_count(len(runs), "run"), err=True)


@main.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=_run_id)
def show(backend_url: str | None, run_id: str) -> None:
    """Show a run: status, arguments, outcome, and the timeline of its log."""
    details = _with_backend(backend_url, lambda backend: inspect.describe_run(backend, run_id))
    run = details.summary
    lines = [
        ("run", run.run_id),
        ("workflow", run.workflow),
        ("status", run.status.value),
        ("started", _time(run.created)),
        ("updated", _time(run.updated)),
        ("args", _call_args(run.args)),
    ]
    if run.status is RunStatus.COMPLETED:
        lines.append(("result", _json(run.result)))
    if run.error:
        lines.append(("error", run.error))
    if run.parked_reason:
        lines.append(("parked", run.parked_reason))
    if run.wake_at is not None:
        lines.append(("wakes at", _time(run.wake_at)))
    if details.lease_owner:
        lines.append(
            ("agent", f"{details.lease_owner} (lease until {_time(details.lease_expires)})")
        )
    if details.inbox:
        lines.append(("inbox", f"{details.inbox} event(s) not yet merged into the log"))
    for entry in details.quarantined:  # `substantial quarantine RUN --drop KEY` deletes one
        lines.append(("set aside", f"{entry.key}: {entry.reason}"))
    for label, value in lines:
        click.echo(f"{label:<9} {value}".rstrip())
    click.echo("")
    click.echo("timeline")
    for event in details.history:
        click.echo(f"  {_time(event.at, ms=True)}  {event.kind:<19} {_event_text(event)}".rstrip())


def _event_text(event: HistoryEvent) -> str:
    d = event.details
    kind = event.kind
    if kind == "started":
        return f"{d.get('workflow', '')}({_call_args(d.get('args'))})"
    if kind == "step_completed":
        step = f"#{d.get('position', 0)} {d.get('name', '')}"
        tries = f" (attempt {d['attempts']})" if d.get("attempts", 0) > 1 else ""
        if "failure" in d:
            return f"{step} failed{tries}: {d['failure']['type']}: {d['failure']['message']}"
        return f"{step} -> {_json(d.get('result'))}{tries}"
    if kind == "step_attempt_failed":
        failure = d.get("failure", {})
        retry = _time(datetime.fromtimestamp(d.get("retry_at_ms", 0) / 1000, UTC))
        return (
            f"#{d.get('position', 0)} {d.get('name', '')} attempt {d.get('attempt', 0)}: "
            f"{failure.get('type')}: {failure.get('message')}; retry at {retry}"
        )
    if kind == "timer_started":
        fire = _time(datetime.fromtimestamp(d.get("fire_at_ms", 0) / 1000, UTC))
        return f"#{d.get('position', 0)} sleep until {fire}"
    if kind == "timer_fired":
        return f"#{d.get('position', 0)}"
    if kind == "event_received":
        return f"{d.get('name', '')} = {_json(d.get('value'))}"
    if kind == "completed":
        return f"-> {_json(d.get('result'))}"
    if kind == "failed":
        return f"{d['failure']['type']}: {d['failure']['message']}" if "failure" in d else ""
    if kind in ("cancel_requested", "cancelled"):
        return ""
    return _json(d)


@main.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=_run_id)
@click.argument("name")
@click.argument("value", metavar="[JSON]", required=False)
def send(backend_url: str | None, run_id: str, name: str, value: str | None) -> None:
    """Send event NAME to a run, with an optional JSON value (default: null)."""
    try:
        decoded = None if value is None else json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="JSON") from None
    _with_backend(
        backend_url, lambda backend: Conductor(backend).handle(run_id).send(name, decoded)
    )
    click.echo(f"sent {name} to {run_id}")


@main.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=_run_id)
def cancel(backend_url: str | None, run_id: str) -> None:
    """Ask a run to stop; it ends cancelled after its finally blocks run."""
    _with_backend(backend_url, lambda backend: Conductor(backend).handle(run_id).cancel())
    click.echo(f"cancel requested for {run_id}")


@main.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=_run_id)
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait at most.")
def result(backend_url: str | None, run_id: str, timeout: float | None) -> None:
    """Wait for a run to finish and print its result as JSON; exit 1 if it failed."""

    async def body(backend: Backend) -> tuple[bool, Any]:
        try:
            await Conductor(backend).handle(run_id).result(timeout=timeout)
        except CodecError:
            pass  # its classes are not importable here: print it as plain JSON below
        except TimeoutError:
            return False, None
        return True, (await inspect.get_run(backend, run_id)).result

    finished, value = _with_backend(backend_url, body)
    if not finished:
        _fail(f"run {run_id!r} has not finished after {timeout:g}s")
    click.echo(_json(value))


@main.command()
@click.argument("run_ids", metavar="[RUN]...", nargs=-1, callback=_run_id)
@click.option("--app", required=True, help="Module whose @workflow functions are the new code.")
@backend_option
@click.option("--all", "include_finished", is_flag=True, help="Finished runs too.")
def replay(
    run_ids: tuple[str, ...], app: str, backend_url: str | None, include_finished: bool
) -> None:
    """
    Replay stored logs against the current code; exit 1 if any would not replay.

    A deploy gate: checks every unfinished run (or the RUNs given) and writes nothing.
    """
    workflows = _workflows_in(_import_object(app))
    if not workflows:
        raise click.UsageError(f"module {app!r} defines no @workflow functions")
    progress = _Progress("runs replayed")
    checks = _with_backend(
        backend_url,
        lambda backend: inspect.check_replay(
            workflows,
            backend,
            list(run_ids) or None,
            include_finished=include_finished,
            progress=progress,
        ),
    )
    progress.finish()
    problems = [check for check in checks if not check.ok]
    for check in problems:
        if check.outcome == "nondeterminism":
            where = "the end" if check.position is None else f"position {check.position}"
            click.echo(
                f"{check.run_id} ({check.workflow}): nondeterminism at {where}: "
                f"log has {check.logged}; code has {check.code}"
            )
        else:
            click.echo(f"{check.run_id} ({check.workflow or '?'}): {check.outcome}: {check.detail}")
    click.echo(f"replayed {_count(len(checks), 'run')}: {len(problems)} would not replay")
    if problems:
        sys.exit(1)


@main.command()
@click.argument("change_id")
@click.option("--app", required=True, help="Module with the current @workflow functions.")
@backend_option
def versions(change_id: str, app: str, backend_url: str | None) -> None:
    """
    List unfinished runs still on the old side of c.version(CHANGE_ID).

    When none are left, the old branch and the version() call can be deleted.
    """
    workflows = _workflows_in(_import_object(app))
    if not workflows:
        raise click.UsageError(f"module {app!r} defines no @workflow functions")
    progress = _Progress("runs replayed")
    old = _with_backend(
        backend_url,
        lambda backend: inspect.runs_on_old_branch(
            workflows, backend, change_id, progress=progress
        ),
    )
    progress.finish()
    for run_id in old:
        click.echo(run_id)
    click.echo(f"{_count(len(old), 'run')} on the old side of {change_id!r}", err=True)


@main.command("quarantine")
@backend_option
@click.argument("run_id", metavar="RUN", callback=_run_id)
@click.option("--drop", "keys", multiple=True, metavar="KEY", help="Delete this entry.")
@click.option("--all", "drop_all", is_flag=True, help="Delete every entry.")
def quarantine_command(
    backend_url: str | None, run_id: str, keys: tuple[str, ...], drop_all: bool
) -> None:
    """List a run's inbox entries set aside as unmergeable, or delete them."""
    if not keys and not drop_all:
        for entry in _with_backend(backend_url, lambda b: quarantine.list_quarantined(b, run_id)):
            click.echo(f"{entry.key}  {_time(entry.at)}  {entry.reason}")
        return
    wanted = None if drop_all else keys
    dropped = _with_backend(backend_url, lambda b: quarantine.drop(b, run_id, wanted))
    for key in dropped:
        click.echo(f"dropped {key}")
    missing = [key for key in keys if quarantine.full_key(run_id, key) not in dropped]
    if missing:
        _fail(f"not in the quarantine of run {run_id!r}: {', '.join(missing)}")


@main.command("gc")
@backend_option
@click.option("--older-than", required=True, type=_Duration(), help="e.g. 30d, 12h.")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
def gc_command(backend_url: str | None, older_than: timedelta, dry_run: bool) -> None:
    """Delete finished runs last updated longer ago than --older-than, with all their keys."""
    progress = _Progress("runs deleted" if not dry_run else "runs examined")
    outcome = _with_backend(
        backend_url,
        lambda backend: inspect.gc(backend, older_than, dry_run=dry_run, progress=progress),
    )
    progress.finish()
    verb = "would delete" if dry_run else "deleted"
    for run_id in outcome.runs:
        click.echo(f"{verb} {run_id}")
    for run_id in outcome.busy:
        click.echo(f"skipped {run_id}: an agent holds its lease")
    for run_id in outcome.live:
        click.echo(f"skipped {run_id}: its summary says finished, its log does not")
    click.echo(f"{verb} {_count(len(outcome.runs), 'run')} ({_count(outcome.keys, 'key')})")
