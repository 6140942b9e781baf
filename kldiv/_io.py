"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import NotAFileError, OutputExistsError, OutputFolderError, OverwriteInputError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable", "same_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (after symlinks; hard links too when both exist)."""
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_writable(
    path: str | os.PathLike[str],
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    what: str = "output",
) -> Path:
    """Check, before any work, that ``path`` can be written as a new file.

    Parameters
    ----------
    path : path-like
        The output file.
    force : bool
        Whether overwriting an existing file is allowed.
    inputs : iterable of path-like, optional
        The files the command reads (model, data, caches ...): ``path`` must be none of them,
        even with ``force`` (an output never replaces an input).
    what : str, optional
        How the output is named in messages (``"--out"``).

    Returns
    -------
    pathlib.Path
        ``path`` as a Path.

    Raises
    ------
    OverwriteInputError
        If ``path`` is one of ``inputs``.
    NotAFileError
        If ``path`` is a folder.
    OutputFolderError
        If the folder it goes into does not exist.
    OutputExistsError
        If the file exists and ``force`` is false.
    """
    p = Path(path)
    for given in inputs:
        if given is not None and same_file(p, given):
            raise OverwriteInputError(
                f"{what} {p} is also an input ({given}); kldiv never writes over its inputs, "
                "even with --force: choose another output path",
                path=str(p),
            )
    if p.is_dir():
        raise NotAFileError(
            f"{what} {p} is a folder; give a file path inside it, e.g. {p / 'calibration.cache'}",
            path=str(p),
        )
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise OutputFolderError(
            f"cannot write {p}: folder {folder} does not exist; create it first "
            f"(mkdir -p {folder})",
            path=str(p),
        )
    if p.exists() and not force:
        raise OutputExistsError(
            f"{p} already exists; pass --force (force=True) to overwrite it, or choose another path"
        )
    return p


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, which is flushed, fsynced and then
    renamed over ``path``: readers see either the old file or the complete new one.

    Parameters
    ----------
    path : path-like
        Destination file. Its folder must exist.
    data : bytes
        The complete contents.
    force : bool, optional
        Overwrite an existing file (default ``False``).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``force`` is false.
    NotAFileError, OutputFolderError
        If ``path`` is a folder, or its folder does not exist (see :func:`check_writable`).
    """
    p = check_writable(path, force=force)
    folder = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not force and p.exists():  # appeared while we were writing
            raise OutputExistsError(f"{p} appeared while writing; pass --force to overwrite it")
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, force: bool = False, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` atomically; see :func:`atomic_write_bytes`.

    The text is written as given: no newline translation, so ``"\\r\\n"`` survives.
    """
    return atomic_write_bytes(path, text.encode(encoding), force=force)
