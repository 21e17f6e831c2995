"""
Run surgery from the terminal: ``fork`` and ``retry`` one run, and ``cancel``,
``terminate``, ``retry``, ``pause`` and ``resume`` every run a filter selects
(``--status``, ``--workflow``, ``--queue``, ``--started-before``, ``--started-after``,
``--dry-run``), with a progress bar on a terminal and a summary of what was done.

:func:`with_filters` gives an existing one-run command (``cancel``, ``terminate``,
``pause``, ``resume``) the filter options, so its RUN becomes optional; a new bulk action
is an entry in :data:`substantial._ops.bulk.ACTIONS` and one :func:`with_filters` call.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import click

from substantial import ops
from substantial._cli.common import When, backend_option, run_id_argument, with_backend
from substantial._cli.formatting import count
from substantial._conductor import Conductor
from substantial._core.status import RunStatus
from substantial.backends import Backend

__all__ = ["Bar", "fork", "retry", "with_filters"]

_FILTERS = ("statuses", "workflow", "queue", "started_before", "started_after", "dry_run")
#: What each action does to a run, as the summary says it.
_DONE = {"cancel": "cancel requested", "terminate": "terminate requested", "retry": "retried",
         "pause": "pause requested", "resume": "resume requested"}  # fmt: skip


def _filter_options() -> list[click.Option]:
    return [
        click.Option(
            ["--status", "statuses"],
            multiple=True,
            type=click.Choice([s.value for s in RunStatus]),
            help="Act on every run in this status (repeatable) instead of RUN.",
        ),
        click.Option(["--workflow"], help="Act on every run of this workflow name."),
        click.Option(["--queue"], help="Act on every run of this queue."),
        click.Option(["--started-before"], type=When(), help="ISO time, or an age like 2h."),
        click.Option(["--started-after"], type=When(), help="ISO time, or an age like 2h."),
        click.Option(["--dry-run"], is_flag=True, help="With filters: list, act on nothing."),
    ]


class Bar:
    """
    A tqdm progress bar on stderr when it is a terminal (tqdm decides; ``substantial
    [progress]`` installs it); without tqdm, nothing until the summary.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        if self.bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, desc=self.label, unit=" run", file=sys.stderr,
                            disable=None)  # fmt: skip
        self.bar.update(done - self.done)
        self.done = done

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run_bulk(backend_url: str | None, action: str, reason: str, options: dict[str, Any]) -> None:
    statuses = [RunStatus(s) for s in options["statuses"]]
    if action == "retry" and not statuses:
        statuses = [RunStatus.FAILED]
    where = ops.RunFilter(options["workflow"], statuses or None, options["started_before"],
                          options["started_after"], options["queue"])  # fmt: skip
    selecting, acting = Bar("runs selected"), Bar(f"{action} runs")

    async def body(backend: Backend) -> ops.BulkResult:
        return await ops.bulk(backend, Conductor(backend).handle, action, where, reason=reason,
                              dry_run=options["dry_run"], progress=acting,
                              selecting=selecting)  # fmt: skip

    try:
        result = with_backend(backend_url, body)
    finally:
        selecting.finish()
        acting.finish()
    _summarise(result)


def _summarise(result: ops.BulkResult) -> None:
    if result.dry_run:
        for run_id in result.selected:
            click.echo(run_id)
        click.echo(f"{count(len(result.selected), 'run')} selected; dry run: nothing done",
                   err=True)  # fmt: skip
        return
    for run_id, fork_id in result.done.items():
        if fork_id:
            click.echo(f"{run_id} -> {fork_id}")
    for run_id, why in sorted(result.skipped.items()):
        click.echo(f"skipped {run_id}: {why}", err=True)
    for run_id, error in sorted(result.errors.items()):
        click.echo(f"error {run_id}: {error}", err=True)
    click.echo(
        f"{count(len(result.selected), 'run')} selected: {len(result.done)} "
        f"{_DONE[result.action]}, {len(result.skipped)} skipped, {len(result.errors)} failed",
        err=True,
    )
    if result.errors:
        sys.exit(1)


def _optional_run(
    ctx: click.Context, param: click.Parameter, value: Any
) -> Any:  # RUN may be left out when filters say which runs
    return None if value is None else run_id_argument(ctx, param, value)


def _fork_id(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    return value and run_id_argument(ctx, param, value)


def with_filters(action: str, command: click.Command) -> click.Command:
    """
    Give a one-run command (``cancel RUN``, ``terminate RUN``) the filter options: with
    any of them it acts on every run they select, RUN left out.
    """
    for param in command.params:
        if isinstance(param, click.Argument) and param.name == "run_id":
            param.required = False
            param.callback = _optional_run
            param.metavar = "[RUN]"
    command.params.extend(_filter_options())
    one_run: Callable[..., Any] = command.callback  # type: ignore[assignment]

    def callback(**kwargs: Any) -> Any:
        options = {name: kwargs.pop(name) for name in _FILTERS}
        filtered = any(options[name] for name in _FILTERS if name != "dry_run")
        if kwargs.get("run_id") is not None and filtered:
            raise click.UsageError("give RUN or filters (--status, --workflow, ...), not both")
        if filtered and kwargs.get("fork_id"):
            raise click.UsageError("--run-id names the fork of one RUN; leave it out with filters")
        if filtered:
            return _run_bulk(kwargs["backend_url"], action, kwargs.get("reason", ""), options)
        if kwargs.get("run_id") is None:
            raise click.UsageError("give RUN, or filters (--status, --workflow, ...)")
        if options["dry_run"]:
            raise click.UsageError("--dry-run goes with filters")
        return one_run(**kwargs)

    command.callback = callback
    command.help = inspect.cleandoc(command.help or "") + (
        "\n\nWith --status, --workflow, --queue, --started-before or --started-after instead "
        "of RUN, "
        "acts on every run they select (from their summaries), with a progress bar on a "
        "terminal and a summary; --dry-run lists them."
    )
    return command


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--at", "at_step", type=click.IntRange(min=0), required=True,
              help="The step's position, as `show` prints it (#N).")  # fmt: skip
@click.option("--run-id", "fork_id", callback=_fork_id, help="The fork's id (default: random).")
def fork(backend_url: str | None, run_id: str, at_step: int, fork_id: str | None) -> None:
    """
    Start a new run whose log is RUN's up to, not including, step #N: that step and what
    follows run again with the code agents have now. RUN is not changed. Prints the
    fork's run id.
    """

    async def body(backend: Backend) -> str:
        return (await Conductor(backend).handle(run_id).fork(at_step, fork_id)).run_id

    click.echo(with_backend(backend_url, body))


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--run-id", "fork_id", callback=_fork_id, help="The fork's id (default: RUN-retry).")
def retry(backend_url: str | None, run_id: str | None, fork_id: str | None) -> None:
    """
    Fork a failed run at the step it failed at, to run that step and the rest again with
    the code agents have now (deploy the fix first). Prints the fork's run id; retrying
    a run again prints the same fork. With filters, --status defaults to failed.
    """

    async def body(backend: Backend) -> str:
        return (await Conductor(backend).handle(str(run_id)).retry(fork_id)).run_id

    click.echo(with_backend(backend_url, body))


retry = with_filters("retry", retry)
