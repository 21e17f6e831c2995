"""The machine, the versions, and the table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.measure import Result


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def _fs_type(path: Path) -> str:
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.stdout.strip() or "?"


def environment(workdir: Path, versions: dict[str, str]) -> dict[str, Any]:
    import anyio
    import google.protobuf

    import substantial

    dirty = _git("status", "--porcelain", "--", "substantial")
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "substantial": f"{substantial.__version__} (git {_git('rev-parse', '--short', 'HEAD')}"
        + (", substantial/ modified)" if dirty not in ("", "?") else ")"),
        "anyio": anyio.__version__ if hasattr(anyio, "__version__") else _dist("anyio"),
        "protobuf": google.protobuf.__version__,
        "files dir": f"{workdir} ({_fs_type(workdir)})",
        "load average before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        **versions,
    }


def _dist(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


ROW_HELP = {
    "floor": "create-if-absent of 200 bytes, one at a time",
    "step": "one run of sequential trivial steps: steps/s, ratio to floor, requests per step",
    "latency": "start -> result of a 10-step run, one at a time",
    "throughput": "runs of 10 steps started at once, one in-process agent",
    "resume": "fresh wake-up of a run with N events: send -> result (read + replay)",
    "scale-out": "runs/s with N agent processes on one backend",
    "idle": "backend requests/s of one idle agent; one schedule poll's time",
    "CPU/step": "process CPU per step of the step row (time.process_time() / steps)",
    "requests/run": "backend requests per 10-step run of the latency row: step commits "
    "(log segments at positions > 0) + the fixed part (all the rest: start, claim, reads, "
    "summary, schedule, lease, release, polls)",
    "fsync/run": "os.fsync + os.fdatasync calls per 10-step run of the latency row (files)",
    "poll": "one idle schedule poll (RunStore.due, the agent's first page) with the schedule "
    "entries of N sleeping runs",
    "s3+30ms": "S3 (moto) behind a loopback proxy adding 30 ms to every request: floor, "
    "10-step start -> result, 50 runs of 10 steps at once",
}


def table(results: list[Result], kinds: list[str]) -> str:
    rows: dict[str, dict[str, Result]] = {}
    order: list[str] = []
    last: dict[str, str] = {}  # per backend, its previous row: a new row goes after it
    for result in results:
        if result.row not in rows:
            at = len(order)
            if (after := last.get(result.backend)) in order:  # and after its family
                at = order.index(after) + 1
                while at < len(order) and order[at].split()[0] == after.split()[0]:
                    at += 1
            order.insert(at, result.row)
        rows.setdefault(result.row, {})[result.backend] = result
        last[result.backend] = result.row
    rows = {row: rows[row] for row in order}
    lines = [
        "| row | " + " | ".join(kinds) + " |",
        "| --- | " + " | ".join("---" for _ in kinds) + " |",
    ]
    for row, cells in rows.items():
        texts = [cells[kind].cell if kind in cells else "—" for kind in kinds]
        lines.append(f"| {row} | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def notes(results: list[Result]) -> list[str]:
    seen: dict[str, list[str]] = {}
    for result in results:
        if result.note:
            seen.setdefault(f"{result.row} [{result.backend}]", []).append(result.note)
    return [f"- {where}: {'; '.join(texts)}" for where, texts in seen.items()]


def goals(results: list[Result]) -> dict[str, str]:
    """The goal of each row present that shows a figure of issue 13."""
    from bench.fast import GOALS, goal_of

    present = {goal_of(result.row) for result in results}
    return {row: text for row, text in GOALS.items() if text in present}


def render(
    results: list[Result],
    kinds: list[str],
    env: dict[str, Any],
    skipped: dict[str, str],
    command: str,
    seconds: float,
) -> str:
    out = [f"`{command}` — {seconds:.0f} s", ""]
    out += [f"- {key}: {value}" for key, value in env.items()]
    out += [f"- skipped {kind}: {reason}" for kind, reason in skipped.items()]
    out += ["", table(results, kinds), "", "Rows:"]
    out += [f"- {name}: {text}" for name, text in ROW_HELP.items()]
    out += ["", "Goals (issue 13; the ratios are to the floor measured in the same run):"]
    out += [f"- {row}: {text}" for row, text in goals(results).items()]
    out += ["", "Notes:", *notes(results)]
    return "\n".join(out) + "\n"
