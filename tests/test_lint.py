"""The code base passes the project's ruff rule set (pyproject.toml [tool.ruff.lint])."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    if (
        shutil.which("ruff") is None
        and subprocess.run(
            [sys.executable, "-m", "ruff", "--version"], capture_output=True
        ).returncode
    ):
        pytest.skip("ruff is not installed (it comes with the dev extra)")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "kldiv",
            "trt_backend",
            "tests",
            "benchmarks",
            "scripts",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
