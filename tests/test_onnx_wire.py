"""The runner reads model files without onnx (kldiv._onnx_wire) and finds exactly what the
onnx path finds: the same tensors, Clip bounds, pooling sources, aliases and activations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from kldiv import _onnx_wire as wire  # noqa: E402
from kldiv.errors import ModelError  # noqa: E402
from kldiv.runners import OnnxRuntimeRunner  # noqa: E402
from tests import test_activation_bounds as tab  # noqa: E402
from tests import test_pooling_inherits as tpi  # noqa: E402
from tests import test_runners as trn  # noqa: E402
from tests import test_value_aliases as tva  # noqa: E402
from tests.conftest import fixtures_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _clip_variants() -> onnx.ModelProto:
    """Clip limits in every encoding onnx allows: raw_data, float_data, float16 bits,
    double, a Constant's tensor, value_float; and a limit computed at run time.
    """
    def init(arr: np.ndarray, name: str, raw: bool) -> onnx.TensorProto:
        if raw:
            return numpy_helper.from_array(arr, name)
        return helper.make_tensor(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape,
                                  arr.ravel().tolist())

    inits = [
        init(np.array(-1.5, np.float32), "lo_raw", True),
        init(np.array(6.0, np.float32), "hi_raw", True),
        init(np.array(-3.25, np.float32), "lo_typed", False),
        init(np.array([4.0], np.float32), "hi_typed", False),
        numpy_helper.from_array(np.array(0.0, np.float16), "lo_h"),
        helper.make_tensor("hi_h", TensorProto.FLOAT16, [], [2.5]),  # bits in int32_data
        init(np.array(-7.0, np.float64), "lo_d", False),
        numpy_helper.from_array(np.array(8.5, np.float64), "hi_d"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Clip", ["r", "lo_raw", "hi_raw"], ["c_raw"]),
        helper.make_node("Clip", ["r", "lo_typed", "hi_typed"], ["c_typed"]),
        helper.make_node("Cast", ["r"], ["rh"], to=TensorProto.FLOAT16),
        helper.make_node("Clip", ["rh", "lo_h", "hi_h"], ["c_half"]),
        helper.make_node("Cast", ["r"], ["rd"], to=TensorProto.DOUBLE),
        helper.make_node("Clip", ["rd", "lo_d", "hi_d"], ["c_double"]),
        helper.make_node("Constant", [], ["k_lo"],
                         value=numpy_helper.from_array(np.array(-2.0, np.float32), "k")),
        helper.make_node("Constant", [], ["k_hi"], value_float=3.0),
        helper.make_node("Clip", ["r", "k_lo", "k_hi"], ["c_const"]),
        helper.make_node("Clip", ["r", "", "hi_raw"], ["c_upper"]),
        helper.make_node("ReduceMax", ["r"], ["m"], keepdims=0),
        helper.make_node("Clip", ["r", "lo_raw", "m"], ["c_dyn"]),
        helper.make_node("MaxPool", ["c_raw"], ["pool"], kernel_shape=[2]),
        helper.make_node("Shape", ["pool"], ["shape"]),  # int64, type not declared
        helper.make_node("Reshape", ["pool", "shape"], ["pool_r"]),
        helper.make_node("Reshape", ["shape", "one"], ["shape_r"]),  # an int alias
        helper.make_node("Cast", ["shape_r"], ["shape_f"], to=TensorProto.FLOAT),
    ]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "one"))
    graph = helper.make_graph(
        nodes, "clips", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8])],
        [onnx.ValueInfoProto(name=o)  # untyped, as many exporters leave them
         for o in ("c_typed", "c_half", "c_double", "c_const", "c_upper", "c_dyn", "pool_r",
                   "shape_f")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    return model


def _real_models() -> list[Path]:
    paths = [REPO / "kldiv" / "examples" / "lenet5_digits.onnx"]
    paths += sorted(fixtures_dir().glob("conformance/**/*.onnx"))  # none where absent
    try:
        import rapidocr_onnxruntime  # type: ignore[import-untyped]

        paths += sorted((Path(rapidocr_onnxruntime.__file__).parent / "models").glob("*.onnx"))
    except ImportError:
        pass
    return [p for p in paths if p.is_file()]


SYNTHETIC = {
    "mlp-11": lambda: trn.mlp(11),
    "mlp-13": lambda: trn.mlp(13),
    "mlp-old-style-inputs": lambda: trn.mlp(11, old_style_inputs=True),
    "clip-9": lambda: tab._model(9),
    "clip-13": lambda: tab._model(13),
    "clip-variants": _clip_variants,
    "pooling": tpi._model,
    "aliases": tva._model,
}


def _same_runner(path: Path, proto: onnx.ModelProto, fetch_aliases: bool) -> None:
    fast = OnnxRuntimeRunner(path, fetch_aliases=fetch_aliases)
    slow = OnnxRuntimeRunner(proto, fetch_aliases=fetch_aliases)  # onnx's path
    assert isinstance(wire.read_model(path.read_bytes()), wire.Model)
    for attr in ("tensor_names", "network_order", "value_aliases", "activation_bounds",
                 "scale_sources", "input_specs", "opset", "model_sha256"):
        got, want = getattr(fast, attr), getattr(slow, attr)
        if attr == "network_order":  # onnx's path lists unknown-typed ints until a batch runs
            want = [n for n in want if n in set(got) or n in slow.tensor_names]
        if attr == "value_aliases":
            want = {n: s for n, s in want.items() if n in set(fast.network_order)}
        assert got == want, attr
    feed = {}
    rng = np.random.default_rng(0)
    for spec in fast.input_specs:
        shape = [d if isinstance(d, int) and d > 0 else 2 for d in spec.shape]
        if spec.dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[spec.name] = np.ones(shape, spec.dtype)
    for chunk in fast.split(fast.prepare(feed)):
        a = fast.run(chunk)
        b = slow.run(chunk)
        assert list(a) == list(b)
        assert list(a) == fast.tensor_names == slow.tensor_names
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        break


@pytest.mark.parametrize("fetch_aliases", [True, False])
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_wire_reader_finds_what_onnx_finds(tmp_path: Path, name: str, fetch_aliases: bool):
    proto = SYNTHETIC[name]()
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    _same_runner(path, proto, fetch_aliases)


@pytest.mark.parametrize("path", _real_models(), ids=lambda p: p.name)
def test_wire_reader_on_real_models(path: Path):
    _same_runner(path, onnx.load(str(path)), fetch_aliases=False)


def test_clip_variants_bounds_and_dropped_ints(tmp_path: Path):
    path = tmp_path / "c.onnx"
    onnx.save(_clip_variants(), str(path))
    runner = OnnxRuntimeRunner(path)
    assert runner.activation_bounds == {
        "c_raw": 6.0, "c_typed": 4.0, "c_half": 2.5, "c_double": 8.5, "c_const": 3.0,
    }  # c_upper: no lower limit, unbounded below
    assert runner.scale_sources == {"pool": "c_raw"}
    assert "shape" not in runner.tensor_names and "shape_r" not in runner.value_aliases
    assert runner.value_aliases == {"pool_r": "pool"}
    assert "shape_f" in runner.tensor_names


@pytest.mark.parametrize("arr", [
    np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5, np.array(-0.0, np.float64),
    np.array([1, -2, 3], np.int64), np.array([7, 200], np.uint8), np.array([True, False]),
    np.array([65504, -1e-7], np.float16), np.array([-5, 2**31 - 1], np.int32),
])
@pytest.mark.parametrize("raw", [True, False])
def test_tensor_values_decode_like_numpy_helper(arr: np.ndarray, raw: bool):
    if raw:
        t = numpy_helper.from_array(arr, "t")
    else:
        t = helper.make_tensor("t", helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape,
                               arr.ravel().tolist())
    data = t.SerializeToString()
    got = wire.tensor_to_array(wire.Tensor(data, (0, len(data))))
    want = numpy_helper.to_array(t)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_files_onnx_must_read_take_the_onnx_path(tmp_path: Path):
    """External data, a truncated file, junk: read by onnx (the usual results and errors)."""
    proto = tab._model(13)
    data = proto.SerializeToString()
    with pytest.raises(wire.WireFormatError):
        wire.read_model(data[: len(data) // 2])
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        OnnxRuntimeRunner(cut)
    ext = tmp_path / "ext.onnx"
    onnx.save(tab._model(13), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    with pytest.raises(wire.WireFormatError, match="external"):
        wire.read_model(ext.read_bytes())
    runner = OnnxRuntimeRunner(ext)  # onnx loads the external weights
    assert runner.activation_bounds == {"relu6": 6.0}
    x = np.ones((1, 1, 8, 8), np.float32)
    np.testing.assert_array_equal(runner.run({"x": x})["conv"],
                                  OnnxRuntimeRunner(proto).run({"x": x})["conv"])


@pytest.mark.parametrize("max_memory", [None, "default"])
def test_calibrating_a_model_file_does_not_import_onnx(tmp_path: Path, max_memory: str | None):
    """The point of the wire reader: a calibration of a file never imports onnx, with or
    without the memory budget when the batch fits it (sized from onnxruntime's own shapes).
    """
    budget = "" if max_memory == "default" else ", max_memory=None"
    code = (
        "import sys, numpy as np, kldiv\n"
        "from kldiv.examples import lenet_model_path, lenet_calibration_data\n"
        "t = kldiv.calibrate(lenet_model_path(), lenet_calibration_data(), max_batches=2"
        f"{budget}).table\n"
        "assert len(t) > 5, len(t)\n"
        "print(sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _chain(reshape: bool = False) -> onnx.ModelProto:
    """x [N, 64] -> Relu -> Mul 2 -> Relu (-> Reshape [-1, 4]: a dim no input names)."""
    nodes = [helper.make_node("Relu", ["x"], ["r1"]),
             helper.make_node("Mul", ["r1", "two"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    out = "y"
    if reshape:
        nodes.append(helper.make_node("Reshape", ["y", "shape"], ["z"]))
        nodes.append(helper.make_node("Sigmoid", ["z"], ["s"]))
        inits.append(numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"))
        out = "s"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


def _feeds(n: int = 3, batch: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((batch, 64)).astype(np.float32)} for _ in range(n)]


def test_a_budget_sizes_batches_from_onnxruntime_shapes(tmp_path: Path):
    """Dims that are numbers or an input's named dim give every tensor's bytes for a feed:
    a batch that fits runs whole without onnx's proto; one that does not is planned by onnx
    (parsed from the file then) and runs in stages with the same activations.
    """
    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(path))
    runner = OnnxRuntimeRunner(path, max_memory=1 << 20)
    assert runner._proto is None and runner._proto_loader is None
    feed = runner.prepare(_feeds()[0])
    sizes = runner.activation_sizes(feed)
    acts = runner.run(feed)
    assert sizes == {n: int(acts[n].nbytes) for n in sizes} and set(sizes) == {"r1", "m", "y"}
    plan = runner._plan_for(feed)
    assert plan.stages is None and plan.sized_by_session and runner._proto is None

    tight = OnnxRuntimeRunner(path, max_memory=2 * 4 * 64 * 4)  # the feed and one tensor
    parts = [dict(p) for p in tight.run_parts(tight.prepare(feed))]  # emptied when handed on
    assert len(parts) > 1 and isinstance(tight._proto, onnx.ModelProto)
    assert not tight._plan_for(feed).sized_by_session
    for n, arr in acts.items():
        got = [p[n] for p in parts if n in p]
        assert len(got) == 1, n
        np.testing.assert_array_equal(got[0], arr)


def test_unknown_dims_parse_the_file_with_onnx_in_the_background(tmp_path: Path):
    """A dim onnxruntime cannot name from the inputs (after a Reshape to -1) leaves the
    sizes to onnx's shape inference: the file is parsed by onnx in a thread at once.
    """
    path = tmp_path / "reshape.onnx"
    onnx.save(_chain(reshape=True), str(path))
    runner = OnnxRuntimeRunner(path, max_memory=1 << 20)
    assert runner._proto_loader is not None
    feed = runner.prepare(_feeds()[0])
    assert runner.activation_sizes(feed) is None
    plan = runner._plan_for(feed)
    assert plan.stages is None and not plan.sized_by_session
    assert isinstance(runner._proto, onnx.ModelProto)
    assert OnnxRuntimeRunner(path)._proto_loader is None  # no budget: onnx is not needed


def test_a_batch_larger_than_its_sizes_said_moves_to_stages(tmp_path: Path, caplog):
    """Should a batch hold more than the sizes from onnxruntime said (a declared shape that is
    wrong), it is still handed out whole, with a warning, and its shape runs in stages from
    then on: the same histograms as a run without a budget.
    """
    from kldiv.collect import HistogramCollector

    path = tmp_path / "chain.onnx"
    onnx.save(_chain(), str(path))
    budget = 4 * 64 * 4 * 3 + 64  # the feed and two of the three tensors of a batch of 4
    runner = OnnxRuntimeRunner(path, max_memory=budget)
    runner._output_shapes["m"] = ((1,), 4)  # understated: the batch seems to fit
    staged, whole = HistogramCollector(), HistogramCollector()
    with caplog.at_level("WARNING", logger="kldiv"):
        for k, feed in enumerate(_feeds()):
            parts = [dict(p) for p in runner.run_parts(runner.prepare(feed), index=k)]
            assert (len(parts) == 1) == (k == 0)
            for p in parts:
                staged.observe(p, batch=k)
    assert "above max_memory" in caplog.text
    free = OnnxRuntimeRunner(path)
    for k, feed in enumerate(_feeds()):
        whole.observe(free.run(free.prepare(feed)), batch=k)
    assert staged.names == whole.names
    for n in whole.names:
        np.testing.assert_array_equal(staged[n].counts, whole[n].counts)


@pytest.mark.parametrize("name", [*SYNTHETIC, "real"])
def test_input_shapes_read_without_onnx_match_onnx(tmp_path: Path, name: str):
    """``kldiv calibrate`` finds the inputs' batch axes from the file's graph inputs read by
    the wire reader: the same shapes (numbers, named dims, unknown dims) as onnx's.
    """
    from kldiv._cli._data_args import _inputs_without_onnx, model_batch_axes

    if name == "real":
        paths = _real_models()
    else:
        paths = [tmp_path / f"{name}.onnx"]
        onnx.save(SYNTHETIC[name](), str(paths[0]))
    for path in paths:
        proto = onnx.load(str(path), load_external_data=False)
        inits = {t.name for t in proto.graph.initializer}
        expected = {
            vi.name: tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in vi.type.tensor_type.shape.dim)
            for vi in proto.graph.input if vi.name not in inits
        }
        assert _inputs_without_onnx(path) == expected, path
        assert model_batch_axes(path) == model_batch_axes(proto), path


def test_the_calibrate_command_does_not_import_onnx(tmp_path: Path):
    """``kldiv calibrate`` of a model file, default budget: neither onnx nor ml_dtypes."""
    code = (
        "import sys\n"
        "from kldiv.cli import main\n"
        "from kldiv.examples import lenet_model_path\n"
        "from pathlib import Path\n"
        "data = Path(lenet_model_path()).parent / 'digits_calibration.npz'\n"
        f"rc = main(['calibrate', str(lenet_model_path()), '--data', str(data), '--out', "
        f"{str(tmp_path / 'x.cache')!r}, '--max-batches', '2', '-q'])\n"
        "print(rc, sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "x.cache").is_file()
