"""
The benchmark's smallest configuration, on the memory backend only, so the harness never
rots. It checks that every row ran and produced numbers; it asserts nothing about speed.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main


def test_bench_tiny_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--backends", "memory", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {result["row"] for result in report["results"]}
    for row in ("floor", "step", "latency", "throughput 5", "resume 10", "idle 0 sleeping"):
        assert row in rows
    assert all(result["backend"] == "memory" for result in report["results"])
    assert report["environment"]["cores"]
