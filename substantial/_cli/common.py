"""What every command shares: naming a backend, importing user code, argument types, and
turning a failed operation into one line on stderr with exit status 1."""

from __future__ import annotations

import importlib
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click

from substantial._core import logs
from substantial._engine.workflow import Workflow
from substantial._store.runs import check_run_id
from substantial.backends import Backend, from_url
from substantial.errors import BackendError, BackendRefused, RunNotFound, SubstantialError

__all__ = [
    "Duration",
    "When",
    "backend_option",
    "configure_logging",
    "fail",
    "import_object",
    "open_backend",
    "run_id_argument",
    "with_backend",
    "workflows_in",
]

T = TypeVar("T")

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

backend_option = click.option(
    "--backend",
    "backend_url",
    envvar="SUBSTANTIAL_BACKEND",
    help="Storage URL: file://PATH, redis://HOST:PORT/DB, s3://BUCKET/PREFIX?endpoint_url=..., "
    "memory://. Default: $SUBSTANTIAL_BACKEND.",
)


def import_object(path: str) -> Any:
    """Import ``module`` or ``module:attribute``; the module may be a path to a ``.py`` file."""
    module_name, _, attribute = path.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        # A file: import it by its name from its folder, as `python -m` would name it,
        # so that its workflows get the names a worker started with the module gets.
        file = Path(module_name).resolve()
        if not file.is_file():
            raise click.UsageError(f"cannot import {module_name!r}: no such file")
        sys.path.insert(0, str(file.parent))
        module_name = file.stem
    elif "." not in sys.path and "" not in sys.path:
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


def workflows_in(found: Any) -> list[Workflow[Any]]:
    """The workflows of a module (every ``@workflow`` in it), or of a Conductor."""
    workflows = getattr(found, "workflows", None)  # module:conductor, as `worker` takes
    if isinstance(workflows, list):
        return [value for value in workflows if isinstance(value, Workflow)]
    return [value for value in vars(found).values() if isinstance(value, Workflow)]


def open_backend(url: str) -> Backend:
    try:
        return from_url(url)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper()),
    )
    for handler in logging.getLogger().handlers:
        logs.install(handler)


class Duration(click.ParamType[timedelta]):
    """``90s``, ``30m``, ``2h``, ``30d``, ``1w``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", str(value).strip())
        if match is None:
            self.fail(f"{value!r} is not a duration like 90s, 30m, 2h, 30d or 1w", param, ctx)
        return timedelta(**{_UNITS[match[2]]: float(match[1])})


class When(click.ParamType[datetime]):
    """An ISO 8601 time (UTC unless it says otherwise), or an age like ``2h`` (ago)."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if re.fullmatch(r"\d+(?:\.\d+)?[smhdw]", text):
            return datetime.now(UTC) - Duration().convert(text, param, ctx)
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{value!r} is neither an ISO time nor an age like 2h or 30d", param, ctx)
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def run_id_argument(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        for run_id in value if isinstance(value, tuple) else (value,):
            check_run_id(run_id)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def with_backend(backend_url: str | None, body: Callable[[Backend], Awaitable[T]]) -> T:
    """Open the backend, run ``body`` on it, close it; errors become one line and exit 1."""
    if not backend_url:
        raise click.UsageError("give --backend URL or set SUBSTANTIAL_BACKEND")
    backend = open_backend(backend_url)

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
            fail(f"run {error.run_id!r} not found")
        if isinstance(error, BackendRefused):
            fail(str(error))
        if isinstance(error, BackendError | OSError):
            fail(f"backend unreachable: {error}")
        if isinstance(error, SubstantialError):
            fail(str(error))
        raise
