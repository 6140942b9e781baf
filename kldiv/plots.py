"""Matplotlib figures (matplotlib is imported only inside these functions, with the Agg backend).

Install with ``pip install "kldiv[plot]"``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._io import atomic_write_bytes, check_writable

if TYPE_CHECKING:  # pragma: no cover
    from .comparison import ComparisonReport

__all__ = ["plot_comparison"]

_COLORS = {
    "identical": "#2b8a3e",
    "ulp": "#74b816",
    "close": "#f59f00",
    "different": "#e03131",
    "zero": "#862e9c",
    "nonfinite": "#212529",
}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            f'plotting needs matplotlib ({exc}); install it with: pip install "kldiv[plot]"'
        ) from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_comparison(
    report: ComparisonReport,
    path: str | os.PathLike[str] | None = None,
    *,
    labels: tuple[str, str] = ("a", "b"),
    force: bool = False,
) -> Any:
    """Plot ``log2(amax_b / amax_a)`` per tensor, in table order, coloured by agreement class.

    Parameters
    ----------
    report : ComparisonReport
        From :func:`kldiv.compare`.
    path : path-like, optional
        Where to save a PNG (atomically; never overwriting without ``force``).
    labels : (str, str), optional
        Names of the two tables for the title and axis.
    force : bool, optional
        Overwrite ``path`` if it exists.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (closed from pyplot's state when saved).
    """
    if path is not None:
        check_writable(path, force=force)
    plt = _pyplot()
    ts = report.tensors
    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, 0.06 * len(ts) + 6)), 4.8),
                           layout="constrained")
    xs = list(range(len(ts)))
    ys = []
    for t in ts:
        y = t.log2_ratio
        ys.append(y if math.isfinite(y) else math.nan)
    finite = [y for y in ys if not math.isnan(y)]
    lim = max([abs(y) for y in finite] + [1e-6])
    for cls, color in _COLORS.items():
        idx = [i for i, t in enumerate(ts) if t.agreement == cls]
        if not idx:
            continue
        yy = [ys[i] if not math.isnan(ys[i]) else (lim * 1.05) for i in idx]
        ax.scatter([xs[i] for i in idx], yy, s=14, color=color,
                   marker="o" if cls not in ("zero", "nonfinite") else "x",
                   label=f"{cls} ({len(idx)})")
    ax.axhline(0.0, color="#868e96", linewidth=0.8)
    ax.set_xlabel("tensor index (order of a)")
    ax.set_ylabel("log2(amax b / amax a)")
    s = report.summary()
    ax.set_title(
        f"a = {labels[0]}   b = {labels[1]}\n{s['matched']} matched by {report.match}, "
        f"{s['bit_identical']} bit-identical, {s['only_in_a']} only in a, {s['only_in_b']} only "
        f"in b, median ratio {s['median_ratio']:.6g}",
        fontsize=9,
    )
    ax.set_ylim(-lim * 1.15, lim * 1.15)
    ax.grid(True, alpha=0.3)
    if ts:
        ax.legend(loc="best", fontsize=8)
    if path is not None:
        _save_png(fig, path, dpi=120, force=force)
    return fig


def _save_png(fig: Any, path: str | os.PathLike[str], *, dpi: int, force: bool) -> None:
    """Write ``fig`` to ``path`` as a PNG (atomically; overwriting only with ``force``); close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(Path(path), buf.getvalue(), force=force)
    plt.close(fig)
