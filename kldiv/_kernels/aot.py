"""kldiv's Numba kernels compiled ahead of time: one extension module, loaded without Numba.

Why
    Running the kernels through Numba's JIT means importing Numba and LLVM and initialising
    Numba's typing and lowering registries in every process, even when the machine code comes
    from Numba's on-disk cache: about 130 MB of memory and 0.5-1 s before the first histogram
    (measured, ``docs/calibration.md``). The same kernels compiled by Numba's ahead-of-time
    compiler (:mod:`numba.pycc`) into a CPython extension load in under a millisecond and need
    only NumPy at run time.

What is compiled
    The exact functions the JIT runs, from their own source (``AOT_EXPORTS`` of
    :mod:`kldiv._kernels.fill` and :mod:`kldiv._kernels.entropy`), with the same options as
    the JIT (:data:`kldiv._kernels._jit.JIT_OPTIONS`: the GIL released, NumPy's error model,
    no fast-math, no bounds checks) and for this machine's CPU. Parallel loops become serial
    ones; :mod:`kldiv._kernels.dispatch` runs chunks in threads instead (the GIL is released).
    The tests run every kernel test against both builds.

When and where
    Once per environment: the first process that needs the kernels builds the module (about
    half a minute on 2 cores; it needs Numba and a C compiler), every later one loads it. The
    file is named by a key over everything that changes the machine code (the kernels' source,
    the Numba, NumPy and Python versions, the CPU's model and feature flags), so an upgrade or
    another machine sharing the folder builds its own. The folder is ``$KLDIV_KERNEL_DIR``, else
    ``__pycache__`` beside this file when writable (as Numba's cache), else
    ``$XDG_CACHE_HOME/kldiv`` (``~/.cache/kldiv``). A build is written under a temporary name
    and renamed into place, so concurrent processes never load half a file. A failed build
    leaves ``<name>.failed`` with the reason and is not retried for that key (delete the file,
    or run ``python -m kldiv._kernels.aot --force``); the JIT is used instead.

Example
-------
``python -m kldiv._kernels.aot`` builds (if needed) and prints where the module is.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "KERNEL_DIR_ENV", "build", "failed_path", "kernel_dir", "kernel_key", "load", "module_path",
]

log = logging.getLogger(__name__)

#: Environment variable naming the folder of the compiled module.
KERNEL_DIR_ENV = "KLDIV_KERNEL_DIR"
_HERE = Path(__file__).resolve().parent
#: The sources whose text is compiled (the kernels, their options, and this builder).
_SOURCES = ("fill.py", "entropy.py", "_jit.py", "aot.py")
#: The kernel modules that declare ``AOT_EXPORTS``.
_KERNEL_MODULES = ("fill", "entropy")


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what ``target_cpu='host'`` compiles for)."""
    try:
        with open("/proc/cpuinfo") as info:
            keep = []
            for line in info:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    keep.append(line.strip())
                elif not line.strip() and keep:
                    break  # the first processor is enough
            if keep:
                return "\n".join(keep)
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def kernel_key() -> str:
    """16 hex digits naming one build: sources, Numba/NumPy/Python versions, CPU."""
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes() + b"\0")
    for part in (_version("numba"), _version("numpy"), sys.version, platform.machine(),
                 _cpu_identity()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def kernel_dir() -> Path:
    """The folder of the compiled module (see the module docstring for the order)."""
    named = os.environ.get(KERNEL_DIR_ENV)
    if named:
        return Path(named).expanduser()
    beside = _HERE / "__pycache__"
    if _writable(beside):
        return beside
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "kldiv"


def _module_name(key: str) -> str:
    return f"_kldiv_kernels_{key}"


def module_path(folder: Path | None = None, key: str | None = None) -> Path:
    """Where the compiled module of ``key`` (default: this environment's) lives or will live."""
    folder = kernel_dir() if folder is None else folder
    key = kernel_key() if key is None else key
    return folder / (_module_name(key) + importlib.machinery.EXTENSION_SUFFIXES[0])


def _import(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - suffix is an extension's
        raise ImportError(f"cannot load {path} as an extension module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flags_class(base: type) -> type:
    """numba's ``Flags`` with kldiv's JIT options, for the exported functions themselves."""
    from ._jit import JIT_OPTIONS

    if JIT_OPTIONS["fastmath"]:  # pragma: no cover - kldiv never uses fast-math
        raise RuntimeError("ahead-of-time kernels are built without fast-math only")

    class KldivFlags(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = bool(JIT_OPTIONS["nogil"])
            self.error_model = str(JIT_OPTIONS["error_model"])
            self.boundscheck = bool(JIT_OPTIONS["boundscheck"])

    return KldivFlags


def failed_path(module: Path) -> Path:
    """Where a failed build of ``module`` keeps its reason (and stops retries)."""
    return module.with_name(module.name + ".failed")


def build(folder: Path | None = None, *, force: bool = False, key: str | None = None) -> Path:
    """Compile the kernels into ``folder`` (default :func:`kernel_dir`) and return the path.

    Parameters
    ----------
    folder : pathlib.Path, optional
        Where the module goes.
    force : bool, default False
        Build even when the module exists (and forget an earlier failure).
    key : str, optional
        :func:`kernel_key`, when the caller has it already.

    Returns
    -------
    pathlib.Path
        The extension module.

    Raises
    ------
    Exception
        Whatever Numba's compiler or the C toolchain raised; nothing is left behind.
    """
    folder = kernel_dir() if folder is None else folder
    key = kernel_key() if key is None else key
    target = module_path(folder, key)
    if target.exists() and not force:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    name = _module_name(key)
    start = time.perf_counter()
    log.info("compiling kldiv's kernels ahead of time into %s (once per environment)", folder)
    # numba.pycc's pending-deprecation notice, and nothing else (a process-wide filter that
    # is never restored: catch_warnings is not thread-safe, and builds run in a thread)
    warnings.filterwarnings("ignore", message="The 'pycc' module is pending deprecation")
    import numba.pycc.compiler as pycc_compiler
    from numba.pycc import CC

    from . import entropy, fill

    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    saved_flags = pycc_compiler.Flags
    try:
        pycc_compiler.Flags = _flags_class(saved_flags)  # type: ignore[misc, assignment]
        cc = CC(name)
        cc.output_dir = str(work)
        cc.target_cpu = "host"
        for module in (fill, entropy):
            for export, (function, signature) in module.AOT_EXPORTS.items():
                cc.export(export, signature)(function.py_func)
        cc.compile()
        built = [p for p in work.iterdir() if p.name.startswith(name) and p.is_file()]
        if len(built) != 1:
            raise RuntimeError(f"numba.pycc left {[p.name for p in work.iterdir()]} in {work}")
        os.replace(built[0], target)  # atomic: readers see no file or the whole file
    finally:
        pycc_compiler.Flags = saved_flags  # type: ignore[misc]
        shutil.rmtree(work, ignore_errors=True)
    failed_path(target).unlink(missing_ok=True)
    log.info("kldiv's kernels compiled in %.1f s: %s", time.perf_counter() - start, target)
    return target


def load(*, build_if_missing: bool = True) -> ModuleType | None:
    """The compiled kernels of this environment, building them first when allowed.

    Returns None (and logs why) when they are not built and cannot be: no build allowed, an
    earlier build failed for this key, this build fails (its reason is kept in
    ``<module>.failed``), the kernels' sources cannot be read (no key), or the file there does
    not import (a damaged file: delete it to rebuild). Never raises for these: the JIT is the
    fallback.
    """
    try:
        folder = kernel_dir()
        key = kernel_key()
    except OSError as exc:
        log.warning("cannot key kldiv's ahead-of-time kernels (%s); using Numba's JIT", exc)
        return None
    path = module_path(folder, key)
    failed = failed_path(path)
    if not path.exists():
        if failed.exists():
            log.debug("ahead-of-time kernels failed to build before (%s); using the JIT", failed)
            return None
        if not build_if_missing:
            return None
        try:
            build(folder, key=key)
        except Exception as exc:
            reason = "".join(traceback.format_exception(exc))
            log.warning(
                "could not compile kldiv's kernels ahead of time (%s: %s); using Numba's JIT. "
                "Not retried until %s is removed.", type(exc).__name__, exc, failed,
            )
            try:
                failed.write_text(reason)
            except OSError:  # pragma: no cover - read-only folder
                pass
            return None
    try:
        return _import(path, _module_name(key))
    except ImportError as exc:
        log.warning(
            "kldiv's ahead-of-time kernels in %s do not load (%s); using Numba's JIT. Delete "
            "the file to rebuild it.", path, exc,
        )
        return None


def main(argv: list[str] | None = None) -> int:
    """``python -m kldiv._kernels.aot [--force]``: build if needed, print the module's path."""
    ap = argparse.ArgumentParser(description="Compile kldiv's kernels ahead of time.")
    ap.add_argument("--force", action="store_true", help="rebuild even if built")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    key = kernel_key()
    path = build(force=args.force, key=key)
    _import(path, _module_name(key))
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
