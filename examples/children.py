"""
Child workflows: fan out to one child run per item and gather their results.

    python examples/children.py [FOLDER]

``c.child(wf, ...)`` starts a child run and returns its result (or raises its error as
``RunFailed``); ``c.start_child(...)`` returns a handle to await later. Children are
cancelled with their parent unless started with ``detached=True``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from substantial import Conductor, Context, RunFailed, workflow
from substantial.backends import FSBackend


@workflow()
async def word_length(c: Context, word: str) -> int:
    if not word.isalpha():
        raise ValueError(f"not a word: {word!r}")
    return await c.save(lambda: len(word))


@workflow()
async def lengths(c: Context, words: list[str]) -> dict[str, object]:
    checker = await c.start_child(word_length, "substantial")  # awaited at the end
    sizes = await asyncio.gather(*(c.child(word_length, word) for word in words))
    try:
        await c.child(word_length, "n0t-a-w0rd")
    except RunFailed as exc:
        rejected = f"{exc.type_name}: {exc.error_message}"
    return {"sizes": dict(zip(words, sizes, strict=True)), "rejected": rejected,
            "checker": await checker.result()}  # fmt: skip


async def main(folder: str) -> dict[str, object]:
    conductor = Conductor(FSBackend(folder))
    conductor.register(word_length, lengths)
    async with conductor:
        words = ["a", "brokerless", "durable", "execution", "library", "for", "python"]
        handle = await conductor.start(lengths, words, run_id="lengths")
        result = await handle.result(timeout=60)
        children = [e for e in await handle.history() if e.kind == "child_started"]
    print(f"{len(children)} child runs: {result}")
    return result


if __name__ == "__main__":
    # A folder given is kept; the temporary one is removed once the example ends.
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        folder = sys.argv[1] if len(sys.argv) > 1 else scratch
        result = asyncio.run(main(folder))
        assert result["sizes"] == {
            "a": 1, "brokerless": 10, "durable": 7, "execution": 9, "library": 7, "for": 3,
            "python": 6,
        }  # fmt: skip
        assert result["checker"] == 11
        assert result["rejected"] == "ValueError: not a word: 'n0t-a-w0rd'"
