"""The data options are one group, shared by calibrate, evaluate and kldiv-trt crosscheck."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from kldiv._cli._data_args import preprocess_from_args, source_from_args
from kldiv.cli import build_parser
from kldiv.errors import DataSourceError
from trt_backend.cli import build_parser as trt_parser

DATA_OPTIONS = {
    "--data", "--data-loader-script", "--batch-size", "--max-batches", "--batch-axis",
    "--input-name", "--preprocess", "--resize", "--crop", "--letterbox", "--pad-to",
    "--pad-value", "--pad-position", "--color", "--scale", "--mean", "--std", "--layout",
}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize("which", ["calibrate", "evaluate", "crosscheck"])
def test_every_command_has_the_same_data_options(which):
    parser = trt_parser() if which == "crosscheck" else build_parser()
    sub = _subparser(parser, which)
    assert DATA_OPTIONS <= _options(sub)
    args = sub.parse_args(["m.onnx", "--data", "d", "--letterbox", "48,320", "--pad-value",
                           "127.5", "--pad-position", "top-left", "--scale", "0.5",
                           "--batch-axis", "h=none", "--batch-axis", "state=1",
                           *(["--out", "x"] if which == "calibrate" else []),
                           *(["--out-dir", "x"] if which == "crosscheck" else [])])
    pre = preprocess_from_args(args)
    assert pre.letterbox == (48, 320) and pre.pad_value == (127.5,)
    assert pre.pad_position == "top-left" and pre.scale == 0.5
    assert args.batch_axis == ["h=none", "state=1"]


def test_source_from_args(tmp_path):
    sub = _subparser(build_parser(), "evaluate")
    for i in range(3):
        np.save(tmp_path / f"b{i}.npy", np.full((4, 2), i, np.float32))
    args = sub.parse_args(["m.onnx", "--data", str(tmp_path), "--batch-size", "3",
                           "--max-batches", "2"])
    batches = list(source_from_args(args))
    assert [b.shape for b in batches] == [(3, 2), (3, 2)]
    both = sub.parse_args(["m.onnx", "--data", str(tmp_path), "--data-loader-script", "x.py"])
    with pytest.raises(DataSourceError, match="not both"):
        source_from_args(both)
    with pytest.raises(SystemExit):
        sub.parse_args(["m.onnx", "--batch-size", "0"])
