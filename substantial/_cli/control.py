"""The commands that start and end runs from the terminal: ``start`` and ``terminate``."""

from __future__ import annotations

import json
from typing import Any

import click

from substantial._cli.common import backend_option, run_id_argument, with_backend
from substantial._cli.formatting import json_text
from substantial._cli.runs import plain_result
from substantial._client.handle import Handle
from substantial._conductor import Conductor
from substantial.backends import Backend

__all__ = ["start", "terminate"]


def _arguments(text: str | None) -> tuple[list[Any], dict[str, Any]]:
    """A JSON array of positional arguments, or an object of keyword arguments."""
    if text is None:
        return [], {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="ARGS_JSON") from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise click.BadParameter(
        "give a JSON array of positional arguments (e.g. '[21]') or an object of keyword "
        "arguments (e.g. '{\"n\": 21}')",
        param_hint="ARGS_JSON",
    )


@click.command()
@backend_option
@click.argument("workflow")
@click.argument("args_json", metavar="[ARGS_JSON]", required=False)
@click.option(
    "--run-id",
    callback=lambda ctx, param, value: value and run_id_argument(ctx, param, value),
    help="The run's id (default: a random one); an idempotency key.",
)
@click.option("--wait", is_flag=True, help="Wait for the result and print it, as `result` does.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: seconds at most.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def start(
    backend_url: str | None,
    workflow: str,
    args_json: str | None,
    run_id: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """
    Start a run of WORKFLOW by name; no workflow code is imported here.

    ARGS_JSON is a JSON array of positional arguments ('[21]') or an object of keyword
    arguments ('{"n": 21}'). The agent that runs it checks them: arguments that do not
    fit fail the run with InvalidArguments. Starting an existing --run-id starts nothing.
    With --wait, exits as `result` does: 0 with the result, 1 if the run failed.
    """
    args, kwargs = _arguments(args_json)

    async def body(backend: Backend) -> tuple[str, bool, Any]:
        handle: Handle[Any] = await Conductor(backend).start(
            workflow, *args, run_id=run_id, **kwargs
        )
        if not wait:
            return handle.run_id, False, None
        return handle.run_id, True, await plain_result(backend, handle.run_id, timeout)

    started, finished, value = with_backend(backend_url, body)
    if as_json:
        fields = {"run_id": started, "workflow": workflow}
        click.echo(json_text({**fields, "result": value} if finished else fields))
    elif finished:
        click.echo(json_text(value))
    else:
        click.echo(started)


@click.command()
@backend_option
@click.argument("run_id", metavar="RUN", callback=run_id_argument)
@click.option("--reason", default="", help="Kept in the run's log and shown by `show`.")
def terminate(backend_url: str | None, run_id: str, reason: str) -> None:
    """
    End a run at once as terminated, without running its code (no finally blocks, no
    compensations): the way out for a run nobody can replay. The next agent that polls
    carries it out, whether or not it knows the workflow.
    """
    with_backend(backend_url, lambda backend: Conductor(backend).handle(run_id).terminate(reason))
    click.echo(f"terminate requested for {run_id}")
