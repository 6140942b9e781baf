"""Atomic writes, the CLI shell, and the import contract of both packages."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import kldiv
from kldiv._io import atomic_write_bytes, atomic_write_text
from kldiv.cli import main
from kldiv.errors import OutputExistsError

REPO = Path(__file__).resolve().parent.parent


def test_atomic_write_refuses_overwrite_without_force(tmp_path: Path) -> None:
    p = tmp_path / "out.cache"
    atomic_write_text(p, "one\r\n")
    assert p.read_bytes() == b"one\r\n"  # no newline translation
    with pytest.raises(OutputExistsError, match="--force"):
        atomic_write_text(p, "two\n")
    assert p.read_bytes() == b"one\r\n"  # nothing lost
    atomic_write_text(p, "two\n", force=True)
    assert p.read_text() == "two\n"
    assert [x.name for x in tmp_path.iterdir()] == ["out.cache"]  # no temporaries left


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "x", b"data")
    assert list(tmp_path.iterdir()) == []


def test_cli_without_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: kldiv" in capsys.readouterr().out


def _public_modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    return [
        m.name
        for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
        if ".examples.train" not in m.name
    ]


@pytest.mark.parametrize("package", ["kldiv", "trt_backend"])
def test_every_module_imports(package: str) -> None:
    for name in _public_modules(package):
        importlib.import_module(name)


def _fresh_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip()


def test_import_kldiv_is_light() -> None:
    heavy = ["numba", "onnx", "onnxruntime", "tensorrt", "torch", "matplotlib", "llvmlite"]
    loaded = _fresh_python(
        "import sys, kldiv, trt_backend; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    assert loaded == "", f"import kldiv / trt_backend loaded heavy modules: {loaded}"


def test_atomic_write_uses_the_usual_file_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "t.cache", "x\n")
    finally:
        os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o644


def test_all_lists_exactly_the_lazy_names() -> None:
    assert kldiv.__all__ == sorted([*kldiv._LAZY, "__version__"])


def test_numba_and_tensorrt_are_imported_only_where_allowed() -> None:
    """Numba only under kldiv/_kernels/, `import tensorrt` only in trt_backend/_tensorrt.py."""
    import re

    pattern = re.compile(r"^\s*(import|from)\s+(numba|tensorrt)\b", re.M)
    offenders = []
    for path in [*(REPO / "kldiv").rglob("*.py"), *(REPO / "trt_backend").rglob("*.py")]:
        rel = path.relative_to(REPO).as_posix()
        for m in pattern.finditer(path.read_text()):
            allowed = (m.group(2) == "numba" and rel.startswith("kldiv/_kernels/")) or (
                m.group(2) == "tensorrt" and rel == "trt_backend/_tensorrt.py"
            )
            if not allowed:
                offenders.append(f"{rel}: {m.group(0).strip()}")
    assert offenders == []
