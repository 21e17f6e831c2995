"""
Payload compression measured for the payload codecs (docs/decisions.md): zlib and zstd on
about 7 MB of JSON records, ratio and MB/s each way.

    .venv/bin/python bench/compression.py
"""

import json
import time
import zlib

import zstandard

records = [
    {"id": i, "customer": f"customer-{i % 977}", "items": [i % 7, i % 11, i % 13],
     "note": "order placed through the web shop", "total": round(i * 1.37, 2)}
    for i in range(60_000)
]  # fmt: skip
data = json.dumps(records).encode()


def measure(name: str, pack: object, unpack: object) -> None:
    began = time.perf_counter()
    packed = pack(data)  # type: ignore[operator]
    packing = time.perf_counter() - began
    began = time.perf_counter()
    assert unpack(packed) == data  # type: ignore[operator]
    unpacking = time.perf_counter() - began
    mb = len(data) / 1e6
    print(f"{name:<8} {len(data) / len(packed):5.1f}x smaller, "
          f"{mb / packing:6.0f} MB/s packing, {mb / unpacking:6.0f} MB/s unpacking")  # fmt: skip


print(f"{len(data) / 1e6:.1f} MB of JSON")
measure("zlib-1", lambda b: zlib.compress(b, 1), zlib.decompress)
measure("zlib-6", lambda b: zlib.compress(b, 6), zlib.decompress)
measure("zstd-3", zstandard.ZstdCompressor(level=3).compress,
        zstandard.ZstdDecompressor().decompress)  # fmt: skip
