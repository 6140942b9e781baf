"""``mypy --strict`` over trt_backend/ against tensorrt-stubs (the TensorRT 10.13 API).

tensorrt-stubs 10.13.0.35.1 installs ``tensorrt/__init__.pyi`` and
``tensorrt_bindings/tensorrt.pyi`` without a ``py.typed`` marker, and a few plugin signatures in
it are not valid Python (a parameter named ``in``; a parameter without default after defaults).
This test copies the installed stubs into a temporary folder, repairs exactly those syntax
errors (checked with ``ast.parse``), puts the copy on ``MYPYPATH`` and runs mypy with
``mypy-trt.ini``. It skips, saying why, when mypy or the stubs are missing.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "mypy-trt.ini"


def _stub_dirs() -> list[Path] | None:
    found = []
    for name in ("tensorrt", "tensorrt_bindings"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / "__init__.pyi").is_file():
            return None
        found.append(folder)
    return found


def repair_stub_syntax(text: str) -> str:
    """Make the stubs parse: rename a parameter called ``in``; give a trailing
    non-default parameter a default where it follows defaults.
    """
    text = re.sub(r"^(\s*def \w+\(.*?[(,]\s*)in(\s*:)", r"\1in_\2", text, flags=re.MULTILINE)
    return text.replace(
        "power: Weights = None, channel_axis: int)",
        "power: Weights = None, channel_axis: int = ...)",
    )


def test_repair_keeps_valid_stub_text_unchanged() -> None:
    text = "def f(self, x: int, inputs: list[int] = ...) -> None: ...\n"
    assert repair_stub_syntax(text) == text
    assert repair_stub_syntax("def g(self, in: int) -> None: ...") == (
        "def g(self, in_: int) -> None: ..."
    )


def test_mypy_strict_trt_backend(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    dirs = _stub_dirs()
    if dirs is None:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    stubs = tmp_path / "stubs"
    for folder in dirs:
        shutil.copytree(folder, stubs / folder.name, ignore=shutil.ignore_patterns("*.py[co]"))
    for pyi in stubs.rglob("*.pyi"):
        fixed = repair_stub_syntax(pyi.read_text(encoding="utf-8"))
        ast.parse(fixed, filename=str(pyi))  # the repair must leave valid Python
        pyi.write_text(fixed, encoding="utf-8")
    env = {**os.environ, "MYPYPATH": str(stubs)}
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--no-incremental"],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout
