"""The ahead-of-time build of the kernels: chosen by default, loaded without Numba, rebuilt when
its inputs change, and a failed build falls back to the JIT once, without retrying.

(Its numbers are checked against the NumPy references in test_fill_kernel.py and
test_entropy_kernel.py, which run on both builds.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kldiv._kernels import aot, dispatch

REPO = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full, cwd=REPO)


@pytest.fixture(scope="module")
def built(aot_module) -> Path:
    """The module's path, once conftest's ``aot_module`` has built or loaded it."""
    return aot.module_path()


def test_calibration_in_a_fresh_process_never_imports_numba(built):
    """The point of the build: a whole calibration (fill, search, cache) without Numba/LLVM,
    giving the table the JIT gives."""
    code = (
        "import sys\n"
        "import kldiv\n"
        "from kldiv.examples import lenet_calibration_data, lenet_model_path\n"
        "table = kldiv.calibrate(lenet_model_path(), lenet_calibration_data(), "
        "preset='tensorrt')\n"
        "from kldiv._kernels import dispatch\n"
        "print(dispatch.kernels().name, 'numba' in sys.modules, 'llvmlite' in sys.modules)\n"
        "print(sorted((k, float(v)) for k, v in table.items()))\n"
    )
    aot_run = _python(code)
    assert aot_run.returncode == 0, aot_run.stderr
    first, table_aot = aot_run.stdout.strip().splitlines()[-2:]
    assert first == "aot False False"
    jit_run = _python(code, **{dispatch.KERNELS_ENV: "jit"})
    assert jit_run.returncode == 0, jit_run.stderr
    first, table_jit = jit_run.stdout.strip().splitlines()[-2:]
    assert first == "jit True True"
    assert table_aot == table_jit


def test_preload_loads_the_jit_kernels_when_asked_for_the_jit():
    code = (
        "from kldiv import _kernels\n"
        "_kernels.preload()\n"
        "from kldiv._kernels import entropy, fill\n"
        "for k in (fill._fill_kernel, fill._fill_kernel_serial):\n"
        "    assert any(str(s[0]) == 'array(float32, 1d, C)' for s in k.signatures), k\n"
        "assert entropy._curve_abs_proportional.signatures\n"
        "print('ok')\n"
    )
    out = _python(code, **{dispatch.KERNELS_ENV: "jit"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_large_fill_runs_in_chunks_on_threads(built, monkeypatch):
    """Above SERIAL_BELOW elements the serial kernel runs once per chunk (in threads); the
    partial results add up to the JIT's answer."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(3 * dispatch.SERIAL_BELOW + 11) * 0.5).astype(np.float32)
    x[[3, -2]] = np.nan
    x[[5, 9]] = 7.0  # over the range: clipped, counted, largest kept
    chunks: list[int] = []
    real = dispatch._in_chunks

    def spy(run, arrays, rest, n_chunks):
        parts = real(run, arrays, rest, n_chunks)
        chunks.append(len(parts))
        return parts

    monkeypatch.setattr(dispatch, "_aot_threads", lambda: 3)
    monkeypatch.setattr(dispatch, "_in_chunks", spy)
    got = dispatch.fill_counts(x, 3.0, 2048, clip=True, build=dispatch.aot_kernels(aot.load()))
    want = dispatch.fill_counts(x, 3.0, 2048, clip=True, build=dispatch.jit_kernels())
    assert chunks == [3]
    np.testing.assert_array_equal(got.counts, want.counts)
    assert (got.n_nonfinite, got.n_over, got.max_over, got.max_abs) == (
        want.n_nonfinite, want.n_over, want.max_over, want.max_abs) == (2, 2, 7.0, 7.0)


def test_key_names_sources_versions_and_cpu(monkeypatch):
    key = aot.kernel_key()
    assert len(key) == 16 and key == aot.kernel_key()
    monkeypatch.setattr(aot, "_cpu_identity", lambda: "another CPU")
    assert aot.kernel_key() != key
    monkeypatch.undo()
    monkeypatch.setattr(aot, "_version", lambda dist: "0.0" if dist == "numba" else "1.0")
    assert aot.kernel_key() != key


def test_kernel_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(aot.KERNEL_DIR_ENV, str(tmp_path / "k"))
    assert aot.kernel_dir() == tmp_path / "k"
    assert aot.module_path().parent == tmp_path / "k"


def test_failed_build_falls_back_once_and_is_not_retried(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(aot.KERNEL_DIR_ENV, str(tmp_path))
    attempts: list[Path] = []

    def broken(folder=None, *, force=False, key=None):
        attempts.append(folder)
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(aot, "build", broken)
    with caplog.at_level(logging.WARNING, logger="kldiv._kernels.aot"):
        assert aot.load() is None
    assert "no C compiler" in caplog.text and "JIT" in caplog.text
    failed = aot.failed_path(aot.module_path())
    assert "RuntimeError: no C compiler" in failed.read_text()
    assert aot.load() is None and len(attempts) == 1  # not retried
    # dispatch falls back to the JIT in "auto", and refuses in "aot"
    monkeypatch.setattr(dispatch, "_KERNELS", None)
    monkeypatch.setenv(dispatch.KERNELS_ENV, "auto")
    assert dispatch.kernels().name == "jit"
    monkeypatch.setattr(dispatch, "_KERNELS", None)
    monkeypatch.setenv(dispatch.KERNELS_ENV, "aot")
    with pytest.raises(RuntimeError, match="could not be built"):
        dispatch.kernels()
    monkeypatch.setattr(dispatch, "_KERNELS", None)


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(dispatch.KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="KLDIV_KERNELS='fast' is not one of auto, aot, jit"):
        dispatch.kernel_mode()


def test_build_leaves_only_the_module(built, tmp_path, monkeypatch):
    """A build into an empty folder leaves exactly the module (the work folder is removed),
    and the module imports and agrees with the JIT on a fill."""
    monkeypatch.setenv(aot.KERNEL_DIR_ENV, str(tmp_path))
    path = aot.build()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    module = aot.load(build_if_missing=False)
    assert module is not None
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    a = dispatch.fill_counts(x, 2.0, 64, clip=False, build=dispatch.aot_kernels(module))
    b = dispatch.fill_counts(x, 2.0, 64, clip=False, build=dispatch.jit_kernels())
    np.testing.assert_array_equal(a.counts, b.counts)


def _collect(build: dispatch.Kernels, monkeypatch) -> object:
    from kldiv.collect import HistogramCollector

    monkeypatch.setattr(dispatch, "_KERNELS", build)
    rng = np.random.default_rng(11)
    collector = HistogramCollector()
    for index in range(4):
        acts = {
            f"t{k}": (rng.standard_normal(size) * (k + 1) * (1 + index)).astype(np.float32)
            for k, size in enumerate((10, 5000, dispatch.SERIAL_BELOW + 3, 300_000, 70_000))
        }
        acts["late"] = np.ones(3, np.float32) * index  # appears empty-valued first, grows
        collector.observe(acts, batch=index)
    return collector


def test_collector_threads_give_the_sequential_histograms(built, monkeypatch):
    """With the ahead-of-time build a batch's tensors are filled on several threads; the
    histograms, ranges, maxima and the tensor order are those of the one-thread JIT run."""
    monkeypatch.setattr(dispatch, "_aot_threads", lambda: 3)
    threaded = _collect(dispatch.aot_kernels(aot.load()), monkeypatch)
    serial = _collect(dispatch.jit_kernels(), monkeypatch)
    monkeypatch.setattr(dispatch, "_KERNELS", None)
    assert threaded.names == serial.names == ["t0", "t1", "t2", "t3", "t4", "late"]
    for name in serial.names:
        a, b = threaded[name], serial[name]
        assert a.amax == b.amax and threaded.absmax(name) == serial.absmax(name), name
        np.testing.assert_array_equal(a.counts, b.counts, err_msg=name)


def test_run_concurrently_runs_all_and_raises_the_earliest_failure(built, monkeypatch):
    monkeypatch.setattr(dispatch, "_aot_threads", lambda: 3)
    build = dispatch.aot_kernels(aot.load())
    ran: list[int] = []

    def task(i: int) -> None:
        ran.append(i)
        if i in (2, 5):
            raise ValueError(f"task {i}")

    with pytest.raises(ValueError, match="task 2"):
        dispatch.run_concurrently([lambda i=i: task(i) for i in range(8)], build=build)
    assert sorted(ran) == list(range(8))


def test_a_damaged_module_file_falls_back_to_the_jit(monkeypatch, tmp_path, caplog):
    """A truncated or foreign file where the module should be: a warning naming the file and
    the JIT, not a crash (and nothing is overwritten)."""
    monkeypatch.setenv(aot.KERNEL_DIR_ENV, str(tmp_path))
    path = aot.module_path()
    path.write_bytes(b"\x7fELF not really")
    with caplog.at_level(logging.WARNING, logger="kldiv._kernels.aot"):
        assert aot.load() is None
    assert str(path) in caplog.text and "Delete the file to rebuild it" in caplog.text
    assert path.read_bytes() == b"\x7fELF not really"


def test_unreadable_sources_fall_back_to_the_jit(monkeypatch, caplog):
    def unreadable() -> str:
        raise PermissionError("sources not readable")

    monkeypatch.setattr(aot, "kernel_key", unreadable)
    with caplog.at_level(logging.WARNING, logger="kldiv._kernels.aot"):
        assert aot.load() is None
    assert "sources not readable" in caplog.text and "JIT" in caplog.text
