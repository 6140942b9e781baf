"""Exceptions raised by kldiv.

Every error says what is wrong *and* how to fix it. All are subclasses of
:class:`KldivError`, and the ones caused by bad input are also :class:`ValueError`
so that ``except ValueError`` keeps working for callers who do not know kldiv.
"""

from __future__ import annotations

from ._kernels import KernelChoiceError

__all__ = [
    "KernelChoiceError",
    "KldivError",
    "ClusterError",
    "HistogramError",
    "HistogramRangeError",
    "NonFiniteError",
    "PresetError",
    "CacheFormatError",
    "DataSourceError",
    "ModelError",
    "OutputExistsError",
    "PathError",
    "InputNotFoundError",
    "NotAFileError",
    "OutputFolderError",
    "OverwriteInputError",
    "QuantizationError",
    "TableMismatchError",
    "UnknownNameError",
]


class KldivError(Exception):
    """Base class of every error kldiv raises on purpose (except :class:`KernelChoiceError`,
    a :class:`ValueError` raised by the kernel layer, which imports nothing of kldiv)."""


class HistogramError(KldivError, ValueError):
    """A histogram, or the data or counts given to build one, is invalid."""


class HistogramRangeError(HistogramError):
    """Histograms with different ranges or bin counts were combined."""


class NonFiniteError(HistogramError):
    """NaN or ±Inf values were found where finite activations are required.

    Attributes
    ----------
    n_nan, n_posinf, n_neginf : int
        How many of each were found.
    first_index : tuple of int or None
        Index (in the array as given) of the first non-finite value.
    where : str
        Free text naming the tensor / batch, filled in by callers that know it.
    """

    def __init__(
        self,
        message: str,
        *,
        n_nan: int = 0,
        n_posinf: int = 0,
        n_neginf: int = 0,
        first_index: tuple[int, ...] | None = None,
        where: str = "",
    ) -> None:
        super().__init__(message)
        self.n_nan = n_nan
        self.n_posinf = n_posinf
        self.n_neginf = n_neginf
        self.first_index = first_index
        self.where = where


class PresetError(KldivError, ValueError):
    """An unknown preset, method or option name, or an option value out of range."""


class CacheFormatError(KldivError, ValueError):
    """A calibration cache (or related file) could not be read.

    Attributes
    ----------
    path : str or None
        The file, when known.
    line : int or None
        1-based line number of the offending line, when known.
    hint : str
        How to fix it.
    """

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, hint: str = ""
    ) -> None:
        self.reason = message
        self.path = path
        self.line = line
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}"
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        text = f"{where}: {self.reason}" if where else self.reason
        if self.hint:
            text = f"{text} ({self.hint})"
        return text


class DataSourceError(KldivError, ValueError):
    """Calibration data is missing, unreadable, or does not match the model's inputs."""


class ModelError(KldivError, ValueError):
    """A model could not be loaded or run."""


class OutputExistsError(KldivError, FileExistsError):
    """An output file exists and overwriting was not allowed (pass ``force=True`` / ``--force``)."""


class PathError(KldivError, OSError):
    """A path given to kldiv cannot be used as asked (the message names it and says why).

    Also an :class:`OSError`, so ``except OSError`` keeps working; the subclasses are the
    matching built-in errors too (``FileNotFoundError``, ``IsADirectoryError``, ``ValueError``).
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class InputNotFoundError(PathError, FileNotFoundError):
    """An input file (model, cache, histogram file ...) does not exist."""


class NotAFileError(PathError, IsADirectoryError):
    """A folder was given where a file is read or written."""


class OutputFolderError(PathError, FileNotFoundError):
    """The folder an output file is to be written into does not exist."""


class OverwriteInputError(PathError, ValueError):
    """An output path names one of the command's inputs; never overwritten, even with force."""


class QuantizationError(KldivError, ValueError):
    """A calibration table cannot be turned into a quantized (Q/DQ) model: a scale that is
    infinite, NaN or negative, or an unknown option."""


class ClusterError(KldivError, RuntimeError):
    """A distributed run could not be done: no scheduler answered, or a shard's worker died
    more often than the engine retries. No table or histogram file is written."""


class TableMismatchError(QuantizationError):
    """A calibration table does not belong to the model it is applied to: its provenance names
    another model, or it covers too few of the model's calibratable tensors. Pass
    ``force=True`` (``--force``) to apply it anyway."""


class UnknownNameError(QuantizationError):
    """A tensor, node or op type named by the user (``exclude=``, ``--exclude``) is not in the
    model. The message lists the closest names."""
