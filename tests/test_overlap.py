"""The next batch's model run overlaps this batch's fills: same counts, same errors (with the
same batch), same progress calls, at most two batches of activations alive.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kldiv.errors import DataSourceError, ModelError, NonFiniteError  # noqa: E402
from kldiv.examples import lenet_calibration_data, lenet_model_path  # noqa: E402
from kldiv.pipeline import _activations, _Fingerprint, collect_histograms  # noqa: E402


def _same(a: Any, b: Any) -> None:
    assert a.names == b.names
    for name in a.names:
        assert a[name] == b[name], name  # exact: amax, bins and every count
        assert a.absmax(name) == b.absmax(name), name
    assert a.batches == b.batches
    keys = ("data_fingerprint", "batches", "samples")
    assert {k: a.meta[k] for k in keys} == {k: b.meta[k] for k in keys}
    assert a.graph == b.graph  # Clip bounds, pooling sources, value aliases


@pytest.mark.parametrize("policy", ["pow2", "append", "global"])
def test_counts_identical_with_and_without_overlap(policy: str) -> None:
    rng = np.random.default_rng(3)
    batches = lenet_calibration_data(batch_size=8)[:12]
    # growing scales: ranges grow mid-run, so batch order matters to the counts
    data = [{k: (v * (1.0 + 0.4 * i) + rng.normal(0, 0.01, v.shape)).astype(np.float32)
             for k, v in b.items()} for i, b in enumerate(batches)]
    calls: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    got = {
        overlap: collect_histograms(
            lenet_model_path(), data, range_policy=policy, overlap=overlap, max_memory=None,
            on_batch=lambda i, n, o=overlap: calls[o].append((i, n)),
        )
        for overlap in (True, False)
    }
    _same(got[True], got[False])
    assert calls[True] == calls[False] == [(i, 8 * (i + 1)) for i in range(12)]


def _log_model(fixed_reshape: bool = False) -> onnx.ModelProto:
    """x -> Log -> y (NaN for negative x); optionally a Reshape that only fits batch 2."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Log", ["x"], ["y"])]
    inits = []
    if fixed_reshape:
        inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["r", "shape"], ["z"]))
    graph = helper.make_graph(
        nodes, "log", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]
        + ([helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])]
           if fixed_reshape else []),
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def _positive(n: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), 2.0, np.float32)}


@pytest.mark.parametrize("overlap", [True, False])
def test_nan_names_tensor_and_batch(overlap: bool) -> None:
    data = [_positive(), _positive(), {"x": -np.ones((2, 3), np.float32)}, _positive()]
    with pytest.raises(NonFiniteError, match=r"tensor 'y', batch 2"):
        collect_histograms(_log_model(), data, overlap=overlap, max_memory=None)


@pytest.mark.parametrize("overlap", [True, False])
def test_errors_surface_in_batch_order(overlap: bool) -> None:
    model = _log_model(fixed_reshape=True)
    # batch 1 has NaN (found by its fill), batch 2 fails in onnxruntime (3 rows do not
    # reshape to 2x3): the NaN of batch 1 is the error, as when running one batch at a time
    data = [_positive(), {"x": -np.ones((2, 3), np.float32)}, _positive(3)]
    with pytest.raises(NonFiniteError, match="batch 1"):
        collect_histograms(model, data, overlap=overlap, max_memory=None)
    with pytest.raises(ModelError, match="batch 2"):
        collect_histograms(model, [_positive(), _positive(), _positive(3)], overlap=overlap, max_memory=None)
    # a batch that fails its checks (batch 2) after one whose fill fails (batch 1)
    data = [_positive(), {"x": -np.ones((2, 3), np.float32)}, {"x": np.ones((2, 4), np.float32)}]
    with pytest.raises(NonFiniteError, match="batch 1"):
        collect_histograms(model, data, overlap=overlap, max_memory=None)
    data = [_positive(), _positive(), {"x": np.ones((2, 4), np.float32)}]
    with pytest.raises(DataSourceError, match="batch 2"):
        collect_histograms(model, data, overlap=overlap, max_memory=None)


class _CountingRunner:
    """A stand-in runner whose activations are tracked: how many are alive at once."""

    def __init__(self) -> None:
        self.alive = 0
        self.most = 0
        self.lock = threading.Lock()

    def prepare(self, batch: Any, *, index: int) -> dict[str, np.ndarray]:
        return {"x": np.asarray(batch, np.float32)}

    def split(self, feed: dict[str, np.ndarray]) -> Any:
        yield feed

    def _gone(self) -> None:
        with self.lock:
            self.alive -= 1

    max_memory = None

    def run_parts(self, feed: dict[str, np.ndarray], *, index: int) -> Any:
        yield self.run(feed, index=index)

    def run(self, feed: dict[str, np.ndarray], *, index: int) -> dict[str, np.ndarray]:
        out = np.ones(1000, np.float32) * index
        with self.lock:
            self.alive += 1
            self.most = max(self.most, self.alive)
        weakref.finalize(out, self._gone)
        return {"t": out}


@pytest.mark.parametrize("overlap,most", [(True, 2), (False, 1)])
def test_at_most_two_batches_alive(overlap: bool, most: int) -> None:
    runner = _CountingRunner()
    fp = _Fingerprint()
    seen, progress = [], []
    for index, acts, samples in _activations(runner, [np.zeros(4)] * 20, None, fp, overlap):
        if acts is not None:
            seen.append((index, float(acts["t"][0])))
        if samples is not None:
            progress.append((index, samples))
        del acts
    assert seen == [(i, float(i)) for i in range(20)]
    assert progress == [(i, 4 * (i + 1)) for i in range(20)]  # 4 samples a batch
    assert runner.most == most


def test_stopping_early_leaves_no_thread() -> None:
    runner = _CountingRunner()
    gen = _activations(runner, [np.zeros(4)] * 5, None, None, True)
    next(gen)
    gen.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("kldiv-model-run")]


class _ThreadRecordingRunner:
    """Wraps a real runner; records which thread ran each batch."""

    def __init__(self, runner: Any) -> None:
        self.inner = runner
        self.threads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, feed: dict[str, np.ndarray], *, index: int = 0) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        return self.inner.run(feed, index=index)

    def run_parts(self, feed: dict[str, np.ndarray], *, index: int = 0) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.inner.run_parts(feed, index=index)


@pytest.mark.parametrize("room,overlapped", [(4.0, True), (1.5, False)])
def test_overlap_under_a_budget_only_where_two_batches_fit(room: float, overlapped: bool) -> None:
    """Under a memory budget the next batch runs ahead only when two batches' activations fit
    it; otherwise every batch runs in turn on the calling thread. The counts are those of the
    serial run either way.
    """
    from kldiv.runners import OnnxRuntimeRunner

    data = lenet_calibration_data(batch_size=8)[:4]
    probe = OnnxRuntimeRunner(lenet_model_path(), fetch_aliases=False)
    feed = probe.prepare(data[0])
    sizes = probe.activation_sizes(feed)
    assert sizes is not None
    one = sum(sizes.values()) + sum(a.nbytes for a in feed.values())
    runner = _ThreadRecordingRunner(OnnxRuntimeRunner(
        lenet_model_path(), fetch_aliases=False, max_memory=int(one * room)))
    assert runner.fits_twice(feed) is overlapped
    for _, acts, _ in _activations(runner, data, None, None, True):
        del acts
    ahead = [t.startswith("kldiv-model-run") for t in runner.threads]
    assert ahead == [overlapped] * len(data)
    budgeted = collect_histograms(lenet_model_path(), data, max_memory=int(one * room))
    _same(budgeted, collect_histograms(lenet_model_path(), data, overlap=False, max_memory=None))
