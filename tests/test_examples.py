"""Every example in examples/ runs, so none of them rots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# Examples that need arguments or servers have their own tests; list them here.
NEEDS_MORE = {"deployment.py"}


@pytest.mark.parametrize(
    "path", [p for p in EXAMPLES if p.name not in NEEDS_MORE], ids=lambda p: p.name
)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_quickstart_prints_the_result(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "result 84" in result.stdout
    assert (tmp_path / "runs").is_dir()
