"""The kernel layer's one knob and its on-disk cache.

``KLDIV_KERNELS`` is read once by one resolver, means the same for fill and search, falls back
to the NumPy references without Numba, and refuses unknown or unloadable choices clearly. The
compiled machine code goes to a user cache folder (never the installed package), is reused by
the next process, and a damaged or unwritable cache costs a compile and a warning, not a
failure. (The kernels' numbers are held against the references in test_fill_kernel.py and
test_entropy_kernel.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kldiv import _kernels
from kldiv.errors import KernelChoiceError

REPO = Path(__file__).resolve().parent.parent

#: Fill and search in a fresh process; prints what ran, the results and Numba's cache use.
_WORK = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
import numpy as np
import kldiv
from kldiv import _kernels
x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
h = kldiv.ActivationHistogram.from_values(x)
r = kldiv.search_threshold(h, "tensorrt")
k = _kernels.resolve()
hits = misses = 0
if k is not None:
    from kldiv._kernels import entropy, fill
    for d in (fill._fill_kernel, entropy._curve_abs_proportional):
        hits += sum(d.stats.cache_hits.values())
        misses += sum(d.stats.cache_misses.values())
print(json.dumps({"kernels": None if k is None else k.name,
                  "numba": sys.modules.get("numba") is not None,
                  "counts": h.counts.tolist(), "bin": r.bin_index, "scale": r.scale_hex,
                  "hits": hits, "misses": misses}))
"""
_BLOCK_NUMBA = "import sys; sys.modules['numba'] = None\n"


def _run(code: str, **env: str) -> tuple[dict, str]:
    full = {k: v for k, v in os.environ.items() if k not in (_kernels.KERNELS_ENV,
                                                              "NUMBA_CACHE_DIR")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=full, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def _package_artifacts() -> set[Path]:
    """Compiled files under the kldiv package (Numba cache entries, extension modules)."""
    return {p for pattern in ("*.nbi", "*.nbc", "*.so", "*.pyd")
            for p in (REPO / "kldiv").rglob(pattern)}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A kernel cache filled by one fresh process; its results (and its log, as "log")."""
    folder = tmp_path_factory.mktemp("kldiv-cache")
    before = _package_artifacts()
    first, log = _run(_WORK, KLDIV_CACHE_DIR=str(folder))
    assert _package_artifacts() == before, "compiled code was written into the package"
    return folder, {**first, "log": log}


def test_a_fresh_cache_is_filled_outside_the_package_and_reused(warm_cache):
    folder, first = warm_cache
    assert first["kernels"] == "numba" and first["misses"] > 0 and first["hits"] == 0
    assert first["log"].count("compiling kldiv's kernels on first use") == 1  # announced once
    assert str(folder / "numba") in first["log"]
    entries = sorted(p.name for p in (folder / "numba").rglob("*.nbi"))
    assert any(n.startswith("fill._fill_kernel-") for n in entries), entries
    second, log = _run(_WORK, KLDIV_CACHE_DIR=str(folder))
    assert second["misses"] == 0 and second["hits"] > 0  # loaded, not compiled
    assert "compiling" not in log
    assert {k: second[k] for k in ("counts", "bin", "scale")} == {
        k: first[k] for k in ("counts", "bin", "scale")}


def test_a_damaged_cache_is_rebuilt_with_a_warning(warm_cache, tmp_path):
    folder, first = warm_cache
    damaged = tmp_path / "damaged"
    import shutil

    shutil.copytree(folder, damaged)
    files = [p for p in (damaged / "numba").rglob("*") if p.is_file()]
    assert files
    for p in files:  # every index and data file truncated to garbage
        p.write_bytes(b"not a pickle")
    got, err = _run(_WORK, KLDIV_CACHE_DIR=str(damaged))
    assert "is damaged" in err and "compiling it again" in err
    assert (got["bin"], got["scale"], got["counts"]) == (first["bin"], first["scale"],
                                                          first["counts"])
    again, err = _run(_WORK, KLDIV_CACHE_DIR=str(damaged))
    assert again["misses"] == 0 and again["hits"] > 0 and "damaged" not in err  # rewritten


def test_an_unwritable_cache_folder_compiles_with_a_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    got, err = _run(_WORK, KLDIV_CACHE_DIR=str(blocker))
    assert got["kernels"] == "numba"
    assert "cannot write its kernel cache folder" in err and "KLDIV_CACHE_DIR" in err


def test_without_numba_auto_runs_the_references_for_fill_and_search(warm_cache):
    """'auto' has one meaning: without Numba both the fill and the search run NumPy, with
    the results the kernels give."""
    _, with_numba = warm_cache
    got, err = _run(_BLOCK_NUMBA + _WORK)
    assert got["kernels"] is None and got["numba"] is False
    assert (got["counts"], got["bin"], got["scale"]) == (
        with_numba["counts"], with_numba["bin"], with_numba["scale"])
    code = (_BLOCK_NUMBA + "from kldiv import _kernels\n"
            "print(__import__('json').dumps(list(_kernels.available())))")
    available, _ = _run(code)
    assert available == ["numpy"]


def test_asking_for_numba_without_it_is_a_clear_error():
    code = _BLOCK_NUMBA + (
        "from kldiv import _kernels\n"
        "try:\n    _kernels.resolve()\n"
        "except _kernels.KernelChoiceError as e:\n"
        "    print(__import__('json').dumps(str(e)))\n")
    message, _ = _run(code, KLDIV_KERNELS="numba")
    assert "KLDIV_KERNELS=numba" in message and "available here: numpy" in message
    assert "pip install numba" in message


def test_unknown_value_names_the_choices(monkeypatch):
    monkeypatch.setenv(_kernels.KERNELS_ENV, "fast")
    _kernels.reset()
    try:
        with pytest.raises(KernelChoiceError, match=r"KLDIV_KERNELS='fast' is not one of "
                                                    r"auto, numba, numpy.*available here"):
            _kernels.resolve()
    finally:
        _kernels.reset()
    assert issubclass(KernelChoiceError, ValueError)


def test_the_cli_reports_a_bad_choice_in_one_line(monkeypatch, capsys):
    from kldiv.cli import EXIT_BAD_INPUT, main

    monkeypatch.setenv(_kernels.KERNELS_ENV, "gpu")
    _kernels.reset()
    try:
        assert main(["demo"]) == EXIT_BAD_INPUT
    finally:
        _kernels.reset()
    err = capsys.readouterr().err.strip()
    assert err.startswith("kldiv demo: error: KLDIV_KERNELS='gpu' is not one of")
    assert "\n" not in err


def test_the_choice_is_made_once(monkeypatch):
    monkeypatch.setenv(_kernels.KERNELS_ENV, "numpy")
    _kernels.reset()
    try:
        assert _kernels.resolve() is None
        monkeypatch.setenv(_kernels.KERNELS_ENV, "numba")
        assert _kernels.resolve() is None  # read once per process
        _kernels.reset()
        chosen = _kernels.resolve()
        assert chosen is not None and chosen.name == "numba"
        assert _kernels.resolve() is chosen
    finally:
        _kernels.reset()
    for value in ("", "AUTO", " numba "):  # unset/empty means auto; case and spaces forgiven
        monkeypatch.setenv(_kernels.KERNELS_ENV, value)
        assert _kernels.mode() == (value.strip().lower() or "auto")


def test_cache_folder_precedence(monkeypatch, tmp_path):
    for name in (_kernels.CACHE_DIR_ENV, "NUMBA_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _kernels.cache_dir() == tmp_path / "home" / ".cache" / "kldiv" / "numba"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _kernels.cache_dir() == tmp_path / "xdg" / "kldiv" / "numba"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-own"))
    assert _kernels.cache_dir() == tmp_path / "numba-own"
    monkeypatch.setenv(_kernels.CACHE_DIR_ENV, str(tmp_path / "ours"))
    assert _kernels.cache_dir() == tmp_path / "ours" / "numba"


def test_the_kernels_take_and_return_plain_arrays():
    """The boundary: arrays and numbers in, arrays and numbers out (no kldiv types)."""
    k = _kernels.load("numba")
    counts, bad, over, max_over, max_abs = k.fill_counts(
        np.array([0.5, -3.0, np.nan], np.float32), 2.0, 4, False)
    assert isinstance(counts, np.ndarray) and counts.tolist() == [0, 1, 0, 0]
    assert (bad, over, max_over, max_abs) == (1, 1, 3.0, 3.0)
    assert k.absmax(np.array([1.0, -2.5])) == (2.5, 0)
    with pytest.raises(KernelChoiceError, match="no compiled kernels named 'numpy'"):
        _kernels.load("numpy")
