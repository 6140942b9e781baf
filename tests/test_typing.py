"""``mypy --strict`` over kldiv/ (the configuration is ``[tool.mypy]`` in pyproject.toml).

trt_backend/ is checked the same way against the TensorRT stubs by
``tests/trt_backend/test_mypy.py``. A new module of kldiv/ is covered without any change here:
the configuration names the package, not its files.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_configuration_is_strict_and_covers_kldiv() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True
    assert config["files"] == ["kldiv"]


def test_mypy_strict_kldiv() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
