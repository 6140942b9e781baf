"""The fill kernel's uint32 lanes: counted a span at a time and added to int64 counts, the
result is the reference's whatever the span (the production span, 2**31 elements, cannot be
reached in a test; small spans exercise the same path)."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.histogram import fill_counts_reference

fill = pytest.importorskip("kldiv._kernels.fill")
from kldiv._kernels import wrappers  # noqa: E402


def _data(dtype: type) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.standard_normal(50_003) * 3
    x[::97] = 0.0  # runs of one bin
    x[5] = np.nan
    x[40_000] = -np.inf
    x[123] = 6e4  # over the range below (finite in float16 too)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("span", [1, 4095, 4096, 10_007, 50_003, fill.LANE_SPAN])
@pytest.mark.parametrize("clip", [False, True])
def test_any_span_gives_the_reference(dtype: type, span: int, clip: bool) -> None:
    x = _data(dtype)
    amax = 9.0
    ref = fill_counts_reference(x, amax, 2048, clip=clip)
    utype, mask = wrappers.MAGNITUDE[x.dtype]
    table, ftable = wrappers.NO_TABLE_I, wrappers.NO_TABLE_F
    if x.dtype == np.float16:
        table = fill._codes_kernel(wrappers.F16_ABS_TABLE, amax, 2048 / amax, 2048)
        ftable = wrappers.F16_ABS_TABLE
    counts, bad, over, mx_over, mx_in, clean_bits = fill._fill_kernel(
        wrappers.kernel_view(x), x.view(utype), mask, table, ftable, amax, 2048, clip, span)
    np.testing.assert_array_equal(counts, ref.counts)
    assert counts.dtype == np.int64
    assert (int(bad), int(over), float(mx_over)) == (ref.n_nonfinite, ref.n_over, ref.max_over)
    clean = float(np.array(clean_bits, utype).view(x.dtype)[()])
    assert max(float(mx_in), clean, float(mx_over)) == ref.max_abs
