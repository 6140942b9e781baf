"""``kldiv report``: the numbers behind the page, bad input, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from kldiv.cachefile import write_cache
from kldiv.cli import main
from kldiv.collect import HistogramCollector
from kldiv.entropy import search_threshold
from kldiv.report import _pack, build_report, write_report
from kldiv.scales import CalibrationTable, clipped_fraction
from tests._chromium import Browser, find_chromium
from tests.conftest import fixtures_dir


def _collector() -> HistogramCollector:
    rng = np.random.default_rng(5)
    c = HistogramCollector()
    for _ in range(4):
        c.observe({
            "conv1": rng.laplace(size=(4, 3000)).astype(np.float32),
            "relu1": np.maximum(rng.normal(size=(4, 3000)), 0).astype(np.float32),
            "pixels": (rng.integers(0, 17, size=(4, 500)) / 16.0).astype(np.float32),
            "const": np.full((4, 50), 2.5, np.float32),
            "dead": np.zeros((4, 10), np.float32),
            "<b>odd & name</b>": rng.normal(size=(4, 300)).astype(np.float32),
        })
    return c


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    c = _collector()
    hist = tmp_path / "h.npz"
    c.save(hist)
    # a cache from another rule: the slide's reading, and one tensor missing
    table = CalibrationTable(
        (n, search_threshold(c[n], "gtc2017").scale) for n in ("conv1", "relu1", "pixels")
    )
    cache = tmp_path / "other.cache"
    write_cache(table, cache)
    return hist, cache


def _embedded(html: str) -> dict:
    m = re.search(r'<script id="kldiv-data" type="application/json">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


def _decode(packed: list) -> np.ndarray:
    """The page's decoder, in Python."""
    lo, hi, b64 = packed
    import base64

    codes = np.frombuffer(base64.b64decode(b64), dtype="<u2").astype(np.float64)
    span = hi - lo if hi > lo else 1.0
    out = 10.0 ** (lo + (codes - 1) / 65533 * span)
    out[codes == 0] = 0.0
    out[codes == 65535] = np.inf
    return out


# ------------------------------------------------------------------ the numbers
def test_pack_round_trips_on_a_log_scale() -> None:
    v = np.array([0.0, 1e-9, 3.5, 7e4, np.inf, 2.0])
    back = _decode(_pack(v))
    assert back[0] == 0.0 and back[4] == np.inf
    np.testing.assert_allclose(back[[1, 2, 3, 5]], v[[1, 2, 3, 5]], rtol=5e-4)


def test_report_numbers_are_the_library_numbers() -> None:
    c = _collector()
    table = CalibrationTable(
        (n, search_threshold(c[n], "gtc2017").scale) for n in ("conv1", "relu1", "pixels")
    )
    data = build_report(c, tables={"slide.cache": table})
    rows = {t["n"]: t for t in data["tensors"]}
    assert list(rows) == c.names
    for name in ("conv1", "relu1", "pixels", "const"):
        h = c[name]
        for preset in ("tensorrt", "gtc2017", "modelopt"):
            r = search_threshold(h, preset)
            got = rows[name]["presets"][preset]
            assert (got["bin"], got["hex"]) == (r.bin_index, r.scale_hex)
            assert got["clip"] == clipped_fraction(h.counts, h.amax, r.amax)
        final = search_threshold(h, "tensorrt")
        assert (rows[name]["bin"], rows[name]["hex"]) == (final.bin_index, final.scale_hex)
    for name in ("conv1", "relu1", "pixels"):
        entry = rows[name]["tables"][0]
        slide = search_threshold(c[name], "gtc2017")
        assert (entry["bin"], entry["exact"], entry["hex"]) == (slide.bin_index, True,
                                                                slide.scale_hex)
        # the table's threshold is scale * 127 of a float32 scale: a few ulps from the search's
        assert entry["delta"] == pytest.approx(slide.bin_index - rows[name]["bin"], abs=1e-3)
    assert rows["const"]["tables"] == [None]
    assert rows["dead"]["flags"] == ["all zero"] and rows["dead"]["bin"] is None
    assert "degenerate window (fewer than 2 non-empty bins)" in rows["const"]["flags"]
    cov = data["summary"]["tables"][0]
    assert (cov["common"], cov["only_table"], cov["only_hist"]) == (3, 0, 3)
    same = sum(search_threshold(c[n], "gtc2017").bin_index == rows[n]["bin"]
               for n in ("conv1", "relu1", "pixels"))
    assert cov["same_bin"] == same
    # the plotted curve keeps each group's minimum: the chosen candidate's divergence is there
    plot = data["plots"][c.names.index("conv1")]
    r = search_threshold(c["conv1"], "tensorrt")
    curve = _decode(plot["c"])
    assert curve.min() == pytest.approx(r.divergence_at(r.bin_index), rel=5e-4)
    assert plot["pq"]["i"] == r.bin_index


def _spike() -> HistogramCollector:
    """Zeros and one constant: the two non-empty bins are bin 0 and the last."""
    c = HistogramCollector()
    x = np.zeros((4, 1000), np.float32)
    x[:, :100] = 2.5
    c.observe({"spike": x})
    return c


def test_report_of_custom_options_describes_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kldiv's numbers and flags are the search the options make; the summary names them."""
    import kldiv.report
    from kldiv.explain import abs_presets

    c = _spike()
    h = c["spike"]
    plain = build_report(c, preset="modelopt")
    row = plain["tensors"][0]
    # modelopt's bin 0 := bin 1 leaves one non-empty bin in its window
    assert plain["summary"]["options"] == {} and plain["summary"]["search"] == "modelopt"
    assert row["bin"] == search_threshold(h, "modelopt").bin_index
    assert "degenerate window (fewer than 2 non-empty bins)" in row["flags"]

    searched: list[object] = []
    real = kldiv.report.search_threshold

    def counted(hist: object, preset: object = "tensorrt", **kw: object) -> object:
        searched.append(preset if isinstance(preset, str) else "custom")
        return real(hist, preset, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(kldiv.report, "search_threshold", counted)
    data = build_report(c, preset="modelopt", options={"zeros": "keep"})
    ours = search_threshold(h, "modelopt", zeros="keep")
    row = data["tensors"][0]
    assert data["summary"]["options"] == {"zeros": "keep"}
    assert data["summary"]["search"] == "modelopt with zeros=keep"
    assert (row["bin"], row["hex"]) == (ours.bin_index, ours.scale_hex)
    assert row["kl"] == ours.divergence_at(ours.bin_index)
    assert row["flags"] == []  # the zeros kept: two non-empty bins in its window
    assert row["presets"]["modelopt"]["bin"] == search_threshold(h, "modelopt").bin_index
    # each preset searched once here; kldiv's own search once, by choose_thresholds
    assert sorted(map(str, searched)) == sorted(abs_presets())
    assert data["plots"][0]["cmin"] == ours.bin_index

    hist = tmp_path / "spike.npz"
    c.save(hist)
    out = tmp_path / "r.html"
    assert main(["report", str(hist), "--preset", "modelopt", "--option", "zeros=keep",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    text = out.read_text(encoding="utf-8")
    assert "<dt>options</dt><dd>zeros=keep</dd>" in text
    assert _embedded(text)["summary"]["options"] == {"zeros": "keep"}
    assert main(["report", str(hist), "--option", "zeros=nope", "--out",
                 str(tmp_path / "x.html")]) == 2
    assert "zeros" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


def test_report_searches_kldiv_preset_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import kldiv.report

    searched: list[object] = []
    real = kldiv.report.search_threshold

    def counted(hist: object, preset: object = "tensorrt", **kw: object) -> object:
        searched.append(preset)
        return real(hist, preset, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(kldiv.report, "search_threshold", counted)
    c = _collector()
    data = build_report(c, preset="tensorrt")
    assert "tensorrt" not in searched  # choose_thresholds' search is the preset's row
    live = [t for t in data["tensors"] if t["R"] > 0]
    others = [p for p in data["summary"]["presets"] if p != "tensorrt"]
    assert sorted(map(str, searched)) == sorted(others * len(live))
    for t in live:
        r = search_threshold(c[t["n"]], "tensorrt")
        assert (t["presets"]["tensorrt"]["bin"], t["bin"]) == (r.bin_index, r.bin_index)


def test_write_report_is_self_contained(inputs: tuple[Path, Path], tmp_path: Path) -> None:
    hist, cache = inputs
    out = write_report(hist, tmp_path / "r.html", caches=[cache])
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<link\b|<script[^>]*\bsrc=|<img\b|@import|url\(\s*['\"]?(https?:)?//",
                         html)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    # the only URL is SVG's namespace, inside the script
    assert set(re.findall(r"https?://[^\s\"'`]+", html)) <= {"http://www.w3.org/2000/svg"}
    assert "<b>odd & name</b>" not in html  # names are data, escaped, never markup
    data = _embedded(html)
    assert [t["n"] for t in data["tensors"]] == HistogramCollector.load(hist).names


def test_cli_report_bad_input_writes_nothing(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hist, cache = inputs
    out = tmp_path / "r.html"
    unrelated = tmp_path / "unrelated.cache"
    write_cache(CalibrationTable.from_amaxes({"fc9": 1.0, "fc10": 2.0}), unrelated)
    assert main(["report", str(hist), "--cache", str(unrelated), "--out", str(out)]) == 2
    assert "no tensor in common" in capsys.readouterr().err
    rangeless = tmp_path / "counts.npz"
    np.savez(rangeless, names=np.array(["conv1"]), counts=np.ones((1, 2048), np.int64))
    assert main(["report", str(rangeless), "--out", str(out)]) == 2
    assert "no range" in capsys.readouterr().err
    bad_eval = tmp_path / "eval.json"
    bad_eval.write_text('{"top1": 0.9}')
    assert main(["report", str(hist), "--eval", str(bad_eval), "--out", str(out)]) == 2
    assert "kldiv evaluate --json" in capsys.readouterr().err
    assert main(["report", str(hist), "--preset", "mxnet", "--out", str(out)]) == 2
    assert "mxnet" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["h.npz", "other.cache", "unrelated.cache", "counts.npz", "eval.json"]
    )
    # an existing report needs --force, and is left as it was without it
    out.write_text("mine")
    assert main(["report", str(hist), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == "mine"
    assert main(["report", str(hist), "--out", str(out), "--force"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_cli_report_with_evaluation(
    inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hist, cache = inputs
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps([{"name": "INT8 Q/DQ (inputs)", "n": 500,
                               "agreement": {"1": 0.992, "5": 1.0}, "fp32_accuracy": None,
                               "quantized_accuracy": None}]))
    out = tmp_path / "r.html"
    assert main(["report", str(hist), "--cache", str(cache), "--table", str(cache),
                 "--eval", str(ev), "--out", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    assert "INT8 Q/DQ (inputs)" in html and "top-1 99.20%" in html
    labels = [t["label"] for t in _embedded(html)["summary"]["tables"]]
    assert labels == ["other.cache", "other.cache (table)"]


def test_report_on_real_tensorrt_caches(tmp_path: Path, trt_caches: Path) -> None:
    """sampleINT8: TRT 7.0's cache lands in kldiv's bin on all 8 tensors it holds; TRT 5.1's
    (other calibration images) mostly does not.
    """
    folder = fixtures_dir() / "conformance" / "sampleint8"
    if not (folder / "mnist_lenet.onnx").is_file():
        pytest.skip(f"sampleINT8 fixtures not found in {folder}; set KLDIV_FIXTURES")
    pytest.importorskip("onnxruntime")
    from kldiv.pipeline import collect_histograms

    with np.load(folder / "mnist_train_0_550.npz") as z:
        images = z["images"][50:550].astype(np.float32) / 255.0
    hist = tmp_path / "mnist.npz"
    collect_histograms(folder / "mnist_lenet.onnx",
                       [{"data": images[k * 50 : (k + 1) * 50]} for k in range(10)]).save(hist)
    out = write_report(hist, tmp_path / "r.html", model=folder / "mnist_lenet.onnx",
                       caches=[trt_caches / "sampleint8-mnist-trt7000.cache",
                               trt_caches / "sampleint8-mnist-trt5100.cache"])
    data = _embedded(out.read_text(encoding="utf-8"))
    t7, t5 = data["summary"]["tables"]
    assert (t7["common"], t7["same_bin"]) == (8, 8)
    assert t5["same_bin"] < 8
    rows = {t["n"]: t for t in data["tensors"]}
    assert rows["pool1"]["rule"] == "inherited from conv1" and rows["conv1"]["op"] == "Conv"
    assert data["summary"]["model"]["matches"] is True


# ------------------------------------------------------------------ in a real browser
@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; "
                    "or set KLDIV_CHROMIUM to a Chromium binary)")
    return binary


@pytest.mark.browser
def test_report_in_headless_chromium(
    inputs: tuple[Path, Path], tmp_path: Path, chromium: str
) -> None:
    PIL = pytest.importorskip("PIL.Image")
    hist, cache = inputs
    page = write_report(hist, tmp_path / "r.html", caches=[cache])
    shots = Path(os.environ.get("KLDIV_SCREENSHOTS", tmp_path))  # keep them to look at them
    shots.mkdir(parents=True, exist_ok=True)
    with Browser(chromium) as b:
        b.open(page)
        assert b.eval("window.kldivReport && window.kldivReport.ready") is True
        n = len(HistogramCollector.load(hist).names)
        assert b.eval("document.querySelectorAll('#tensor-table tbody tr.row').length") == n
        # every plot of every tensor draws
        b.eval("kldivReport.openAll()")
        assert b.eval("kldivReport.problems()") == []
        assert b.eval("document.querySelectorAll('tr.detail svg').length") >= 3 * (n - 1)
        b.eval("document.getElementById('t0').scrollIntoView()")
        top = b.screenshot(shots / "report-tensor.png")
        b.eval("window.scrollTo(0, 0)")
        b.screenshot(shots / "report-summary.png")
        # the table sorts when a column title is clicked: ascending, then descending
        col = b.eval("Array.from(document.querySelectorAll('#tensor-table thead th'))"
                     ".findIndex(th => th.textContent === 'clipped')")
        assert col > 0
        click = f"document.querySelectorAll('#tensor-table thead th')[{col}].click()"
        clip = b.eval("JSON.stringify(kldivReport.order())")  # network order first
        assert json.loads(clip) == list(range(n))
        b.eval(click)
        up = json.loads(b.eval("JSON.stringify(kldivReport.order().map(i => "
                               "JSON.parse(document.getElementById('kldiv-data').textContent)"
                               ".tensors[i].clip))"))
        assert up == sorted(up) and up != list(reversed(sorted(up)))
        b.eval(click)
        down = json.loads(b.eval("JSON.stringify(kldivReport.order().map(i => "
                                 "JSON.parse(document.getElementById('kldiv-data').textContent)"
                                 ".tensors[i].clip))"))
        assert down == sorted(down, reverse=True)
        # the open tensors' plots travel with their rows
        assert b.eval("Array.from(document.querySelectorAll('#tensor-table tbody tr'))"
                      ".every((r, k, all) => !r.classList.contains('detail') || "
                      "all[k-1].getAttribute('data-i') === r.getAttribute('data-detail'))")
        # filtering by name
        b.eval("const f = document.getElementById('filter'); f.value = 'relu'; "
               "f.dispatchEvent(new Event('input'))")
        assert b.eval("document.querySelectorAll('#tensor-table tbody tr.row:not([hidden])')"
                      ".length") == 1
        assert b.console_errors() == []
        assert b.eval("kldivReport.errors") == []
    image = PIL.open(top).convert("RGB")
    pixels = np.asarray(image)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 800
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot is (nearly) blank"


def test_report_never_writes_over_an_input(
    inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    hist, cache = inputs
    before = cache.read_bytes()
    assert main(["report", str(hist), "--cache", str(cache), "--out", str(cache),
                 "--force"]) == 2
    assert "input" in capsys.readouterr().err
    assert cache.read_bytes() == before


def test_report_reads_evaluation_documents_with_per_output_metrics(
    inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    hist, _ = inputs
    ev = tmp_path / "eval.json"
    ev.write_text(json.dumps({"reports": [{
        "name": "INT8 Q/DQ (all)", "n": 64, "batches": 2,
        "outputs": {"prob": {"cosine": 0.99987, "sqnr_db": 31.25}},
        "classification": {"agreement": {"1": 0.984}, "fp32_accuracy": None,
                           "quantized_accuracy": None},
    }], "excluded": []}))
    html = write_report(hist, tmp_path / "r.html", evaluations=ev).read_text(encoding="utf-8")
    assert "INT8 Q/DQ (all)" in html and "top-1 98.40%" in html
    assert "prob: 0.999870, 31.2 dB" in html
