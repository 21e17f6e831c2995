"""The commands on single runs and their listing: ``list``, ``show``, ``send``, ``cancel``,
``result``. Presentation only; the logic is in :mod:`substantial.ops`."""

from __future__ import annotations

import json
from collections import Counter
from contextlib import aclosing
from datetime import datetime
from typing import Any

import click

from substantial import ops as inspect
from substantial._cli.common import When, backend_option, fail, run_id_argument, with_backend
from substantial._cli.formatting import (
    Progress,
    call_args,
    count,
    event_text,
    json_text,
    table,
    time_text,
)
from substantial._cli.keys import cli_codecs
from substantial._conductor import Conductor
from substantial._core.status import RunStatus
from substantial.backends import Backend
from substantial.errors import CodecError

__all__ = ["cancel", "list_command", "plain_result", "result", "send", "show", "stats"]


@click.command("list")
@backend_option
@click.option("--workflow", help="Only runs of this workflow name.")
@click.option("--queue", help="Only runs of this queue.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Only runs in this status (repeatable).",
)
@click.option("--started-before", type=When(), help="ISO time, or an age like 2h or 30d.")
@click.option("--started-after", type=When(), help="ISO time, or an age like 2h or 30d.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many runs (a page).")
@click.option("--after", metavar="RUN", help="The page after this run (as printed by --limit).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
@click.option(
    "--where",
    multiple=True,
    metavar="NAME=VALUE",
    help="Only runs with this search attribute (repeatable); read from the index.",
)
def list_command(
    backend_url: str | None,
    workflow: str | None,
    queue: str | None,
    statuses: tuple[str, ...],
    started_before: datetime | None,
    started_after: datetime | None,
    limit: int | None,
    after: str | None,
    as_json: bool,
    where: tuple[str, ...],
) -> None:
    """
    List runs, oldest first. Reads every run's summary (an operator command), or, with
    --where, only those of the runs the attribute index lists. With --limit, lists one
    page in run-id order, reading only as far as the page goes, and prints on stderr
    the --after that gives the next page.
    """
    progress = Progress("runs read")
    wanted = [RunStatus(s) for s in statuses] or None
    filters = (workflow, wanted, started_before, started_after)

    async def body(backend: Backend) -> list[inspect.RunSummary]:
        if where:
            return await _where(backend, filters, queue, where, limit, after, progress)
        if limit is None:
            return await inspect.list_runs(backend, *filters, queue=queue, progress=progress)
        page: list[inspect.RunSummary] = []
        read = min(limit + 1, 1000)
        found = inspect.iter_runs(backend, *filters, queue=queue, after=after, read=read,
                                  progress=progress)  # fmt: skip
        async with aclosing(found):
            async for run in found:
                page.append(run)
                if len(page) > limit:
                    break
        return page

    runs = with_backend(backend_url, body)
    progress.finish()
    more = limit is not None and len(runs) > limit
    runs = runs[:limit]
    if as_json:
        click.echo(json.dumps([run.to_json() for run in runs], indent=2))
    elif runs:
        rows = [["RUN", "WORKFLOW", "STATUS", "STARTED", "UPDATED"]]
        for run in runs:
            rows.append(
                [
                    run.run_id,
                    run.workflow,
                    run.status.value,
                    time_text(run.created),
                    time_text(run.updated),
                ]
            )
        table(rows)
    click.echo(count(len(runs), "run"), err=True)
    if more:
        click.echo(f"more: --after {runs[-1].run_id}", err=True)


async def _where(
    backend: Backend,
    filters: tuple[Any, ...],
    queue: str | None,
    where: tuple[str, ...],
    limit: int | None,
    after: str | None,
    progress: Progress,
) -> list[inspect.RunSummary]:
    """``list --where``: the runs the attribute index finds (a page in run-id order)."""
    runs = await inspect.list_runs(backend, *filters, queue=queue, where=where, progress=progress)
    if limit is not None:
        runs.sort(key=lambda run: run.run_id)
    return [run for run in runs if after is None or run.run_id > after]


@click.command()
@backend_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def stats(backend_url: str | None, as_json: bool) -> None:
    """Count runs by workflow and status. Reads every run's summary, as list does."""
    progress = Progress("runs read")
    runs = with_backend(backend_url, lambda backend: inspect.list_runs(backend, progress=progress))
    progress.finish()
    counts = Counter((run.workflow, run.status.value) for run in runs)
    by_status = Counter(run.status.value for run in runs)
    if as_json:
        by_workflow: dict[str, dict[str, int]] = {}
        for (name, status), n in sorted(counts.items()):
            by_workflow.setdefault(name, {})[status] = n
        click.echo(json.dumps({"total": len(runs), "by_status": dict(sorted(by_status.items())),
                               "by_workflow": by_workflow}, indent=2))  # fmt: skip
        return
    rows = [["WORKFLOW", "STATUS", "RUNS"]]
    rows += [[name, status, str(n)] for (name, status), n in sorted(counts.items())]
    rows += [["(all)", status, str(n)] for status, n in sorted(by_status.items())]
    table(rows)
    click.echo(count(len(runs), "run"), err=True)


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def show(backend_url: str | None, run_id: str, as_json: bool) -> None:
    """Show a run: status, arguments, outcome, and the timeline of its log."""
    details = with_backend(backend_url, lambda backend: inspect.describe_run(backend, run_id))
    if as_json:
        click.echo(json.dumps(details.to_json(), indent=2, default=str))
        return
    run = details.summary
    lines = [
        ("run", run.run_id),
        ("workflow", run.workflow),
        ("status", run.status.value),
        ("started", time_text(run.created)),
        ("updated", time_text(run.updated)),
        ("args", call_args(run.args)),
    ]
    if run.status is RunStatus.COMPLETED:
        lines.append(("result", json_text(run.result)))
    if run.error:
        lines.append(("error", run.error))
    if run.parked_reason:
        lines.append(("parked", run.parked_reason))
    lines += _when_lines(run)
    if run.custom_status is not None:
        lines.append(("says", json_text(run.custom_status)))
    if run.attributes:
        lines.append(("where", " ".join(f"{k}={v}" for k, v in run.attributes.items())))
    if details.lease_owner:
        lines.append(
            ("agent", f"{details.lease_owner} (lease until {time_text(details.lease_expires)})")
        )
    elif run.agent and not run.status.finished:
        lines.append(("agent", f"none now (last: {run.agent})"))
    if details.inbox:
        lines.append(("inbox", f"{details.inbox} event(s) not yet merged into the log"))
    for entry in details.quarantined:  # `substantial quarantine RUN --drop KEY` deletes one
        lines.append(("set aside", f"{entry.key}: {entry.reason}"))
    if run.forked_from:
        lines.append(("forked", f"from {run.forked_from} at #{run.fork_step}"))
    for fork in details.forks:
        lines.append(
            ("fork", f"{fork.run_id} at #{fork.step}" + (" (retry)" if fork.retry else ""))
        )
    for label, value in lines:
        click.echo(f"{label:<9} {value}".rstrip())
    click.echo("")
    click.echo("timeline")
    for event in details.history:
        click.echo(
            f"  {time_text(event.at, ms=True)}  {event.kind:<19} {event_text(event)}".rstrip()
        )


def _when_lines(run: inspect.RunSummary) -> list[tuple[str, str]]:
    """What a run waits for and until when, as ``show`` prints it."""
    at = time_text(run.wake_at) if run.wake_at is not None else ""
    if run.waiting_for:
        timeout = f" (times out at {at})" if at else ""
        return [("waits for", ", ".join(run.waiting_for) + timeout)]
    if not at or run.status.finished:
        return []
    return [("retry at" if run.status is RunStatus.PARKED else "wakes at", at)]


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.argument("name")
@click.argument("value", metavar="[JSON]", required=False)
def send(backend_url: str | None, run_id: str, name: str, value: str | None) -> None:
    """Send event NAME to a run, with an optional JSON value (default: null)."""
    try:
        decoded = None if value is None else json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="JSON") from None
    with_backend(
        backend_url,
        lambda backend: Conductor(backend, codecs=cli_codecs()).handle(run_id).send(name, decoded),
    )
    click.echo(f"sent {name} to {run_id}")


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
def cancel(backend_url: str | None, run_id: str) -> None:
    """Ask a run to stop; it ends cancelled after its finally blocks run."""
    with_backend(backend_url, lambda backend: Conductor(backend).handle(run_id).cancel())
    click.echo(f"cancel requested for {run_id}")


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--timeout", type=click.FloatRange(min=0), help="Seconds to wait at most.")
@click.option("--json", "as_json", is_flag=True, help='Print {"run_id": ..., "result": ...}.')
def result(backend_url: str | None, run_id: str, timeout: float | None, as_json: bool) -> None:
    """
    Wait for a run to finish and print its result as JSON.

    Exit status: 0 with the result; 1 if the run failed, was cancelled, reverted or
    terminated (the error on stderr), if --timeout passed first, or if there is no
    such run; 2 for a bad argument.
    """

    value = with_backend(backend_url, lambda backend: plain_result(backend, run_id, timeout))
    click.echo(json_text({"run_id": run_id, "result": value} if as_json else value))


async def plain_result(backend: Backend, run_id: str, timeout: float | None) -> Any:
    """
    Wait for a run to finish; its result as plain JSON data. A run that did not complete
    raises its error (``with_backend`` prints it and exits 1); a timeout exits 1 too.
    """
    try:
        await Conductor(backend).handle(run_id).result(timeout=timeout)
    except CodecError:
        pass  # its classes are not importable here: read as plain JSON below
    except TimeoutError:
        fail(f"run {run_id!r} has not finished after {timeout:g}s")
    return (await inspect.get_run(backend, run_id)).result
