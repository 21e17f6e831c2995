"""
Encrypting every stored value with AES-256-GCM (``pip install 'substantial[crypto]'``),
compressed first, and rotating the key without rewriting old runs.

    python examples/encryption.py [FOLDER]

``Conductor(codecs=[...])`` applies payload codecs after the JSON codec, in order. Each
stored value names the key that encrypted it, so a conductor given the new key first
and the old one after writes with the new key and still reads the old runs. The CLI
reads keys from ``SUBSTANTIAL_KEYS=id1:base64key,id2:base64key``; without them it shows
encrypted values as ``<encrypted>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from substantial import AESGCMCodec, Conductor, Context, ZlibCodec, workflow
from substantial.backends import FSBackend


@workflow(name="examples.onboard")
async def onboard(c: Context, email: str) -> str:
    account = await c.save(lambda: f"account for {email}")
    return account


def everything_stored(folder: str) -> bytes:
    return b"".join(p.read_bytes() for p in Path(folder).rglob("*") if p.is_file())


async def main(folder: str) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    backend = FSBackend(folder)
    async with Conductor(backend, codecs=[ZlibCodec(), AESGCMCodec({"2025": old_key})]) as c:
        c.register(onboard)
        first = await c.start(onboard, "ada@example.com", run_id="first")
        assert await first.result(timeout=30) == "account for ada@example.com"

    rotated = AESGCMCodec({"2026": new_key, "2025": old_key})  # the first key encrypts
    async with Conductor(backend, codecs=[ZlibCodec(), rotated]) as c:
        c.register(onboard)
        second = await c.start(onboard, "grace@example.com", run_id="second")
        assert await second.result(timeout=30) == "account for grace@example.com"
        assert await c.handle("first").result() == "account for ada@example.com"

    stored = everything_stored(folder)
    assert b"example.com" not in stored  # no plaintext value on disk
    print(f"{len(stored):,} bytes on disk, no e-mail address among them")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="substantial-") as scratch:
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else scratch))
