"""
Run context for log lines: every line logged while an agent works on a run carries the
run's id and workflow name, whether it comes from the agent or from ``c.log``.

The agent sets :data:`run_id_var` and :data:`workflow_var` around each wake-up of a
run; :class:`RunContextFilter` copies them onto log records as ``record.run_id`` and
``record.workflow`` (``-`` outside a run), so a format can show them::

    handler.addFilter(RunContextFilter())
    handler.setFormatter(logging.Formatter(RUN_FORMAT))
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["RUN_FORMAT", "RunContextFilter", "install", "run_id_var", "workflow_var"]

#: The id of the run being worked on in this task, or ``None`` outside a run.
run_id_var: ContextVar[str | None] = ContextVar("substantial_run_id", default=None)
#: The workflow name of that run, or ``None`` when not known (yet).
workflow_var: ContextVar[str | None] = ContextVar("substantial_workflow", default=None)

#: A log format that shows the run context; the ``substantial worker`` command uses it.
RUN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(workflow)s %(run_id)s] %(message)s"

_NONE = "-"


class RunContextFilter(logging.Filter):
    """
    Sets ``record.run_id`` and ``record.workflow`` from the context variables, unless the
    record already has them (``c.log`` passes them as ``extra``). Lets every record pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; always returns ``True``."""
        if getattr(record, "run_id", None) is None:
            record.run_id = run_id_var.get() or _NONE
        if getattr(record, "workflow", None) is None:
            record.workflow = workflow_var.get() or _NONE
        return True


def install(handler: logging.Handler, fmt: str = RUN_FORMAT) -> None:
    """
    Give ``handler`` the run-context filter and a format that shows it.

    :param handler: a handler, e.g. one that :func:`logging.basicConfig` made
    :param fmt: a :class:`logging.Formatter` format that may use ``%(run_id)s`` and
        ``%(workflow)s``
    """
    handler.addFilter(RunContextFilter())
    handler.setFormatter(logging.Formatter(fmt))
