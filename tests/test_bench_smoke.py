"""
The benchmark's smallest configuration, so the harness never rots: every row on the
memory backend, and the rows only some backends have (fsync counts on files, S3 behind
the latency proxy). It checks that each row ran and produced numbers; it asserts
nothing about speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main


def _bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    assert main(["--tiny", *args, "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def _rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["row"]: result for result in report["results"]}


def test_bench_tiny_memory(tmp_path: Path) -> None:
    report = _bench(tmp_path, "--backends", "memory")
    rows = _rows(report)
    for row in (
        "floor",
        "step",
        "CPU/step",
        "latency",
        "requests/run",
        "throughput 5",
        "resume 10",
        "idle 0 sleeping",
        "poll 10 sleeping",
        "poll 100 sleeping",
    ):
        assert row in rows
        assert "error" not in rows[row]["values"], rows[row]
    assert all(result["backend"] == "memory" for result in report["results"])
    assert report["environment"]["cores"]
    split = rows["requests/run"]["values"]
    assert split["step_part"] >= 10  # ten steps, each its own commit
    assert split["step_part"] + split["fixed_part"] == pytest.approx(split["requests_per_run"])
    assert rows["CPU/step"]["values"]["cpu_per_step_s"] > 0
    assert rows["throughput 5"]["values"]["ratio_to_floor"] > 0


def test_bench_tiny_files_syncs(tmp_path: Path) -> None:
    rows = _rows(_bench(tmp_path, "--backends", "files", "--only", "floor,latency,poll"))
    assert rows["fsync/run"]["values"]["fsyncs_per_run"] >= 10  # at least one per step
    assert rows["poll 100 sleeping"]["values"]["requests"] >= 1


def test_bench_tiny_s3_proxy(tmp_path: Path) -> None:
    report = _bench(tmp_path, "--backends", "s3", "--only", "proxy")
    if "s3" in report["skipped"]:
        pytest.skip(report["skipped"]["s3"])
    rows = _rows(report)
    for row in ("s3+30ms floor", "s3+30ms latency", "s3+30ms throughput 50"):
        assert "error" not in rows[row]["values"], rows[row]
    latency = rows["s3+30ms latency"]["values"]
    assert latency["p50_s"] >= 0.030 * latency["sequential_round_trips"] > 0
