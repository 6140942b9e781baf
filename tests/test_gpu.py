"""GPU fill: exactly the NumPy reference's counts for CUDA arrays (CuPy, torch, DLPack).

Marked ``gpu``: these run on a machine with a CUDA GPU and CuPy (the device machine); on
CPU-only CI they skip, saying so.
"""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.collect import HistogramCollector
from kldiv.errors import HistogramError, NonFiniteError
from kldiv.histogram import ActivationHistogram, FillStats, bin_edges, fill_counts_reference
from kldiv.shard import collect_in_shards

cp = pytest.importorskip("cupy", reason="the GPU fill needs CuPy and a CUDA GPU")
try:
    _HAS_GPU = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 - CuPy without a driver
    _HAS_GPU = False

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _HAS_GPU, reason="no CUDA GPU visible to CuPy"),
]

from kldiv import gpu  # noqa: E402


def _same_stats(result, want):
    got = FillStats(*result)
    assert np.array_equal(got.counts, want.counts), np.nonzero(got.counts != want.counts)
    assert got.n_nonfinite == want.n_nonfinite
    assert got.n_over == want.n_over
    assert got.max_over == want.max_over
    assert got.max_abs == want.max_abs


def _data(rng, dtype, n):
    x = rng.standard_normal(n) * rng.choice([1e-3, 1.0, 30.0])
    x[rng.integers(0, n, n // 10)] = 0.0
    x = x.astype(dtype)
    return x


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("num_bins", [1, 7, 2048, 5000, 1 << 16])
def test_equals_the_reference(dtype, num_bins):
    rng = np.random.default_rng(num_bins)
    for n in [1, 5, 1000, 1 << 20, (1 << 20) + 3]:
        x = _data(rng, dtype, n)
        amax = float(np.abs(x.astype(np.float64)).max()) or 1.0
        for a, clip in [(amax, False), (amax * 0.5, True), (amax * 0.25, False)]:
            _same_stats(gpu.fill_counts(cp.asarray(x), a, num_bins, clip=clip),
                        fill_counts_reference(x, a, num_bins, clip=clip))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_values_on_every_edge_and_nonfinite(dtype):
    for amax in [1.0, 6.0, 0.1, 3.0e-3, 1000.0 if dtype == np.float16 else 12345.678]:
        edges = bin_edges(amax, 2048)
        x = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf),
                            -edges, [np.nan, np.inf, -np.inf, 0.0, -0.0]]).astype(dtype)
        _same_stats(gpu.fill_counts(cp.asarray(x), amax), fill_counts_reference(x, amax))
    h16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # every float16 pattern
    _same_stats(gpu.fill_counts(cp.asarray(h16), 65504.0), fill_counts_reference(h16, 65504.0))
    _same_stats(gpu.fill_counts(cp.asarray(h16), 1.0, clip=True),
                fill_counts_reference(h16, 1.0, clip=True))


def test_strided_misaligned_and_zero_range():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 301)).astype(np.float32)
    d = cp.asarray(x)
    for view, host in [(d[:, ::3], x[:, ::3]), (d.ravel()[1:], x.ravel()[1:]),
                       (d.T, x.T)]:
        _same_stats(gpu.fill_counts(view, 4.0, 64), fill_counts_reference(host, 4.0, 64))
    z = np.zeros(1000, np.float32)
    z[3] = 1.0
    _same_stats(gpu.fill_counts(cp.asarray(z), 0.0, 16), fill_counts_reference(z, 0.0, 16))
    assert gpu.absmax_stats(cp.asarray(np.array([1.0, np.nan, -7.5], np.float32))) == (7.5, 1)


def test_histogram_and_collector_take_device_arrays():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    batches = []
    for i in range(6):
        b = {"a": (rng.standard_normal((4, 50)) * (1, 3, 1, 9, 1, 1)[i]).astype(np.float32),
             "h": np.maximum(rng.standard_normal(40), 0).astype(np.float16),
             "z": np.zeros(7, np.float64)}
        b["a"].reshape(-1)[:3] = np.abs(b["a"]).max()  # on the range's edge
        batches.append(b)
    host = HistogramCollector(128)
    dev = HistogramCollector(128)
    tor = HistogramCollector(128)
    for i, b in enumerate(batches):
        host.observe(b, batch=i)
        dev.observe({k: cp.asarray(v) for k, v in b.items()}, batch=i)
        tor.observe({k: torch.from_numpy(v).cuda() for k, v in b.items()}, batch=i)
    for n in host:
        assert dev[n] == host[n] and tor[n] == host[n], n
        assert dev.absmax(n) == host.absmax(n) == tor.absmax(n)
    h = ActivationHistogram.from_values(cp.asarray(batches[0]["a"]), num_bins=64, growth="pow2")
    h.fill(cp.asarray(batches[3]["a"]))
    ref = ActivationHistogram.from_values(batches[0]["a"], num_bins=64, growth="pow2")
    ref.fill(batches[3]["a"])
    assert h == ref
    # sharded, on device arrays: the clamp counts are taken on the GPU too
    dev_batches = [{k: cp.asarray(v) for k, v in b.items()} for b in batches]
    merged = collect_in_shards(dev_batches, [2, 4], num_bins=128)
    for n in host:
        assert merged[n] == host[n], n


def test_unsupported_dtypes_and_nonfinite_errors():
    torch = pytest.importorskip("torch")
    with pytest.raises(HistogramError, match="dtype int32.*float16, float32 or float64"):
        gpu.fill_counts(cp.arange(10, dtype=cp.int32), 4.0)
    with pytest.raises(HistogramError, match="bfloat16"):
        HistogramCollector(16).observe({"t": torch.ones(8, device="cuda", dtype=torch.bfloat16)})
    bad = cp.asarray(np.array([1.0, np.nan, 2.0], np.float32))
    with pytest.raises(NonFiniteError, match=r"tensor 't', batch 0.*NaN: 1"):
        HistogramCollector(16).observe({"t": bad})


def test_pytorch_forward_hooks_recipe():
    """The recipe of kldiv.gpu's docstring: hooks hand CUDA outputs to the collector."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU()).cuda()
    collector = HistogramCollector()
    reference = HistogramCollector()
    acts: dict = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: acts.__setitem__(name, out))
             for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU))]
    with torch.no_grad():
        for i in range(4):
            batch = torch.randn(2, 3, 16, 16) * (1 + i)
            model(batch.cuda())
            collector.observe({k: v.detach() for k, v in acts.items()}, batch=i)
            reference.observe({k: v.detach().cpu().numpy() for k, v in acts.items()}, batch=i)
            acts.clear()
    for h in hooks:
        h.remove()
    assert collector.names == ["0", "1", "2", "3"]
    for n in reference:
        assert collector[n] == reference[n], n
