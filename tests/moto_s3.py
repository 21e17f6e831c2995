"""
moto's S3 server, started the way ``python -m moto.server`` starts it, with two changes:

* Speed: moto finds the service of every request by listing its own package folder
  (``moto.backends.list_of_moto_modules``: about 180 ``stat`` calls, twice a request),
  which made each request cost ~5 ms. The list never changes while the server runs, so
  it is computed once.
* Atomic writes, as S3 has them: moto's threaded server checks a conditional write's
  ``If-Match``/``If-None-Match`` and then writes, with no lock between, so two writers
  racing on one key could both win (the conformance test saw two winners in one of five
  full suite runs on a loaded 2-core machine). Writes to one key (PUT, POST, DELETE on
  one path) are handled one at a time; reads, and writes to other keys, go on in
  parallel (one lock for every request made a loaded suite's s3 requests queue past
  their 20 s read timeout).

The server, its HTTP handling and its S3 semantics are otherwise moto's own.

    python tests/moto_s3.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import threading
from typing import Any

import moto.backends
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main

_MODULES = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _MODULES

_guard = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_handle = DomainDispatcherApplication.__call__


def _lock_for(path: str) -> threading.Lock:
    with _guard:
        return _key_locks.setdefault(path, threading.Lock())


def _atomic(self: DomainDispatcherApplication, environ: Any, start_response: Any) -> Any:
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
        return _handle(self, environ, start_response)
    with _lock_for(environ.get("PATH_INFO", "")):
        return _handle(self, environ, start_response)


DomainDispatcherApplication.__call__ = _atomic  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
