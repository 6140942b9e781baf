"""Bounded memory: a model whose activations exceed max_memory runs in stages, each node
once, with the same histograms; a budget too small for one tensor is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from kldiv.cli import main
from kldiv.errors import ModelError
from kldiv.examples import lenet_calibration_data, lenet_model_path
from kldiv.pipeline import collect_histograms
from kldiv.runners import OnnxRuntimeRunner


@pytest.fixture(scope="module")
def data():
    return lenet_calibration_data()[:4]


@pytest.mark.parametrize("budget", [26_000, 40_000, 10**9])
def test_stages_give_the_same_histograms(data, budget):
    whole = collect_histograms(lenet_model_path(), data, max_memory=None)
    staged = collect_histograms(lenet_model_path(), data, max_memory=budget)
    assert staged.names == whole.names
    for n in whole:
        assert staged[n] == whole[n] and staged.absmax(n) == whole.absmax(n), n
    assert staged.meta["peak_memory_mb"] > 0


def test_each_part_fits_the_budget_and_every_tensor_comes_once(data):
    budget = 26_000
    runner = OnnxRuntimeRunner(lenet_model_path(), max_memory=budget)
    whole = OnnxRuntimeRunner(lenet_model_path())
    feed = runner.prepare(data[0])
    parts = []
    for acts in runner.run_parts(feed):
        parts.append({k: v.copy() for k, v in acts.items()})
        assert sum(v.nbytes for v in acts.values()) <= budget
    assert len(parts) > 2  # really staged
    plan = runner._plan_for(feed)
    assert plan.stages is not None and len(plan.stages) == len(parts)
    seen = [k for p in parts for k in p]
    assert len(seen) == len(set(seen))
    ref = whole.run(feed)
    assert set(seen) == set(ref)
    for p in parts:
        for k, v in p.items():
            assert np.array_equal(v, ref[k]), k
    # the yielded dicts are emptied once the next stage runs (nothing held across stages)
    gen = runner.run_parts(feed)
    first = next(gen)
    next(gen)
    assert first == {}


def test_budget_too_small_for_one_tensor(data, tmp_path, capsys):
    too_small = r"max_memory=1000 B is too small for even one tensor: .* alone needs 12.0 KiB"
    with pytest.raises(ModelError, match=too_small):
        collect_histograms(lenet_model_path(), data, max_memory=1000)
    out = tmp_path / "x.cache"
    code = main(["calibrate", str(lenet_model_path()), "--data", str(_npy(data, tmp_path)),
                 "-o", str(out), "--max-memory", "1K", "-q"])
    assert code == 2 and not out.exists()
    assert "too small for even one tensor" in capsys.readouterr().err


def test_cli_max_memory_same_cache_and_peak_in_summary(data, tmp_path, capsys):
    folder = _npy(data, tmp_path)
    model = str(lenet_model_path())
    assert main(["calibrate", model, "--data", str(folder), "-o", str(tmp_path / "a.cache"),
                 "--max-memory", "none"]) == 0
    assert "peak memory" in capsys.readouterr().out
    assert main(["calibrate", model, "--data", str(folder), "-o", str(tmp_path / "b.cache"),
                 "--max-memory", "26K", "-q"]) == 0
    assert (tmp_path / "a.cache").read_bytes() == (tmp_path / "b.cache").read_bytes()
    capsys.readouterr()
    assert main(["calibrate", model, "--data", str(folder), "-o", str(tmp_path / "c.cache"),
                 "--max-memory", "lots"]) == 2
    assert "expected a size such as 512M" in capsys.readouterr().err
    assert not (tmp_path / "c.cache").exists()


def _npy(data, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for i, b in enumerate(data):
        np.save(folder / f"b{i}.npy", b["input"])
    return folder
