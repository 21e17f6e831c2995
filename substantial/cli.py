"""
The ``substantial`` command. It parses arguments, imports, and calls the public API;
the logic lives in the library (operator commands: :mod:`substantial.ops`),
the commands in :mod:`substantial._cli`.

    substantial worker myapp.flows:conductor
    substantial worker --app myapp.flows --backend redis://127.0.0.1:6379/0
    substantial check --backend file://./runs
    substantial start|list|show|send|cancel|terminate|result|replay|quarantine|gc --backend URL ...
    substantial fork RUN --at N; substantial retry RUN
    substantial cancel|terminate|retry --status S --workflow W --started-before T [--dry-run]
    substantial ui --backend URL [--host 127.0.0.1] [--port 8233] [--read-only] [--token TOKEN]

Errors are one line on stderr (``error: ...``); a bad argument exits 2, a failed
operation 1.
"""

from __future__ import annotations

import click

from substantial._cli.agent import check, worker
from substantial._cli.control import start, terminate
from substantial._cli.flow import COMMANDS as FLOW_COMMANDS
from substantial._cli.keys import load_keys
from substantial._cli.maintenance import gc_command, quarantine_command, replay, versions
from substantial._cli.runs import cancel, list_command, result, send, show, stats
from substantial._cli.surgery import fork, retry, with_filters
from substantial._cli.ui import ui

__all__ = ["main"]


@click.group()
@click.version_option(package_name="substantial")
def main() -> None:
    """Brokerless durable execution: run agents and inspect runs."""
    load_keys()  # $SUBSTANTIAL_KEYS: without them, encrypted values show as <encrypted>


_COMMANDS = (worker, check, start, list_command, stats, show, send, cancel, terminate, result)
_BULK = (with_filters("cancel", cancel), with_filters("terminate", terminate), fork, retry)
_MORE = (replay, versions, quarantine_command, gc_command, ui)
for _command in (*_COMMANDS, *_BULK, *_MORE, *FLOW_COMMANDS):
    main.add_command(_command)
