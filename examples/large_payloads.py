"""
A step that returns 5 MiB: stored once as a content-addressed blob, read back as it was.

    python examples/large_payloads.py [FOLDER]

A value whose stored bytes are over ``Conductor(blob_threshold=...)`` (256 KiB by
default) goes to ``blobs/{sha256}`` on the same backend and the log keeps the reference,
so a log segment stays small. ``gc`` deletes the blob with the last run that refers to
it. A value over ``max_payload`` (64 MiB by default) fails at once with ``CodecError``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

from substantial import Conductor, Context, workflow
from substantial.backends import FSBackend
from substantial.ops import gc


@workflow(name="examples.report")
async def report(c: Context, rows: int) -> int:
    text = await c.save(lambda: "row\n" * rows)  # 6.5 MB as JSON
    lines = await c.save(lambda: text.count("\n"))
    return lines


async def main(folder: str) -> None:
    backend = FSBackend(folder)
    async with Conductor(backend) as conductor:
        conductor.register(report)
        handle = await conductor.start(report, 1_310_720)
        assert await handle.result(timeout=60) == 1_310_720
    blobs = sorted((Path(folder) / "blobs").iterdir())
    print(f"{len(blobs)} blob of {blobs[0].stat().st_size:,} bytes: {blobs[0].name[:16]}...")
    segments = await backend.get_many(await backend.list_all(f"runs/{handle.run_id}/log/"))
    print(f"log segments: {[len(entry[0]) for entry in segments if entry]} bytes")
    outcome = await gc(backend, timedelta(0))
    print(f"gc deleted {len(outcome.runs)} run and {len(outcome.blobs)} blob")
    assert outcome.blobs
    assert not list((Path(folder) / "blobs").iterdir())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else scratch))
