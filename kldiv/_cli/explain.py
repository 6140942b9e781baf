"""``kldiv explain``: one tensor's threshold, step by step, and what reproduces another tool's."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from ..defaults import DEFAULT_EXPLAIN_MAX_CHANGES, DEFAULT_PRESET

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add ``kldiv explain`` to the CLI."""
    p = subparsers.add_parser(
        "explain",
        help="how one tensor's threshold was chosen, and which options reproduce TensorRT's",
        description=(
            "Tell the story of one tensor's threshold from saved histograms: the histogram, the "
            "KL minimum, the threshold, its scale and hex, the share of values it clips, and the "
            "other presets' choices. With --cache (or --table): where that file's value falls "
            "on the histogram, and which option values of the entropy search (fields of "
            "kldiv.EntropyOptions, changed one at a time, then together) reproduce it: the "
            "smallest change, or that none does."
        ),
    )
    p.add_argument("histograms", metavar="HIST.npz", help="histogram file (--save-histograms)")
    p.add_argument("tensor", help="the tensor's name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cache", help="a TensorRT calibration cache holding the tensor")
    src.add_argument("--table", help="any table kldiv reads (format recognized from content)")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"the preset to explain and to count changes from (default "
                        f"{DEFAULT_PRESET})")
    p.add_argument("--max-changes", type=int, default=DEFAULT_EXPLAIN_MAX_CHANGES,
                   help="most option fields changed together (default "
                        f"{DEFAULT_EXPLAIN_MAX_CHANGES})")
    p.add_argument("--exhaustive", action="store_true",
                   help="also try smoothing=eps with empty=histogram (a pair no tool uses; "
                        "only the slow reference computes it: seconds)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw the story as a figure")
    p.add_argument("--force", action="store_true", help="overwrite --plot if it exists")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _to_dict(e: Any) -> dict[str, Any]:
    import dataclasses

    r = e.result
    out: dict[str, Any] = _jsonable({
        "tensor": e.name,
        "preset": e.preset,
        "range": e.histogram.amax,
        "bin": r.bin_index,
        "amax": r.amax,
        "scale_hex": r.scale_hex,
        "kl": r.divergence_at(r.bin_index),
        "clipped_share": e.clipped_share,
        "presets": {p: {"bin": x.bin_index, "amax": x.amax, "scale_hex": x.scale_hex}
                    for p, x in e.presets.items()},
        "value": None if e.value is None else dataclasses.asdict(e.value),
        "kl_at_value": e.kl_at_value,
        "single_changes": [dataclasses.asdict(v) for v in e.single],
        "smallest_changes": [dataclasses.asdict(v) for v in e.smallest],
        "max_changes": e.max_changes,
        "variants_searched": e.tried,
        "notes": e.notes,
    })
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kldiv explain``."""
    from .._io import check_writable
    from ..errors import PresetError
    from ..explain import abs_presets, explain_scale, find_tensor, load_histograms, load_tables

    if args.plot is not None:
        check_writable(args.plot, force=args.force, what="--plot",
                       inputs=[args.histograms, args.cache, args.table])
    if args.preset not in abs_presets():
        raise PresetError(f"--preset {args.preset!r}: choose one of {', '.join(abs_presets())}")
    if args.max_changes < 0:
        raise PresetError("--max-changes must be 0 or more")
    collector = load_histograms(args.histograms)
    names = collector.names
    name = find_tensor(names, args.tensor, args.histograms)
    value = None
    label = "value"
    table = None
    path = args.cache or args.table
    if path is not None:
        (label, table), = load_tables([path], names, trt_cache=args.cache is not None).items()
        name = find_tensor(list(table), name, path)
        value = table[name]
    e = explain_scale(collector[name], name=name, preset=args.preset, value=value,
                      value_label=label, max_changes=args.max_changes,
                      exhaustive=args.exhaustive)
    source = collector.meta.get("scale_sources", {}).get(name)
    if source is not None:
        e.notes.append(f"{name!r} is a pooling output of {source!r}: kldiv calibrate (tensorrt "
                       f"preset) gives it {source!r}'s threshold, as TensorRT does; explain "
                       f"{source!r} for that search")
    bound = collector.meta.get("activation_bounds", {}).get(name)
    if bound is not None:
        e.notes.append(f"the graph bounds {name!r} to [-{bound:g}, {bound:g}] (Clip): kldiv "
                       "calibrate (tensorrt preset) uses that bound as its threshold")
    if table is not None and value is not None:
        sources = collector.meta.get("scale_sources", {})
        same = [n for n in table if n != name and table.bits(n) == table.bits(name)
                and sources.get(n) != name]  # pooling outputs of this tensor are expected
        if same and not e.smallest and source is None:
            e.notes.append(
                f"{label} gives {name!r} the same scale as {', '.join(map(repr, same[:3]))}: "
                "TensorRT copies a pooling input's scale to its output, and a Clip (ReLU6) "
                "bound becomes the threshold"
            )
    if args.json:
        print(json.dumps(_to_dict(e), indent=2))
    else:
        print(e.to_text())
    if args.plot is not None:
        e.plot(args.plot, force=args.force)
        if not args.json:
            print(f"\nfigure written to {args.plot}")
    return 0
