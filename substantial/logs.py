"""
Log lines that name their run: for processes that embed an agent and keep their own
logging setup (the ``substantial worker`` command installs this itself)::

    handler.addFilter(substantial.logs.RunContextFilter())   # or logs.install(handler)
    # then use %(run_id)s and %(workflow)s in the handler's format, e.g. logs.RUN_FORMAT
"""

from __future__ import annotations

from substantial._core.logs import RUN_FORMAT, RunContextFilter, install

__all__ = ["RUN_FORMAT", "RunContextFilter", "install"]

RunContextFilter.__module__ = __name__
