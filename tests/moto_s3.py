"""
moto's S3 server, started the way ``python -m moto.server`` starts it, with one change
for speed: moto finds the service of every request by listing its own package folder
(``moto.backends.list_of_moto_modules``: about 180 ``stat`` calls, twice a request),
which made each request cost ~5 ms. The list never changes while the server runs, so it
is computed once. The server, its HTTP handling and its S3 semantics are moto's own.

    python tests/moto_s3.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import moto.backends
from moto.server import main

_MODULES = tuple(moto.backends.list_of_moto_modules())
moto.backends.list_of_moto_modules = lambda: _MODULES

if __name__ == "__main__":
    main()
