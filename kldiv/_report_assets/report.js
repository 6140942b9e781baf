"use strict";
// kldiv report: builds the tensor table from the inline JSON and draws a tensor's plots (SVG)
// when its row is opened. No network, no libraries.
(function () {
  const state = { errors: [], ready: false, readyMs: null };
  window.kldivReport = state;
  window.addEventListener("error", (e) => state.errors.push(String(e.message)));

  const DATA = JSON.parse(document.getElementById("kldiv-data").textContent);
  const S = DATA.summary, T = DATA.tensors, PL = DATA.plots;
  // kldiv's search is not its preset's own: options changed it (S.search names them)
  const CUSTOM = S.method === "entropy" && Object.keys(S.options || {}).length > 0;
  const ruleLabel = (t) => (t.rule === "entropy" ? S.search : t.rule);
  const PRESET_COLORS = { tensorrt: "#d9480f", gtc2017: "#1971c2", modelopt: "#2b8a3e" };
  const MORE_COLORS = ["#5f3dc4", "#e67700", "#0b7285", "#862e9c"];
  const TABLE_COLORS = ["#111111", "#9c36b5", "#0c8599", "#a61e4d", "#5c940d"];
  const FINAL_COLOR = "#c2255c";
  const tableLabels = S.tables.map((t) => t.label);

  function presetColor(p, k) { return PRESET_COLORS[p] || MORE_COLORS[k % MORE_COLORS.length]; }
  function tableColor(j) { return TABLE_COLORS[j % TABLE_COLORS.length]; }

  // --------------------------------------------------------------- numbers
  function decode(packed) { // [lo, hi, base64 of uint16 LE] -> Float64Array
    const lo = packed[0], hi = packed[1], bin = atob(packed[2]);
    const n = bin.length >> 1, out = new Float64Array(n), span = hi > lo ? hi - lo : 1;
    for (let i = 0; i < n; i++) {
      const c = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
      out[i] = c === 0 ? 0 : c === 65535 ? Infinity : Math.pow(10, lo + ((c - 1) / 65533) * span);
    }
    return out;
  }
  function g(x, d) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return String(x);
    if (!isFinite(x)) return String(x);
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a >= 1e-3 && a < 1e6) return String(Number(x.toPrecision(d || 5)));
    return x.toExponential((d || 5) - 1).replace("e+", "e");
  }
  function pct(x) {
    if (x === null || x === undefined) return "–";
    if (x === 0) return "0";
    const p = x * 100;
    return (p < 0.01 ? String(Number(p.toPrecision(2))) : p < 10 ? p.toFixed(2) : p.toFixed(1)) + "%";
  }
  function signed(x) {
    if (x === null || x === undefined) return "–";
    const r = Math.round(x * 10) / 10;
    return (r > 0 ? "+" : "") + (Number.isInteger(r) ? String(r) : r.toFixed(1));
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // --------------------------------------------------------------- SVG plots
  function niceStep(range, target) {
    const raw = range / target, p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * p;
  }
  function fmtTick(v, step) {
    const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return v.toFixed(Math.min(digits, 6));
  }
  // series: {xs, ys, dx?, kind: "area"|"step"|"line", color, width?, zeroDots?}
  // vlines: {x, color, dash?, width?}
  function svgPlot(o) {
    const width = 520, height = 220, m = { l: 54, r: 12, t: 8, b: 36 };
    const W = width - m.l - m.r, H = height - m.t - m.b;
    let ymin = Infinity, ymax = -Infinity;
    for (const s of o.series) for (const v of s.ys) if (v > 0 && isFinite(v)) {
      if (v < ymin) ymin = v; if (v > ymax) ymax = v;
    }
    if (!isFinite(ymin)) { ymin = 1; ymax = 10; }
    let ly0 = Math.floor(Math.log10(ymin)), ly1 = Math.ceil(Math.log10(ymax));
    if (ly1 <= ly0) ly1 = ly0 + 1;
    const xmin = o.xmin, xmax = o.xmax > o.xmin ? o.xmax : o.xmin + 1;
    const X = (x) => m.l + ((x - xmin) / (xmax - xmin)) * W;
    const Y = (v) => m.t + H - ((Math.log10(v) - ly0) / (ly1 - ly0)) * H;
    const bottom = m.t + H, f = (v) => v.toFixed(1);
    const out = [`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" role="img">`];
    const ystep = Math.max(1, Math.ceil((ly1 - ly0) / 5));
    for (let k = ly0; k <= ly1; k += ystep) {
      const y = f(Y(Math.pow(10, k)));
      out.push(`<line class="grid" x1="${m.l}" x2="${m.l + W}" y1="${y}" y2="${y}"/>`);
      out.push(`<text x="${m.l - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">10<tspan dy="-5" font-size="9">${k}</tspan></text>`);
    }
    const xstep = niceStep(xmax - xmin, 5);
    for (let v = Math.ceil(xmin / xstep) * xstep; v <= xmax + 1e-12; v += xstep) {
      const x = f(X(v));
      out.push(`<line class="grid" x1="${x}" x2="${x}" y1="${m.t}" y2="${bottom}"/>`);
      out.push(`<text x="${x}" y="${bottom + 14}" text-anchor="middle">${fmtTick(v, xstep)}</text>`);
    }
    out.push(`<defs><clipPath id="c${o.id}"><rect x="${m.l}" y="${m.t}" width="${W}" height="${H}"/></clipPath></defs>`);
    out.push(`<g clip-path="url(#c${o.id})">`);
    for (const s of o.series) {
      const d = [], n = s.ys.length, dots = [];
      let pen = false;
      const shown = (j) => j >= 0 && j < n && s.ys[j] > 0 && isFinite(s.ys[j]);
      if (s.infBand) { // runs of infinite values: a band along the top edge
        const step = n > 1 ? s.xs[1] - s.xs[0] : 1;
        for (let j = 0; j < n; j++) {
          if (s.ys[j] !== Infinity) continue;
          let k = j;
          while (k + 1 < n && s.ys[k + 1] === Infinity) k++;
          const x0 = X(s.xs[j] - step / 2), x1 = X(s.xs[k] + step / 2);
          dots.push(`<rect class="inf" x="${f(x0)}" y="${m.t}" width="${f(Math.max(1, x1 - x0))}" height="4" fill="#fa5252" opacity="0.55"/>`);
          j = k;
        }
      }
      for (let j = 0; j < n; j++) {
        const v = s.ys[j], x0 = s.xs[j], x1 = s.dx ? x0 + s.dx : x0;
        const ok = v > 0 && isFinite(v);
        if (ok && !shown(j - 1) && !shown(j + 1)) // a lone point would be invisible: a dot
          dots.push(`<circle cx="${f(X((x0 + x1) / 2))}" cy="${f(Y(v))}" r="2.5" fill="${s.color}"/>`);
        if (s.kind === "area") {
          const y = ok ? f(Y(v)) : f(bottom);
          d.push(`${j === 0 ? "M" + f(X(x0)) + " " + f(bottom) + " L" : "L"}${f(X(x0))} ${y} L${f(X(x1))} ${y}`);
        } else if (ok) {
          const y = f(Y(v));
          d.push(`${pen ? "L" : "M"}${f(X(x0))} ${y}` + (s.kind === "step" ? ` L${f(X(x1))} ${y}` : ""));
          pen = true;
        } else {
          pen = false;
          if (s.zeroDots && v === 0) dots.push(`<circle cx="${f(X(x0))}" cy="${f(bottom - 2)}" r="2" fill="${s.color}"/>`);
        }
      }
      if (s.kind === "area" && n) d.push(`L${f(X(s.xs[n - 1] + (s.dx || 0)))} ${f(bottom)} Z`);
      if (d.length) {
        const style = s.kind === "area" ? `fill="${s.color}" stroke="none"` :
          `fill="none" stroke="${s.color}" stroke-width="${s.width || 1.3}" stroke-linejoin="round"`;
        out.push(`<path class="series" d="${d.join(" ")}" ${style}${s.opacity ? ` opacity="${s.opacity}"` : ""}/>`);
      }
      out.push(dots.join(""));
    }
    for (const v of o.vlines) {
      if (v.x === null || v.x === undefined || !isFinite(v.x)) continue;
      const x = f(X(Math.min(Math.max(v.x, xmin), xmax)));
      const dash = v.dash === "dash" ? ' stroke-dasharray="6 4"' : v.dash === "dot" ? ' stroke-dasharray="2 3"' : "";
      out.push(`<line class="marker" x1="${x}" x2="${x}" y1="${m.t}" y2="${bottom}" stroke="${v.color}" stroke-width="${v.width || 1.6}"${dash}/>`);
    }
    out.push("</g>");
    out.push(`<rect class="axis" x="${m.l}" y="${m.t}" width="${W}" height="${H}"/>`);
    out.push(`<text x="${m.l + W / 2}" y="${height - 4}" text-anchor="middle">${o.xlabel}</text>`);
    out.push(`<text transform="translate(12 ${m.t + H / 2}) rotate(-90)" text-anchor="middle">${o.ylabel}</text>`);
    out.push("</svg>");
    return out.join("");
  }
  function legend(items) {
    const div = el("div", { class: "legend" });
    for (const it of items) {
      const span = el("span");
      const sw = el("span", { class: "sw" + (it.dash ? " " + it.dash : "") });
      sw.style.borderTopColor = it.color;
      span.appendChild(sw);
      span.appendChild(document.createTextNode(it.label));
      div.appendChild(span);
    }
    return div;
  }
  function panel(title) {
    const p = el("div", { class: "panel" });
    p.appendChild(el("h4", null, title));
    return p;
  }
  let plotId = 0;

  function histogramPanel(t, d) {
    const p = panel("Histogram of |x| (log) and thresholds");
    if (!(t.R > 0)) {
      p.appendChild(el("p", { class: "muted" }, "Every value is 0 (range R = 0): threshold 0 and scale 0, as TensorRT writes an all-zero tensor."));
      return p;
    }
    const h = decode(d.h), w = t.R / t.bins, dx = w * d.hk;
    const xs = Array.from(h, (_, j) => j * dx);
    const vlines = [], items = [];
    let xmax = t.R > 0 ? t.R : 1;
    S.presets.forEach((name, k) => {
      const r = t.presets[name];
      if (!r) return;
      const main = name === S.preset;
      const own = main && S.method === "entropy" && !CUSTOM;
      vlines.push({ x: r.amax, color: presetColor(name, k), dash: main ? null : "dash", width: main ? 2 : 1.4 });
      items.push({ label: `${name}${own ? " (kldiv)" : ""}: T = ${g(r.amax)}`, color: presetColor(name, k), dash: main ? "" : "dash" });
      xmax = Math.max(xmax, r.amax);
    });
    if ((t.rule !== "entropy" || CUSTOM) && t.amax !== null) {
      vlines.push({ x: t.amax, color: FINAL_COLOR, width: 2 });
      items.push({ label: `kldiv (${ruleLabel(t)}): T = ${g(t.amax)}`, color: FINAL_COLOR });
      xmax = Math.max(xmax, t.amax);
    }
    t.tables.forEach((e, j) => {
      if (!e) return;
      vlines.push({ x: e.amax, color: tableColor(j), dash: "dot", width: 2 });
      items.push({ label: `${tableLabels[j]}: T = ${g(e.amax)}`, color: tableColor(j), dash: "dot" });
      if (isFinite(e.amax) && e.amax < 4 * xmax) xmax = Math.max(xmax, e.amax);
    });
    const box = el("div");
    box.innerHTML = svgPlot({ id: plotId++, xmin: 0, xmax: xmax * 1.01, xlabel: "|x|", ylabel: "count",
      series: [{ xs, ys: h, dx, kind: "area", color: "#91a7c0" }], vlines });
    p.appendChild(box.firstChild);
    p.appendChild(legend(items));
    return p;
  }

  function curvePanel(t, d) {
    const p = panel(`KL(P || Q) per candidate i (${S.search || S.preset})`);
    if (!d.c) { p.appendChild(el("p", { class: "muted" }, "No search: every value is 0.")); return p; }
    const c = decode(d.c), xs = Array.from(c, (_, j) => d.c0 + j * d.cs);
    const vlines = [{ x: d.cmin, color: presetColor(S.preset, 0), width: 2 }];
    const items = [{ label: `minimum: i = ${d.cmin}`, color: presetColor(S.preset, 0) }];
    t.tables.forEach((e, j) => {
      if (!e || e.pos === null || e.pos === undefined) return;
      const i = e.bin !== null && e.bin !== undefined ? e.bin : e.pos - 0.5;
      vlines.push({ x: i, color: tableColor(j), dash: "dot", width: 2 });
      items.push({ label: `${tableLabels[j]}: i = ${e.bin !== null && e.bin !== undefined ? e.bin : g(i, 6) + " (off grid)"}`, color: tableColor(j), dash: "dot" });
    });
    const box = el("div");
    box.innerHTML = svgPlot({ id: plotId++, xmin: d.c0, xmax: xs[xs.length - 1] + d.cs, xlabel: "candidate i (bins kept)",
      ylabel: "KL", series: [{ xs, ys: c, kind: "line", color: "#1864ab", zeroDots: true, infBand: true }], vlines });
    p.appendChild(box.firstChild);
    if (c.some((v) => v === Infinity)) items.push({ label: "KL = ∞ (band on top)", color: "#fa5252" });
    p.appendChild(legend(items));
    const finite = Array.from(c).filter((v) => isFinite(v)).length;
    if (finite < 3) p.appendChild(el("p", { class: "muted" }, `${finite ? "Only " + finite : "No"} group(s) of candidates with a finite KL: ` +
      "Q is 0 where P is not, or the window holds a single non-empty bin (a histogram with few non-empty bins)."));
    return p;
  }

  function pqPanel(t, d) {
    const p = panel("P against Q");
    if (!d.pq) { p.appendChild(el("p", { class: "muted" }, "No search: every value is 0.")); return p; }
    const box = el("div"), note = el("div", { class: "pq-switch" });
    function draw(pq) {
      const P = decode(pq.p), Q = decode(pq.q), xs = Array.from(P, (_, j) => j * pq.k);
      box.innerHTML = svgPlot({ id: plotId++, xmin: 0, xmax: pq.i, xlabel: "bin", ylabel: "probability",
        series: [{ xs, ys: P, dx: pq.k, kind: "step", color: "#1971c2" },
                 { xs, ys: Q, dx: pq.k, kind: "step", color: "#e8590c", opacity: 0.85 }], vlines: [] });
      p.querySelector("h4").textContent = `P against Q at i = ${pq.i}` + (pq.label ? ` (${pq.label})` : " (the minimum)") +
        `: KL = ${g(pq.kl)}`;
    }
    const choices = [d.pq].concat(d.pq2 ? [d.pq2] : []);
    if (choices.length > 1) {
      choices.forEach((pq, k) => {
        const b = el("button", { type: "button" }, pq.label ? `${pq.label}: i = ${pq.i}` : `minimum: i = ${pq.i}`);
        if (k === 0) b.classList.add("on");
        b.addEventListener("click", (ev) => {
          ev.stopPropagation();
          note.querySelectorAll("button").forEach((x) => x.classList.remove("on"));
          b.classList.add("on");
          draw(pq);
        });
        note.appendChild(b);
      });
    }
    draw(d.pq);
    p.appendChild(box);
    p.appendChild(legend([{ label: "P (clipped reference)", color: "#1971c2" }, { label: "Q (128 levels)", color: "#e8590c" }]));
    if (choices.length > 1) p.appendChild(note);
    return p;
  }

  function numbersTable(t) {
    const tb = el("table", { class: "numbers" });
    const head = el("tr");
    ["", "bin i", "amax T", "scale (hex)", "KL at i", "clipped", "Δ bins vs kldiv", "note"].forEach((h) => head.appendChild(el("th", null, h)));
    tb.appendChild(el("thead")).appendChild(head);
    const body = tb.appendChild(el("tbody"));
    function row(cells, classes) {
      const tr = el("tr");
      cells.forEach((c, k) => tr.appendChild(el("td", classes[k] ? { class: classes[k] } : null, c)));
      body.appendChild(tr);
    }
    const cls = ["", "num", "num", "hex", "num", "num", "num", ""];
    const w = t.R / t.bins;
    S.presets.forEach((name) => {
      const r = t.presets[name];
      if (!r) return;
      row([name + (name === S.preset && S.method === "entropy" && !CUSTOM ? " (kldiv's preset)" : ""), g(r.bin), g(r.amax, 7), r.hex, g(r.kl), pct(r.clip),
        t.amax !== null && w > 0 ? signed((r.amax - t.amax) / w) : "–", ""], cls);
    });
    if (t.rule !== "entropy" || CUSTOM) row([`kldiv (${ruleLabel(t)})`, g(t.bin), g(t.amax, 7), t.hex, g(t.kl), pct(t.clip), "0", "the table kldiv calibrate writes"], cls);
    t.tables.forEach((e, j) => {
      if (!e) { row([tableLabels[j], "–", "–", "–", "–", "–", "–", "no entry"], cls); return; }
      const onGrid = e.bin !== null && e.bin !== undefined;
      const note = e.pos === undefined ? "" : onGrid ? (e.exact ? "bit-exact at this bin" : "this bin; R differs by ulps")
        : `off this histogram's grid (position ${g(e.pos, 6)})`;
      row([tableLabels[j], onGrid ? String(e.bin) : "–", g(e.amax, 7), e.hex, g(e.kl), pct(e.clip), signed(e.delta), note], cls);
    });
    return tb;
  }

  function detail(i) {
    const t = T[i], d = PL[i];
    const box = el("div");
    const w = t.R / t.bins;
    box.appendChild(el("p", { class: "facts-line" },
      `${t.n}${t.op ? " (" + t.op + ")" : ""}: range R = ${g(t.R, 7)}, ${t.bins} bins of width w = ${g(w)}; ` +
      `${t.total.toLocaleString("en")} values, ${pct(t.zeros)} in bin 0; largest |x| = ${g(t.absmax, 7)}; ` +
      `kldiv: ${t.rule}` + (t.flags.length ? `; flags: ${t.flags.join("; ")}` : "")));
    const plots = el("div", { class: "plots" });
    plots.appendChild(histogramPanel(t, d));
    plots.appendChild(curvePanel(t, d));
    plots.appendChild(pqPanel(t, d));
    box.appendChild(plots);
    box.appendChild(numbersTable(t));
    if (d.c) { // the same story in a terminal, with the option search against the first table
      const q = (x) => (/^[\w.\/-]+$/.test(x) ? x : "'" + x.replace(/'/g, "'\\''") + "'");
      const first = t.tables.findIndex((e) => e);
      const src = first < 0 ? "" : (S.tables[first].kind === "cache" ? " --cache " : " --table ") + q(S.tables[first].label);
      box.appendChild(el("p", { class: "cmd" }, `In a terminal: kldiv explain ${q(S.title)} ${q(t.n)}${src}`));
    }
    return box;
  }

  // --------------------------------------------------------------- the table
  const cols = [
    { label: "#", num: true, get: (t, i) => i, fmt: (v) => String(v + 1) },
    { label: "tensor", get: (t) => t.n, cls: "name" },
  ];
  if (T.some((t) => t.op)) cols.push({ label: "op", get: (t) => t.op });
  cols.push(
    { label: "range R", num: true, get: (t) => t.R, fmt: (v) => g(v, 4) },
    { label: "rule", get: (t) => t.rule },
    { label: "bin i", num: true, get: (t) => t.bin, fmt: (v) => g(v) },
    { label: "amax T", num: true, get: (t) => t.amax, fmt: (v) => g(v, 5) },
    { label: "scale (hex)", get: (t) => t.hex, cls: "hex" },
    { label: "KL", num: true, get: (t) => t.kl, fmt: (v) => g(v, 3) },
    { label: "clipped", num: true, get: (t) => t.clip, fmt: pct },
    { label: "spread", num: true, get: (t) => t.spread, fmt: (v) => (v === null ? "–" : v.toFixed(1)), title: "bins between the presets' thresholds" },
  );
  tableLabels.forEach((label, j) => {
    const short = S.tables[j].short;
    cols.push({ label: `${short} hex`, title: label, get: (t) => (t.tables[j] ? t.tables[j].hex : null), cls: "hex" });
    cols.push({ label: "Δ bins", title: `${label}: its threshold minus kldiv's, in bins`, num: true,
      get: (t) => (t.tables[j] && t.tables[j].delta !== undefined ? t.tables[j].delta : null), fmt: signed });
  });
  cols.push({ label: "flags", get: (t) => t.tags.join(", "), key: (t) => t.flags.length, cls: "flags", title: "clipped share above the limit, degenerate window, all-zero tensor, or a table in another bin (≠)" });

  const table = document.getElementById("tensor-table");
  const thead = table.querySelector("thead"), tbody = table.querySelector("tbody");
  const headRow = el("tr");
  cols.forEach((c, k) => {
    const th = el("th", { "data-col": String(k), class: c.num ? "num" : "", scope: "col" }, c.label);
    if (c.title) th.title = c.title;
    th.addEventListener("click", () => sortBy(k));
    headRow.appendChild(th);
  });
  thead.appendChild(headRow);

  const rows = [], details = {};
  T.forEach((t, i) => {
    const tr = el("tr", { class: "row", id: "t" + i, "data-i": String(i) });
    cols.forEach((c) => {
      const v = c.get(t, i);
      tr.appendChild(el("td", { class: ((c.num ? "num " : "") + (c.cls || "")).trim() }, c.fmt ? c.fmt(v) : v === null ? "–" : String(v)));
    });
    tr.addEventListener("click", () => toggle(i));
    rows.push(tr);
  });
  const frag = document.createDocumentFragment();
  rows.forEach((r) => frag.appendChild(r));
  tbody.appendChild(frag);

  function toggle(i, forceOpen) {
    const tr = rows[i];
    if (details[i]) {
      if (forceOpen) return details[i];
      details[i].remove(); delete details[i]; tr.classList.remove("open");
      return null;
    }
    const d = el("tr", { class: "detail", "data-detail": String(i) });
    const td = el("td", { colspan: String(cols.length) });
    try {
      td.appendChild(detail(i));
      td.firstChild.style.maxWidth = "calc(100vw - 64px)";
    } catch (err) {
      state.errors.push(String(err && err.stack ? err.stack : err));
      td.textContent = "could not draw this tensor: " + err;
    }
    d.appendChild(td);
    tr.after(d);
    tr.classList.add("open");
    details[i] = d;
    return d;
  }

  let sortCol = 0, sortDir = 1;
  function sortBy(k) {
    sortDir = k === sortCol ? -sortDir : 1;
    sortCol = k;
    const c = cols[k], key = c.key || c.get;
    const order = T.map((t, i) => i);
    order.sort((a, b) => {
      const va = key(T[a], a), vb = key(T[b], b);
      const na = va === null || va === undefined || va === "", nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na === nb ? a - b : na ? 1 : -1; // missing values last
      if (va < vb) return -sortDir;
      if (va > vb) return sortDir;
      return a - b;
    });
    const f = document.createDocumentFragment();
    for (const i of order) { f.appendChild(rows[i]); if (details[i]) f.appendChild(details[i]); }
    tbody.appendChild(f);
    headRow.querySelectorAll("th").forEach((th) => th.removeAttribute("aria-sort"));
    headRow.children[k].setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
  }

  const filter = document.getElementById("filter"), flaggedOnly = document.getElementById("flagged-only");
  const shown = document.getElementById("shown");
  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let n = 0;
    T.forEach((t, i) => {
      const ok = (!q || t.n.toLowerCase().includes(q) || (t.op || "").toLowerCase().includes(q)) &&
        (!flaggedOnly.checked || t.flags.length > 0);
      rows[i].hidden = !ok;
      if (details[i]) details[i].hidden = !ok;
      n += ok ? 1 : 0;
    });
    shown.textContent = `${n} of ${T.length} tensors shown; click a row for its plots, a column title to sort`;
  }
  filter.addEventListener("input", applyFilter);
  flaggedOnly.addEventListener("change", applyFilter);
  applyFilter();

  function openFromHash() {
    const m = /^#t(\d+)$/.exec(location.hash);
    if (m && T[+m[1]]) { toggle(+m[1], true); rows[+m[1]].scrollIntoView({ block: "start" }); }
  }
  document.querySelectorAll("a[data-open]").forEach((a) => a.addEventListener("click", (ev) => {
    ev.preventDefault();
    const i = +a.getAttribute("data-open");
    rows[i].hidden = false;
    toggle(i, true);
    rows[i].scrollIntoView({ block: "start" });
    history.replaceState(null, "", "#t" + i);
  }));
  openFromHash();

  // hooks for tests and for people who want everything open
  state.open = (i) => toggle(i, true);
  state.openAll = () => T.forEach((t, i) => toggle(i, true));
  state.sortBy = sortBy;
  state.order = () => Array.from(tbody.querySelectorAll("tr.row")).map((r) => +r.getAttribute("data-i"));
  state.problems = () => { // every opened tensor: a histogram, and for searched tensors a curve and P/Q
    const bad = [];
    for (const i in details) {
      const svgs = details[i].querySelectorAll("svg");
      const want = PL[i].c ? 3 : T[i].R > 0 ? 1 : 0;
      const drawn = Array.from(svgs).filter((s) => s.querySelector("circle, rect.inf") ||
        Array.from(s.querySelectorAll("path.series")).some((p) => p.getAttribute("d").length > 20));
      if (drawn.length < want) bad.push(`${T[i].n}: ${drawn.length} of ${want} plots drawn`);
    }
    return bad;
  };
  state.readyMs = performance.now();
  state.ready = true;
})();
