"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["atomic_write_bytes", "atomic_write_text", "check_writable"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], *, force: bool) -> Path:
    """Refuse early when ``path`` exists and ``force`` is false.

    Parameters
    ----------
    path : path-like
        The output file.
    force : bool
        Whether overwriting an existing file is allowed.

    Returns
    -------
    pathlib.Path
        ``path`` as a Path.

    Raises
    ------
    OutputExistsError
        If the file exists and ``force`` is false.
    """
    p = Path(path)
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
    """
    p = check_writable(path, force=force)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {p}: folder {folder} does not exist; create it first")
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
