"""The readable entropy search (kldiv.entropy): the pseudocode, options, presets, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kldiv import entropy as E
from kldiv.errors import HistogramError, PresetError
from kldiv.scales import ThresholdResult, amax_to_scale
from tests._hist_strategies import make_hist
from tests._kernels_env import using


def test_slide_worked_example_q() -> None:
    # GTC 2017: [1,0,2,3,5,3,1,7] in 2 groups -> sums [6,16] -> [2,0,2,2,4,4,4,4]
    hist = np.array([1, 0, 2, 3, 5, 3, 1, 7], dtype=np.float64)
    opts = E.EntropyOptions(num_levels=2)
    p, q = E.distributions(hist, 8, opts)
    np.testing.assert_array_equal(q, [2, 0, 2, 2, 4, 4, 4, 4])
    np.testing.assert_array_equal(p, hist)


def test_outliers_folded_into_last_kept_bin() -> None:
    hist = np.array([4, 3, 2, 1, 1, 5], dtype=np.float64)
    p, q = E.distributions(hist, 4, E.EntropyOptions(num_levels=2))
    np.testing.assert_array_equal(p, [4, 3, 2, 1 + 1 + 5])
    np.testing.assert_array_equal(q, [3.5, 3.5, 1.5, 1.5])  # Q from H[0:i], no outliers


def test_kl_matches_direct_formula() -> None:
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 100, 300)
    opts = E.EntropyOptions()
    cands, div = E.divergence_curve(counts, opts)
    i = 200
    p, q = E.distributions(counts.astype(float), i, opts)
    p, q = p / p.sum(), q / q.sum()
    assert div[cands == i][0] == pytest.approx(float(np.sum(p * np.log(p / q))), rel=1e-12)


def test_kl_infinite_when_q_empty_under_p() -> None:
    hist = np.zeros(300)
    hist[:10] = 5
    hist[-1] = 3  # the outlier lands in an empty kept bin
    p, q = E.distributions(hist, 200, E.EntropyOptions())
    assert math.isinf(E.kl_divergence(p, q, E.EntropyOptions()))
    assert math.isfinite(E.kl_divergence(p, q, E.EntropyOptions(smoothing="eps", empty="p")))


def test_grouping_rules() -> None:
    opts = E.EntropyOptions(num_levels=4)
    np.testing.assert_array_equal(E.group_index(6, opts), [0, 0, 1, 2, 2, 3])
    floor = E.EntropyOptions(num_levels=4, grouping="floor")
    np.testing.assert_array_equal(E.group_index(6, floor), [0, 1, 2, 3, 3, 3])


def test_candidates_per_preset() -> None:
    assert E.candidate_bins(2048, E.PRESETS["tensorrt"])[[0, -1]].tolist() == [128, 2048]
    assert E.candidate_bins(2048, E.PRESETS["gtc2017"])[[0, -1]].tolist() == [128, 2047]
    assert E.candidate_bins(2048, E.PRESETS["modelopt"])[[0, -1]].tolist() == [128, 2048]
    assert E.candidate_bins(8001, E.PRESETS["mxnet"])[[0, -1]].tolist() == [127, 4000]
    assert E.candidate_bins(2048, E.PRESETS["tensorrt"].replace(stride=64)).size == 31


def test_ties_first_and_last() -> None:
    div = np.array([3.0, 1.0, 2.0, 1.0])
    assert E.pick_minimum(div, E.EntropyOptions()) == 1
    assert E.pick_minimum(div, E.EntropyOptions(ties="last")) == 3
    inf = np.full(3, np.inf)
    assert E.pick_minimum(inf, E.EntropyOptions()) == 0
    assert E.pick_minimum(inf, E.EntropyOptions(ties="last")) == 2


def test_threshold_and_scale_order() -> None:
    opts = E.PRESETS["tensorrt"]
    t = E.threshold_from_bin(2040, 2048, 1.0, opts)
    assert t == (2040 + 0.5) / 2048
    with using("numpy"):
        r = E.search_threshold(make_hist(_constant_counts(), 3.0))
    assert r.scale == amax_to_scale(2048.5 / 2048 * 3.0)
    assert E.threshold_from_bin(10, 2048, 1.0, E.PRESETS["modelopt"]) == 10 / 2048


def _constant_counts() -> np.ndarray:
    c = np.zeros(2048, dtype=np.int64)
    c[-1] = 7
    return c


def test_result_fields_and_distributions() -> None:
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 50, 2048)
    with using("numpy"):
        r = E.search_threshold(make_hist(counts, 2.0), "tensorrt")
    assert isinstance(r, ThresholdResult)
    assert r.method == "entropy" and r.preset == "tensorrt"
    assert r.candidates.size == r.divergence.size == 2048 - 128 + 1
    assert r.divergence_at(r.bin_index) == r.divergence.min()
    p, q = r.distributions()
    assert p.size == q.size == r.bin_index
    assert p.sum() == pytest.approx(1.0) and q.sum() == pytest.approx(1.0)
    p2, _ = r.distributions(300)
    assert p2.size == 300
    assert r.options["grouping"] == "proportional"
    assert r.scale_hex == format(int(np.float32(r.scale).view(np.uint32)), "x")


def test_all_zero_tensor_scale_zero() -> None:
    counts = np.zeros(2048, dtype=np.int64)
    counts[0] = 100
    r = E.search_threshold(make_hist(counts, 0.0))
    assert r.amax == 0.0 and r.scale_hex == "0" and r.bin_index is None


def test_options_override_and_errors() -> None:
    assert E.resolve_options("tensorrt", ties="last").ties == "last"
    with pytest.raises(PresetError, match="valid options are"):
        E.resolve_options("tensorrt", tie="last")
    with pytest.raises(PresetError, match="tensorrt"):
        E.resolve_options("tensorrtx")
    with pytest.raises(PresetError, match="choose one of"):
        E.EntropyOptions(grouping="fractional")  # type: ignore[arg-type]
    with pytest.raises(PresetError, match="unknown entropy option.*'backend'"):
        E.search_threshold(make_hist(_constant_counts()), backend="numpy")  # one knob: env
    with pytest.raises(ValueError):
        E.search_threshold(make_hist(_constant_counts()), num_levels=0)


class _Raw:
    def __init__(self, counts: object, amax: float = 1.0) -> None:
        self.counts, self.amax = counts, amax


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        (np.array([1.5] * 300), "integers"),
        (np.array([1] * 299 + [-1]), ">= 0"),
        (np.zeros(300, dtype=np.int64), "empty"),
        (np.ones(100, dtype=np.int64), "fewer than the 128"),
        (np.ones((2, 300), dtype=np.int64), "1-D"),
    ],
)
def test_bad_histograms(counts: np.ndarray, match: str) -> None:
    with pytest.raises(HistogramError, match=match):
        E.search_threshold(_Raw(counts))
    with pytest.raises(ValueError):
        E.search_threshold(_Raw(counts))


def test_bad_amax_and_objects() -> None:
    with pytest.raises(HistogramError, match="amax"):
        E.search_threshold(_Raw(np.ones(300, dtype=np.int64), float("nan")))
    with pytest.raises(HistogramError, match="from_counts"):
        E.search_threshold(object())


def test_signed_domain_window_and_threshold() -> None:
    hist = np.arange(1, 10, dtype=np.float64)  # 9 bins, zero bin 4
    opts = E.EntropyOptions(domain="signed", num_levels=3)
    p, _ = E.distributions(hist, 1, opts)
    np.testing.assert_array_equal(p, [1 + 2 + 3 + 4, 5, 6 + 7 + 8 + 9])
    assert E.threshold_from_bin(1, 9, 4.5, opts) == pytest.approx(1.5)  # edge of bin z+i+1
    with pytest.raises(HistogramError, match="odd"):
        E.candidate_bins(8, opts)


def test_every_preset_runs() -> None:
    rng = np.random.default_rng(5)
    for name, opts in E.PRESETS.items():
        n = 1001 if opts.domain == "signed" else 2048
        with using("numpy"):
            r = E.search_threshold(make_hist(rng.integers(0, 100, n)), name)
        assert r.preset == name and 0 < r.amax <= 1.0 * (1 + 1 / n)
