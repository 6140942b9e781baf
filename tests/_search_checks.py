"""The kernel search held to the NumPy reference: one check shared by the search tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from kldiv import entropy as E


def check_kernel_search(
    counts: np.ndarray, opts: E.EntropyOptions, build: Any, *, curve: bool = True
) -> None:
    """The kernel search picks the reference's candidate; with ``curve``, its curve matches.

    The curve agrees to 1e-9 relative; the absolute floor covers KL values that are 0 up to
    rounding, where the reference itself is only accurate to ~1e-16 * log(total). Infinite
    and NaN entries sit in the same places.
    """
    cand_ref, div_ref = E.divergence_curve(counts, opts)
    pos_ref = E.pick_minimum(div_ref, opts)
    assert build is not None
    cand, div, pos = E.kernel_search(counts, opts, build)
    np.testing.assert_array_equal(cand, cand_ref)
    assert int(cand[pos]) == int(cand_ref[pos_ref]), (int(cand[pos]), int(cand_ref[pos_ref]))
    if curve:
        np.testing.assert_array_equal(np.isinf(div), np.isinf(div_ref))
        np.testing.assert_array_equal(np.isnan(div), np.isnan(div_ref))
        np.testing.assert_allclose(div, div_ref, rtol=1e-9, atol=1e-12)
