"""Start processes that race each other from the same instant: each prints ``ready``, waits
for ``go`` on stdin, does its work and prints one JSON line of what it won."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def race_processes(script: str, argvs: dict[str, list[str]]) -> dict[str, Any]:
    """
    Run ``python -c script *argv`` once per tag, released together; the JSON each one
    printed, by tag. Every racer must exit 0.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for argv in argvs.values()
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline() == "ready\n"
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate()[0] for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    assert [racer.returncode for racer in racers] == [0] * len(racers)
    return {tag: json.loads(out) for tag, out in zip(argvs, outputs, strict=True)}
