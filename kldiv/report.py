"""``kldiv report``: one self-contained HTML file that shows how every scale was chosen.

:func:`build_report` turns saved histograms (and optionally the model, calibration tables or
TensorRT caches, and ``kldiv evaluate --json`` results) into the report's data;
:func:`render_html` writes it as a single HTML file that needs nothing but a browser (no
network: the styles, the script and the data are inline; plots are drawn as SVG by the inline
script when a tensor's row is opened, so hundreds of tensors stay quick).

Per tensor the data holds the numbers (every preset's bin, threshold, scale hex, divergence and
clipped share; each table's value placed on the histogram) and, compactly encoded, the
histogram (summed to at most :data:`PLOT_POINTS` points), the divergence curve (the minimum of
each group of candidates) and ``P`` and ``Q`` at the chosen candidate. The encoding is 16 bits
per point on a log scale (0 = zero, 65535 = infinite): plots only, never the numbers shown.

Examples
--------
>>> from kldiv.report import write_report
>>> write_report("h.npz", "report.html", caches=["trt.cache"])   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import CLIP_WARN_FRACTION, DEFAULT_METHOD, DEFAULT_PRESET
from .entropy import (
    PRESETS,
    EntropyOptions,
    apply_zero_policy,
    resolve_options,
    search_threshold,
    window,
)
from .errors import DataSourceError, PresetError
from .explain import abs_presets, load_histograms, load_tables, place_value
from .graph import GraphFacts
from .scales import CalibrationTable, ThresholdResult, clipped_fraction, scale_to_bits

__all__ = ["PLOT_POINTS", "build_report", "render_html", "write_report"]

logger = logging.getLogger(__name__)

#: Most points per plotted array in the report (histograms are summed, curves keep each
#: group's minimum).
PLOT_POINTS = 512

_U16_MAX = 65535
#: Flagged tensors listed in the summary (the table below filters to all of them).
_FLAGGED_ROWS = 25


# ------------------------------------------------------------------------- encoding for plots
def _pack(values: np.ndarray) -> list[Any]:
    """``[lo, hi, base64]``: 16-bit codes of log10(values); 0 = zero (or NaN), 65535 = inf."""
    v = np.asarray(values, dtype=np.float64)
    codes = np.zeros(v.size, dtype="<u2")
    inf = np.isinf(v)
    pos = np.isfinite(v) & (v > 0)
    lo = hi = 0.0
    if pos.any():
        logs = np.log10(v[pos])
        lo, hi = float(logs.min()), float(logs.max())
        span = hi - lo if hi > lo else 1.0
        codes[pos] = 1 + np.rint((logs - lo) / span * (_U16_MAX - 2)).astype(np.int64)
    codes[inf] = _U16_MAX
    return [round(lo, 6), round(hi, 6), base64.b64encode(codes.tobytes()).decode("ascii")]


def _group(n: int) -> int:
    return max(1, math.ceil(n / PLOT_POINTS))


def _summed(values: np.ndarray) -> tuple[np.ndarray, int]:
    k = _group(values.size)
    pad = (-values.size) % k
    v = np.concatenate([values.astype(np.float64), np.zeros(pad)])
    return v.reshape(-1, k).sum(axis=1), k


def _curve_minima(div: np.ndarray) -> tuple[np.ndarray, int]:
    k = _group(div.size)
    pad = (-div.size) % k
    d = np.where(np.isnan(div), np.inf, div)
    d = np.concatenate([d, np.full(pad, np.inf)])
    return d.reshape(-1, k).min(axis=1), k


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _kl_at(r: ThresholdResult | None, i: int | None) -> float | None:
    """``r.divergence_at(i)`` when finite; ``None`` without a result or candidate ``i``."""
    if r is None or i is None:
        return None
    try:
        return _finite(r.divergence_at(i))
    except ValueError:  # not a candidate of the search
        return None


def _nonempty_in_window(counts: np.ndarray, r: ThresholdResult) -> int:
    """Non-empty bins of the window ``r`` chose, under the options ``r`` was searched with.

    An entropy result's window (:func:`kldiv.entropy.window`) of the histogram after its own
    zero rule; another method's bins below its threshold. The report flags fewer than two
    whatever the search's own degenerate rule (``min_nonempty_bins``): P and Q are then one
    point, KL = 0, a minimum only some presets refuse.
    """
    if r.bin_index is None:
        return 0
    if r.method != "entropy":
        return int(np.count_nonzero(counts[: r.bin_index]))
    opts = EntropyOptions(**r.options)
    lo, hi = window(counts.size, r.bin_index, opts)
    return int(np.count_nonzero(apply_zero_policy(counts, opts)[lo:hi]))


def _changes(preset: str, method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options kldiv's thresholds were made with that differ from ``preset``'s own."""
    if method != "entropy":
        return dict(options)
    base = PRESETS[preset].as_dict()
    return {k: v for k, v in resolve_options(preset, **options).as_dict().items()
            if v != base[k]}


# ------------------------------------------------------------------------- the report's data
def _op_types(model: Any) -> dict[str, str]:
    return {out: node.op_type for node in model.graph.node for out in node.output if out}


def _evaluations(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``kldiv evaluate --json`` output as a list of reports.

    Reads a list of reports, one report, or a document holding them under ``"reports"``;
    classification figures at the top of a report or under ``"classification"``, per-output
    metrics under ``"outputs"``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataSourceError(f"{p}: evaluation results not found") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataSourceError(
            f"{p}: not JSON ({exc}); give what `kldiv evaluate --json` prints"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("reports"), list):
        data = data["reports"]
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if not (isinstance(item, dict) and {"name", "n"} <= set(item)):
            raise DataSourceError(
                f"{p}: expected the JSON `kldiv evaluate --json` prints (reports with name, n, "
                "agreement or classification ...)"
            )
        nested = item.get("classification")
        cls: dict[str, Any] = nested if isinstance(nested, dict) else item
        given = item.get("outputs")
        outputs: dict[str, Any] = given if isinstance(given, dict) else {}
        out.append({
            "name": str(item["name"]),
            "n": item["n"],
            "agreement": cls.get("agreement"),
            "fp32_accuracy": cls.get("fp32_accuracy"),
            "quantized_accuracy": cls.get("quantized_accuracy"),
            "outputs": {str(k): {"cosine": v.get("cosine"), "sqnr_db": v.get("sqnr_db")}
                        for k, v in outputs.items() if isinstance(v, dict)},
        })
    return out


def build_report(
    collector: Any,
    *,
    preset: str = DEFAULT_PRESET,
    method: str = DEFAULT_METHOD,
    tables: Mapping[str, CalibrationTable] | None = None,
    evaluations: Sequence[Mapping[str, Any]] | None = None,
    model: Any = None,
    title: str = "histograms",
    caches: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's data: a JSON-ready dict (summary, one entry per tensor, plot arrays).

    Parameters
    ----------
    collector : HistogramCollector
        The histograms (``HistogramCollector.load``).
    preset : str, default DEFAULT_PRESET
        The preset kldiv's thresholds come from (a preset of ``|x|`` histograms); every other
        such preset is shown beside it.
    method : str, default DEFAULT_METHOD
        kldiv's threshold method (as ``kldiv calibrate --method``).
    tables : mapping of str to CalibrationTable, optional
        Tables or caches to place on the histograms, by label.
    evaluations : sequence of dict, optional
        ``kldiv evaluate --json`` results to show in the summary.
    model : path-like or onnx.ModelProto, optional
        The model: operator types, and the graph's rules (Clip bounds, pooling outputs) when
        the histogram file lacks them.
    title : str, optional
        What the report is about (the histogram file's name).
    caches : sequence of str, optional
        The labels in ``tables`` that are TensorRT caches (the rest are other tables).
    progress : callable, optional
        Called with the number of tensors done.
    options : mapping, optional
        Options of kldiv's preset / method, as for :func:`kldiv.calibrate` (e.g.
        ``{"zeros": "keep"}``): kldiv's thresholds, KL curve and flags are those of the search
        they make, the summary lists them (``summary["options"]``: those that differ from the
        preset), and the preset's own search is shown beside it.

    Returns
    -------
    dict
    """
    from .pipeline import choose_thresholds

    if preset not in abs_presets():
        raise PresetError(
            f"preset {preset!r} cannot be shown on histograms of |x|; choose one of "
            f"{', '.join(abs_presets())}"
        )
    tables = dict(tables or {})
    names = list(collector.names)
    graph: GraphFacts | None = None  # None: the facts saved with the histograms
    ops: dict[str, str] = {}
    model_info: dict[str, Any] | None = None
    if model is not None:
        from .runners import calibration_tensor_names, load_model

        proto, label, sha = load_model(model)
        ops = _op_types(proto)
        known = collector.meta.get("model_sha256")
        model_info = {"label": label, "sha256": sha,
                      "matches": None if known is None else known == sha}
        if not collector.graph:  # histograms saved without the graph's facts: read them here
            inputs, outputs, _ = calibration_tensor_names(proto)
            graph = GraphFacts.from_model(proto, [*inputs, *outputs]).restrict(names)
    opts = dict(options or {})
    finals = choose_thresholds(collector, graph, preset=preset, method=method, **opts)
    changes = _changes(preset, method, opts)
    custom = method == "entropy" and bool(changes)  # kldiv's search is not the preset's
    ours = resolve_options(preset, **opts) if custom else None
    presets = abs_presets()
    tensors: list[dict[str, Any]] = []
    plots: list[dict[str, Any]] = []
    coverage: dict[str, dict[str, Any]] = {
        label: {"common": 0, "same_bin": 0, "bit_identical": 0, "deltas": []} for label in tables
    }
    for t, name in enumerate(names):
        hist = collector[name]
        counts = np.asarray(hist.counts)
        R = float(hist.amax)
        total = int(counts.sum())
        width = R / counts.size if R > 0 else math.nan
        final = finals[name]
        searches: dict[str, ThresholdResult] = {}
        base: ThresholdResult | None = None  # kldiv's search: its KL curve is plotted
        if R > 0 and total > 0:
            # each search once: kldiv's own (choose_thresholds made it, unless a graph rule
            # set this tensor's threshold) is the preset's row unless the options change it
            own = final if method == "entropy" and final.method == "entropy" else None
            searches = {p: own if p == preset and own is not None and not custom
                        else search_threshold(hist, p) for p in presets}
            base = own if own is not None else (
                search_threshold(hist, ours) if ours is not None else searches[preset])
        row: dict[str, Any] = {
            "n": name,
            "op": ops.get(name, ""),
            "R": R,
            "absmax": float(collector.absmax(name)),
            "total": total,
            "zeros": counts[0] / total if total else 0.0,
            "bins": int(counts.size),
            "rule": _rule_text(final),
            "bin": final.bin_index,
            "amax": final.amax,
            "hex": final.scale_hex,
            "kl": _kl_at(base, final.bin_index),
            "clip": clipped_fraction(counts, R, final.amax) if R > 0 else 0.0,
            "presets": {},
            "tables": [],
            "flags": [],
            "tags": [],
        }
        for p, r in searches.items():
            row["presets"][p] = {
                "bin": r.bin_index, "amax": r.amax, "hex": r.scale_hex,
                "kl": _kl_at(r, r.bin_index), "clip": r.clipped_fraction,
            }
        if searches:
            bins = [r.amax / width for r in searches.values()]
            row["spread"] = max(bins) - min(bins)
        else:
            row["spread"] = None
        second: tuple[str, int] | None = None
        for label, table in tables.items():
            if name not in table:
                row["tables"].append(None)
                continue
            cov = coverage[label]
            cov["common"] += 1
            placed = place_value(counts, R, table[name], label=label) if R > 0 else None
            entry: dict[str, Any] = {"hex": table.hex(name), "amax": table.amax(name)}
            if placed is not None:
                delta = (placed.amax - final.amax) / width if math.isfinite(placed.amax) else None
                entry.update(
                    pos=_finite(placed.position), bin=placed.bin_index, exact=placed.exact,
                    clip=placed.clipped_share, kl=_kl_at(base, placed.bin_index),
                    delta=_finite(delta) if delta is not None else None,
                )
                if entry["delta"] is not None:
                    cov["deltas"].append(abs(entry["delta"]))
                    if abs(entry["delta"]) < 0.5:
                        cov["same_bin"] += 1
                    else:
                        row["tags"].append(f"≠ {_short(label)}")
                        if second is None and placed.bin_index is not None and base is not None \
                                and bool(np.any(base.candidates == placed.bin_index)):
                            second = (label, placed.bin_index)
            if table.bits(name) == scale_to_bits(final.scale):
                cov["bit_identical"] += 1
            row["tables"].append(entry)
        if total == 0 or R == 0:
            row["flags"].insert(0, "all zero")
            row["tags"].insert(0, "all zero")
        else:
            if row["clip"] > CLIP_WARN_FRACTION:
                row["flags"].insert(0, f"clips {row['clip']:.1%}")
                row["tags"].insert(0, f"clips {row['clip']:.1%}")
            if final.bin_index is not None and _nonempty_in_window(counts, final) < 2:
                row["flags"].insert(0, "degenerate window (fewer than 2 non-empty bins)")
                row["tags"].insert(0, "degenerate")
        tensors.append(row)
        plots.append(_plot_data(counts, R, base, final, second))
        if progress is not None:
            progress(t + 1)
    summary = {
        "title": title,
        "tensors": len(names),
        "preset": preset,
        "method": method,
        "options": changes,
        "search": preset + (" with " + _options_text(changes) if custom else ""),
        "presets": presets,
        "signed_presets": [p for p in PRESETS if p not in presets],
        "range_policy": collector.range_policy,
        "batches": collector.batches,
        "meta": {k: collector.meta[k] for k in ("model", "model_sha256", "samples",
                                                "data_fingerprint", "kldiv_version")
                 if k in collector.meta},
        "model": model_info,
        "tables": [
            {"label": label, "short": _short(label), "entries": len(table),
             "kind": "cache" if label in caches else "table",
             "header": table.header.text if table.header is not None else None,
             "common": coverage[label]["common"],
             "only_table": sum(1 for n in table if n not in collector),
             "only_hist": sum(1 for n in names if n not in table),
             "same_bin": coverage[label]["same_bin"],
             "bit_identical": coverage[label]["bit_identical"],
             "median_delta": float(np.median(coverage[label]["deltas"]))
             if coverage[label]["deltas"] else None}
            for label, table in tables.items()
        ],
        "evaluations": list(evaluations or []),
        "clip_flag": CLIP_WARN_FRACTION,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    from . import __version__

    summary["kldiv"] = __version__
    return {"summary": summary, "tensors": tensors, "plots": plots}


def _options_text(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def _short(label: str, n: int = 18) -> str:
    """A table's label cut to ``n`` characters in the middle (file names share prefixes)."""
    return label if len(label) <= n else label[: n // 3] + "…" + label[-(n - n // 3 - 1):]


def _rule_text(r: ThresholdResult) -> str:
    if r.method == "inherited":
        return f"inherited from {r.options.get('source')}"
    if r.method == "activation-bound":
        return f"Clip bound {r.options.get('bound'):g}"
    if r.method == "entropy":
        return "entropy" if r.bin_index is not None else "all zero"
    return str(r.method)


def _plot_data(
    counts: np.ndarray,
    R: float,
    base: ThresholdResult | None,
    final: ThresholdResult,
    second: tuple[str, int] | None,
) -> dict[str, Any]:
    hist, hk = _summed(counts)
    out: dict[str, Any] = {"h": _pack(hist), "hk": hk}
    if base is not None and base.bin_index is not None and base.candidates.size:
        curve, ck = _curve_minima(base.divergence)
        out.update(c=_pack(curve), c0=int(base.candidates[0]),
                   cs=int(base.candidates[1] - base.candidates[0]) * ck
                   if base.candidates.size > 1 else ck,
                   cmin=base.bin_index)
        for key, label, i in (("pq", None, base.bin_index),
                              ("pq2", second[0] if second else None,
                               second[1] if second else None)):
            if i is None:
                continue
            p, q = base.distributions(i)
            ps, pk = _summed(p)
            qs, _ = _summed(q)
            out[key] = {"i": int(i), "k": pk, "p": _pack(ps), "q": _pack(qs), "label": label,
                        "kl": _kl_at(base, int(i))}
    return out


# ------------------------------------------------------------------------- HTML
def _asset(name: str) -> str:
    return resources.files("kldiv").joinpath("_report_assets").joinpath(name).read_text(encoding="utf-8")


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def _summary_html(data: dict[str, Any]) -> str:
    s = data["summary"]
    e = html.escape
    meta = s["meta"]
    facts = [
        ("tensors", str(s["tensors"])),
        ("preset", s["preset"]),
        ("method", s["method"]),
        ("options", _options_text(s["options"]) or "defaults"),
        ("histogram range policy", s["range_policy"]),
        ("calibration batches", str(s["batches"])),
    ]
    if "samples" in meta:
        facts.append(("samples", str(meta["samples"])))
    if "model" in meta:
        facts.append(("model (collected from)", str(meta["model"])))
    m = s["model"]
    if m is not None:
        match = {True: "the model the histograms were collected from",
                 False: "NOT the model the histograms were collected from (sha256 differs)",
                 None: "the histogram file does not record its model"}[m["matches"]]
        facts.append(("model given", f"{m['label']}: {match}"))
    facts.append(("other presets shown", ", ".join(p for p in s["presets"] if p != s["preset"])
                  or "–"))
    if s["signed_presets"]:
        facts.append(("not shown", ", ".join(s["signed_presets"])
                      + " (searches a signed histogram; these hold |x|)"))
    parts = ['<section id="summary"><h2>Summary</h2><dl class="facts">']
    parts += [f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts]
    parts.append("</dl>")
    flagged = [(i, t) for i, t in enumerate(data["tensors"]) if t["flags"]]
    flagged.sort(key=lambda it: -(it[1]["clip"] or 0.0))
    parts.append(f'<h3>Flagged tensors <span class="muted">({len(flagged)} of '
                 f'{len(data["tensors"])}: the threshold clips more than {s["clip_flag"]:.0%} '
                 'of the values, the chosen window holds fewer than two non-empty bins, or every '
                 'value is 0; most clipped first)</span></h3>')
    if flagged:
        reasons: dict[str, int] = {}
        for _, t in flagged:
            for tag in t["tags"]:
                if not tag.startswith("≠"):
                    key = "clips more than " + format(s["clip_flag"], ".0%") \
                        if tag.startswith("clips") else tag
                    reasons[key] = reasons.get(key, 0) + 1
        parts.append("<p>" + e(", ".join(f"{k}: {v}" for k, v in reasons.items())) + "</p>")
        parts.append('<table class="flagged"><thead><tr><th>tensor</th><th>clipped</th>'
                     '<th>why</th></tr></thead><tbody>')
        for i, t in flagged[:_FLAGGED_ROWS]:
            parts.append(
                f'<tr><td><a href="#t{i}" data-open="{i}">{e(t["n"])}</a></td>'
                f'<td class="num">{t["clip"]:.2%}</td><td>{e("; ".join(t["flags"]))}</td></tr>'
            )
        parts.append("</tbody></table>")
        if len(flagged) > _FLAGGED_ROWS:
            parts.append(f'<p class="muted">… and {len(flagged) - _FLAGGED_ROWS} more: tick '
                         '"flagged only" in the <a href="#tensors">table of tensors</a>.</p>')
    else:
        parts.append("<p>None.</p>")
    if s["tables"]:
        parts.append("<h3>Tables and caches</h3><table class=\"coverage\"><thead><tr>"
                     "<th>file</th><th>header</th><th>entries</th><th>in both</th>"
                     "<th>only in file</th><th>only in histograms</th><th>same bin as kldiv</th>"
                     "<th>bit-identical</th><th>median |Δ| (bins)</th></tr></thead><tbody>")
        for tb in s["tables"]:
            parts.append(
                f"<tr><td>{e(tb['label'])}</td><td>{e(tb['header'] or '–')}</td>"
                f"<td class=num>{tb['entries']}</td><td class=num>{tb['common']}</td>"
                f"<td class=num>{tb['only_table']}</td><td class=num>{tb['only_hist']}</td>"
                f"<td class=num>{tb['same_bin']} of {tb['common']}</td>"
                f"<td class=num>{tb['bit_identical']}</td>"
                f"<td class=num>{_fmt(tb['median_delta'], '.3g')}</td></tr>"
            )
        parts.append("</tbody></table>")
    if s["evaluations"]:
        parts.append("<h3>Evaluation (kldiv evaluate)</h3><table class=\"coverage\"><thead><tr>"
                     "<th>what</th><th>samples</th><th>agreement with FP32</th>"
                     "<th>FP32 accuracy</th><th>quantized accuracy</th>"
                     "<th>outputs: cosine, SQNR</th></tr></thead><tbody>")

        def ks(d: Any) -> str:
            if not d:
                return "–"
            return ", ".join(f"top-{k} {float(v):.2%}" for k, v in d.items())

        for ev in s["evaluations"]:
            parts.append(
                f"<tr><td>{e(str(ev.get('name')))}</td><td class=num>{e(str(ev.get('n')))}</td>"
                f"<td>{e(ks(ev.get('agreement')))}</td><td>{e(ks(ev.get('fp32_accuracy')))}</td>"
                f"<td>{e(ks(ev.get('quantized_accuracy')))}</td>"
                f"<td>{e(_outputs_text(ev.get('outputs') or {}))}</td></tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</section>")
    return "".join(parts)


def _outputs_text(outputs: Mapping[str, Any]) -> str:
    def num(x: Any, spec: str) -> str:
        try:
            return format(float(x), spec)
        except (TypeError, ValueError):
            return str(x)

    return "; ".join(f"{k}: {num(v.get('cosine'), '.6f')}, {num(v.get('sqnr_db'), '.1f')} dB"
                     for k, v in outputs.items()) or "–"


def render_html(data: dict[str, Any]) -> str:
    """The report as one self-contained HTML document (see the module docstring)."""
    s = data["summary"]
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_json_default)
    payload = payload.replace("</", "<\\/")
    title = f"kldiv report: {s['title']}"
    e = html.escape
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{e(title)}</title><style>{_asset('report.css')}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p class=\"muted\">kldiv {e(s['kldiv'])}, "
        f"{e(s['generated'])}. How each INT8 threshold was chosen: click a tensor to see its "
        "histogram, the divergence curve and P against Q.</p></header>"
        f"{_summary_html(data)}"
        "<section id=\"tensors\"><h2>Tensors</h2><div class=\"controls\">"
        "<input id=\"filter\" type=\"search\" placeholder=\"filter by name or op\" "
        "aria-label=\"filter tensors\"> <label><input type=\"checkbox\" id=\"flagged-only\"> "
        "flagged only</label> <span id=\"shown\" class=\"muted\"></span></div>"
        "<table id=\"tensor-table\"><thead></thead><tbody></tbody></table></section>"
        f"<footer>{_asset('footer.html')}</footer>"
        f"<script id=\"kldiv-data\" type=\"application/json\">{payload}</script>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-serializable: {type(x).__name__}")


def _clean(x: Any) -> Any:
    """Non-finite floats as None (JSON has no inf/NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, np.floating):
        return _clean(float(x))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_report(
    histograms: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str | os.PathLike[str] | None = None,
    caches: Sequence[str | os.PathLike[str]] = (),
    tables: Sequence[str | os.PathLike[str]] = (),
    evaluations: str | os.PathLike[str] | None = None,
    preset: str = DEFAULT_PRESET,
    method: str = DEFAULT_METHOD,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """Read the inputs, check them all, build the report and write it atomically.

    Parameters
    ----------
    histograms : path-like
        Histogram file (``kldiv calibrate --save-histograms``).
    out : path-like
        The HTML file to write.
    model : path-like, optional
        The ONNX model.
    caches, tables : sequence of path-like
        TensorRT caches (:func:`~kldiv.cachefile.read_cache`) and other tables
        (:func:`~kldiv.exports.read_table`).
    evaluations : path-like, optional
        JSON written by ``kldiv evaluate --json``.
    preset, method : str
        kldiv's thresholds.
    options : mapping, optional
        Options of the preset / method (see :func:`build_report`).
    force : bool, optional
        Overwrite ``out``.
    progress : callable, optional
        ``progress(done, total)`` per tensor.

    Returns
    -------
    pathlib.Path
        ``out``.

    Raises
    ------
    OutputExistsError, HistogramError, CacheFormatError, DataSourceError, PresetError, ModelError
        Every input is checked before the report is built; nothing is written on error.
    """
    from ._checks import check_options
    from ._io import atomic_write_text, check_writable

    check_writable(out, force=force, what="--out",
                   inputs=[histograms, model, evaluations, *caches, *tables])
    if preset not in abs_presets():
        raise PresetError(f"preset {preset!r}: choose one of {', '.join(abs_presets())}")
    check_options(method=method, preset=preset, options=options, num_bins=None)
    collector = load_histograms(histograms)
    names = collector.names
    if not names:
        raise DataSourceError(f"{histograms}: the file holds no tensors")
    found = load_tables(list(caches), names, trt_cache=True)
    cache_labels = list(found)
    for label, table in load_tables(list(tables), names, trt_cache=False).items():
        while label in found:
            label += " (table)"
        found[label] = table
    evals = _evaluations(evaluations) if evaluations is not None else None
    n = len(names)
    data = build_report(
        collector, preset=preset, method=method, tables=found, evaluations=evals, model=model,
        title=Path(histograms).name, caches=cache_labels, options=options,
        progress=None if progress is None else (lambda done: progress(done, n)),
    )
    text = render_html(_clean(data))
    return atomic_write_text(out, text, force=force)
