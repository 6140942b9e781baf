"""``kldiv explain`` and kldiv.explain: the story of one threshold, and what reproduces another."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kldiv.cachefile import read_cache, write_cache
from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.entropy import PRESETS, search_threshold
from kldiv.errors import HistogramError, PresetError
from kldiv.explain import (
    SEARCH_SPACE,
    _Searcher,
    explain_scale,
    place_value,
    reproduce,
)
from kldiv.histogram import ActivationHistogram
from kldiv.scales import CalibrationTable, amax_to_scale
from tests._hist_strategies import make_hist
from tests.conftest import fixtures_dir


def _histograms() -> list[ActivationHistogram]:
    rng = np.random.default_rng(3)
    n = 2048
    relu = np.histogram(np.abs(np.maximum(rng.normal(size=60_000), 0)), bins=n)[0]
    sparse = (rng.random(n) < 0.03) * rng.integers(1, 30, n)
    sparse[-1] = 1
    pixels = np.zeros(n, dtype=np.int64)
    pixels[::128] = rng.integers(100, 1000, 16)  # discrete values: exact KL ties
    single = np.zeros(n, dtype=np.int64)
    single[700] = 50
    return [
        ActivationHistogram.from_values(rng.laplace(size=50_000)),
        make_hist(relu, 4.0),
        make_hist(sparse, 2.0),
        make_hist(pixels, 1.0),
        make_hist(single, 3.0),
    ]


# ------------------------------------------------------------------ pieces
def test_place_value_finds_the_bin_and_bit_exactness() -> None:
    h = _histograms()[0]
    r = search_threshold(h, "tensorrt")
    placed = place_value(h.counts, h.amax, r.scale, label="c")
    assert (placed.bin_index, placed.exact, placed.scale_hex) == (r.bin_index, True, r.scale_hex)
    assert placed.position == pytest.approx(r.bin_index + 0.5)
    # a threshold a third of a bin away is on no centre of this histogram
    off = place_value(h.counts, h.amax, amax_to_scale(r.amax + h.bin_width / 3))
    assert off.bin_index is None and not off.exact
    # the same bin, a few ulps away (another R): same bin, not bit-exact
    near = place_value(h.counts, h.amax, np.nextafter(r.scale, np.float32(1)))
    assert near.bin_index == r.bin_index and not near.exact


def test_cached_curves_pick_what_search_threshold_picks() -> None:
    """reproduce() computes each divergence curve once and picks like the kernel search: the
    same bin as search_threshold for every variant of up to two changed fields.
    """
    base = PRESETS["tensorrt"]
    fields = list(SEARCH_SPACE)
    # 512 bins: the smoothed reference curve costs O(bins^2)
    for h in (make_hist(np.asarray(h.counts).reshape(-1, 4).sum(axis=1), h.amax)
              for h in _histograms()):
        searcher = _Searcher(np.asarray(h.counts), h.amax)
        for size in (0, 1, 2):
            for combo in itertools.combinations(fields, size):
                alts = [[v for v in SEARCH_SPACE[f] if v != getattr(base, f)] for f in combo]
                for values in itertools.product(*alts):
                    opts = base.replace(**dict(zip(combo, values)))
                    ours = searcher.run(opts)
                    ref = search_threshold(h, opts)
                    assert ours == (ref.bin_index, ref.amax), (dict(zip(combo, values)), h)


def test_reproduce_finds_the_one_field_that_differs() -> None:
    h = _histograms()[0]
    tensorrt = search_threshold(h, "tensorrt")
    # ModelOpt's rule puts the threshold on the bin's lower edge
    modelopt = search_threshold(h, "tensorrt", threshold_offset=0.0)
    single, smallest, _ = reproduce(h, modelopt.amax, target_scale=modelopt.scale)
    assert [v.changes for v in smallest] == [{"threshold_offset": 0.0}]
    assert smallest[0].exact
    assert single[0].changes == {} and single[0].bin_index == tensorrt.bin_index
    assert not single[0].matches


def test_reproduce_finds_two_fields_together_and_says_when_nothing_does() -> None:
    h = _histograms()[1]  # post-ReLU: the zero spike decides, floor grouping moves it further
    target = search_threshold(h, "tensorrt", zeros="keep", grouping="floor")
    assert target.bin_index != search_threshold(h, "tensorrt", zeros="keep").bin_index
    assert target.bin_index != search_threshold(h, "tensorrt", grouping="floor").bin_index
    _, smallest, _ = reproduce(h, target.amax, target_scale=target.scale)
    assert smallest and all(len(v.changes) == 2 for v in smallest)
    assert {"zeros": "keep", "grouping": "floor"} in [v.changes for v in smallest]
    # a threshold on no candidate's grid: nothing reproduces it
    odd = target.amax + 0.37 * h.bin_width
    _, none, tried = reproduce(h, odd, max_changes=2)
    assert none == [] and tried > len(SEARCH_SPACE)


def test_explain_text_tells_the_story() -> None:
    h = _histograms()[0]
    slide = search_threshold(h, "gtc2017")
    e = explain_scale(h, name="conv", value=slide.scale, value_label="slide.cache")
    text = e.to_text()
    r = e.result
    assert f"i = {r.bin_index}" in text and r.scale_hex in text
    assert "slide.cache" in text and slide.scale_hex in text
    assert e.value is not None and e.value.bin_index == slide.bin_index
    if slide.bin_index != r.bin_index:
        assert e.smallest and "smallest change" in text
    else:
        assert "preset itself reproduces" in text


def test_explain_refuses_a_histogram_without_a_range_and_signed_presets() -> None:
    zero = make_hist(np.array([5] + [0] * 2047), 0.0)
    with pytest.raises(HistogramError, match="no range"):
        explain_scale(zero, name="dead")
    with pytest.raises(PresetError, match="mxnet"):
        explain_scale(_histograms()[0], preset="mxnet")


# ------------------------------------------------------------------ the command
@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    c = HistogramCollector()
    for _ in range(3):
        c.observe({
            "conv1": rng.laplace(size=(4, 4000)).astype(np.float32),
            "relu1": np.maximum(rng.normal(size=(4, 4000)), 0).astype(np.float32),
            "dead": np.zeros((4, 10), np.float32),
        })
    hist = tmp_path / "h.npz"
    c.save(hist)
    table = CalibrationTable(
        (n, search_threshold(c[n], "tensorrt", threshold_offset=0.0).scale)
        for n in ("conv1", "relu1")
    )
    cache = tmp_path / "trt.cache"
    write_cache(table, cache)
    return hist, cache


def test_cli_explain_with_cache_and_plot(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    hist, cache = files
    png = tmp_path / "story.png"
    assert main(["explain", str(hist), "conv1", "--cache", str(cache), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "smallest change that reproduces trt.cache (1 field)" in out
    assert "threshold_offset=0.0  [bit-exact]" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure is not overwritten without --force, before any work
    before = png.read_bytes()
    assert main(["explain", str(hist), "conv1", "--plot", str(png)]) == 2
    assert "--force" in capsys.readouterr().err
    assert png.read_bytes() == before


def test_cli_explain_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    hist, cache = files
    assert main(["explain", str(hist), "relu1", "--cache", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    expected = search_threshold(HistogramCollector.load(hist)["relu1"], "tensorrt")
    assert (data["bin"], data["scale_hex"]) == (expected.bin_index, expected.scale_hex)
    assert data["value"]["scale_hex"] == read_cache(cache).hex("relu1")
    assert [v["changes"] for v in data["smallest_changes"]] == [{"threshold_offset": 0.0}]


def test_cli_explain_bad_input(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hist, cache = files
    assert main(["explain", str(hist), "relu_1"]) == 2
    err = capsys.readouterr().err
    assert "no tensor 'relu_1'" in err and "did you mean 'relu1'" in err
    assert main(["explain", str(hist), "dead"]) == 2
    assert "no range" in capsys.readouterr().err
    other = tmp_path / "other.cache"
    write_cache(CalibrationTable.from_amaxes({"fc9": 1.0}), other)
    assert main(["explain", str(hist), "conv1", "--cache", str(other)]) == 2
    assert "no tensor in common" in capsys.readouterr().err
    rangeless = tmp_path / "counts.npz"
    np.savez(rangeless, names=np.array(["conv1"]), counts=np.ones((1, 2048), np.int64))
    assert main(["explain", str(rangeless), "conv1"]) == 2
    assert "no range" in capsys.readouterr().err


# ------------------------------------------------------------------ real TensorRT caches
def _sampleint8_histograms(tmp_path: Path) -> Path:
    folder = fixtures_dir() / "conformance" / "sampleint8"
    if not (folder / "mnist_lenet.onnx").is_file():
        pytest.skip(f"sampleINT8 fixtures not found in {folder}; set KLDIV_FIXTURES")
    pytest.importorskip("onnxruntime")
    from kldiv.pipeline import collect_histograms

    with np.load(folder / "mnist_train_0_550.npz") as z:
        images = z["images"][50:550].astype(np.float32) / 255.0  # TRT 7.0's batches
    batches = [{"data": images[k * 50 : (k + 1) * 50]} for k in range(10)]
    path = tmp_path / "mnist.npz"
    collect_histograms(folder / "mnist_lenet.onnx", batches).save(path)
    return path


def test_explain_real_tensorrt_cache_post_relu(
    tmp_path: Path, trt_caches: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """TRT 7.0's ip1 (post-ReLU): the tensorrt preset reproduces it; counted from the slide's
    literal reading, the zero spike is the change that explains it.
    """
    hist = _sampleint8_histograms(tmp_path)
    cache = trt_caches / "sampleint8-mnist-trt7000.cache"
    assert main(["explain", str(hist), "ip1", "--cache", str(cache), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["smallest_changes"][0]["changes"] == {}  # the preset itself
    assert data["value"]["bin_index"] == data["bin"] == 1231
    assert main(["explain", str(hist), "ip1", "--cache", str(cache), "--preset", "gtc2017",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    smallest = [v["changes"] for v in data["smallest_changes"]]
    assert smallest and all("zeros" in c for c in smallest)


def test_smoothing_is_tried_with_emptiness_from_p_unless_exhaustive() -> None:
    h = _histograms()[1]
    target = search_threshold(h, "tensorrt", smoothing="eps", empty="p", zeros="keep")
    single, smallest, tried = reproduce(h, target.amax, target_scale=target.scale)
    assert {"smoothing": "eps"} not in [v.changes for v in single]
    assert smallest and all(v.matches for v in smallest)
    single_x, smallest_x, tried_x = reproduce(h, target.amax, target_scale=target.scale,
                                              exhaustive=True)
    assert {"smoothing": "eps"} in [v.changes for v in single_x] and tried_x > tried
    # the slow pair adds variants; it cannot make the smallest change larger
    assert len(smallest_x[0].changes) <= len(smallest[0].changes)
    for v in smallest:  # every reported variant gives the target when searched directly
        r = search_threshold(h, "tensorrt", **v.changes)
        assert abs(r.amax - target.amax) <= 0.25 * h.bin_width


def test_reproduce_finds_the_degenerate_window_rule() -> None:
    """A spike alone in its window gives KL = 0 (P and Q the same one point): a cache that took
    that minimum is explained by taking degenerate windows, one field from tensorrt.
    """
    if "min_nonempty_bins" not in SEARCH_SPACE:
        pytest.skip("this EntropyOptions has no min_nonempty_bins field")
    rng = np.random.default_rng(1)
    counts = np.zeros(2048, dtype=np.int64)
    counts[200] = 10**6
    np.add.at(counts, rng.integers(300, 2048, 400), 1)
    h = make_hist(counts, 8.0)
    took = search_threshold(h, "tensorrt", min_nonempty_bins=1)
    assert took.bin_index == 201 and took.divergence_at(201) < 1e-12
    assert search_threshold(h, "tensorrt").bin_index != 201
    _, smallest, _ = reproduce(h, took.amax, target_scale=took.scale)
    assert [v.changes for v in smallest] == [{"min_nonempty_bins": 1}] and smallest[0].exact


def test_load_histograms_opens_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kldiv.explain import load_histograms

    path = tmp_path / "h.npz"
    collector = HistogramCollector()
    collector.observe({"t": np.linspace(-1, 1, 1000, dtype=np.float32)})
    collector.save(path)
    opened: list[str] = []
    real = np.load

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(np, "load", counted)
    loaded = load_histograms(path)
    assert opened == [str(path)]
    assert list(loaded.names) == ["t"] and np.array_equal(loaded["t"].counts, collector["t"].counts)
