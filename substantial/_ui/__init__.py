"""
The web view of runs behind ``substantial ui`` (private; needs the ``[ui]`` extra:
Starlette, uvicorn and Jinja2). It reads the same storage the agents use, through
:mod:`substantial.ops` and :class:`~substantial.Handle`; nothing here is a server of
record. One module per job:

* ``app``: the Starlette application, its routes and settings
* ``guard``: the access token, the CSRF check and the security headers
* ``snapshot``: every run's summary, read in the background and reused for a while
* ``runs_page``: the runs list: filters, counts, pages
* ``run_page``: one run: its outcome, links and raw events
* ``timeline``: a run's log drawn as lanes of bars and marks
* ``actions``: send, cancel, terminate, cancel-selected, each confirmed first
* ``text``: how statuses, times, durations and values read on a page
"""

from __future__ import annotations

from substantial._ui.app import UiSettings, create_app

__all__ = ["UiSettings", "create_app"]
