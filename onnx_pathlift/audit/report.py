"""Audit reports: a self-contained HTML page, CSV and JSON Lines (one row / object per model file).

The HTML page has no external resource: status counts, one histogram per norm (log10 ‖Φ‖_q for each
q, the Lipschitz bound), log10 path-norm against log10 parameters coloured by producer (inline SVG),
failures grouped by op type, a filterable, sortable table (small inline script; ``#filter=WORDS`` in
the address pre-fills the filter, ``status:ok`` filters one column, the status counts are links to that
filter) and per-model details that follow the filter; paths are relative to the folder holding them all.
The table keeps its path column readable from 700 px: optional columns give way first, paths wrap at
their slashes (the full path is also the tooltip).
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..fileio.atomic import atomic_write, write_text
from ..sanitise import csv_cell
from ..sanitise import html as escape
from .batch import Audit
from .record import STATUSES, ModelResult, Settings


def columns(settings: Settings) -> list[str]:
    """The CSV header: one value and one log10 column per q."""
    norms = [c for q in settings.q for c in (f"L{q:g}", f"L{q:g}_log10")]
    return ["path", "status", "reason", "sha256", "size", "opset", "producer", "params", "input_shape", "kinds",
            *norms, "lipschitz_log10", "wall_s", "peak_rss_mb", "run_id", "computed_at"]


def flat_row(r: ModelResult, settings: Settings) -> dict:
    """One model as a flat CSV row (see :func:`columns`)."""
    row = {"path": r.path, "status": r.status, "reason": r.reason, "sha256": r.sha256, "size": r.size,
           "opset": r.opset, "producer": r.producer, "params": r.params,
           "input_shape": json.dumps(r.input_shape) if r.input_shape else "",
           "kinds": json.dumps(r.kinds) if r.kinds else "", "lipschitz_log10": r.lipschitz_log10,
           "wall_s": round(r.wall_s, 6), "peak_rss_mb": r.peak_rss_mb, "run_id": r.run_id, "computed_at": r.computed_at}
    by_q = {n["q"]: n for n in r.norms}
    for q in settings.q:
        n = by_q.get(q, {})
        row[f"L{q:g}"], row[f"L{q:g}_log10"] = n.get("value"), n.get("log10")
    return row


def write_csv(path: str | Path, audit: Audit, settings: Settings) -> None:
    """One row per model; every text cell goes through :func:`~onnx_pathlift.sanitise.csv_cell`
    (a spreadsheet never reads a model's name or producer as a formula). Written atomically."""
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns(settings))
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in flat_row(r, settings).items()} for r in audit.results)


def json_lines(audit: Audit) -> Iterator[str]:
    """One JSON object per model file."""
    for r in audit.results:
        yield json.dumps(r.to_dict())


# ------------------------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1800px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em}
table{border-collapse:collapse}td,th{padding:.2em .5em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}table.sortable th{cursor:pointer}table.sortable th:hover{background:#e8e8e8}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
table.fixed{table-layout:fixed;width:100%;font-size:13px}table.fixed td{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
table.fixed th{overflow-wrap:anywhere;vertical-align:bottom}table.fixed td.path{white-space:normal;overflow-wrap:anywhere}
table.wrap{table-layout:fixed;width:100%}table.wrap td{overflow-wrap:anywhere}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.scroll{overflow-x:auto}
.ok{color:#1a7f37}.unsupported{color:#9a6700}.invalid{color:#8250df}.error{color:#cf222e}.timeout{color:#bc4c00}
.counts a,.counts span{display:inline-block;margin-right:1.5em;font-size:1.1em;text-decoration:none}
.counts a:hover{text-decoration:underline}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,560px),1fr));gap:1em}
.charts figure{margin:0}.charts figcaption{font-weight:600}.charts small{font-weight:normal}
svg{width:100%;height:auto;max-width:720px}
details{margin:.3em 0;overflow-wrap:anywhere}summary{cursor:pointer}pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:0}
.bar{fill:#4c78a8}.bar.clipped{fill:#9ecae9}.bar:hover{fill:#f58518}svg text{font:13px system-ui,sans-serif}
#filter{font:inherit;padding:.3em .5em;width:24em;max-width:90%}
"""

#: sort by clicking a header; filter the models table by words (also from the page's #filter=... fragment)
_SCRIPT = r"""
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.dataset.dir !== 'asc';
      table.querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
      th.dataset.dir = asc ? 'asc' : 'desc';
      var key = function (tr) {
        var c = tr.cells[col], v = c.dataset.v !== undefined ? c.dataset.v : c.textContent, n = parseFloat(v);
        return v !== '' && !isNaN(n) && isFinite(v) ? [0, n] : [v === '' ? 2 : 1, v.toLowerCase()];
      };
      var body = table.tBodies[0];
      Array.from(body.rows).sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x[0] !== y[0]) return x[0] - y[0];
        var r = x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0;
        return asc ? r : -r;
      }).forEach(function (tr) { body.appendChild(tr); });
    });
  });
});
(function () {
  var box = document.getElementById('filter'), table = document.getElementById('models');
  var rows = table.tBodies[0].rows, shown = document.getElementById('shown');
  var keys = Array.from(table.tHead.rows[0].cells).map(function (th) { return th.dataset.key; });
  // whole-token matching: 'ok' matches the token ok, not book; 'a/b.onnx' matches the tokens a b onnx in a row
  function tokens(s) { return ' ' + s.toLowerCase().split(/[^\p{L}\p{N}]+/u).filter(Boolean).join(' ') + ' '; }
  function apply() {
    var unknown = [], tests = box.value.split(/\s+/).filter(Boolean).map(function (w) {
      var m = /^([a-z0-9_]+):(.*)$/i.exec(w), col = -1;
      if (m) { col = keys.indexOf(m[1].toLowerCase()); if (col < 0) unknown.push(m[1]); else w = m[2]; }
      return {col: col, t: tokens(w)};
    }).filter(function (x) { return x.t.trim(); }), n = 0;
    Array.from(rows).forEach(function (tr) {
      var cells = Array.from(tr.cells).map(function (c) { return tokens(c.title || c.textContent); });
      var whole = cells.join('');
      var keep = !unknown.length && tests.every(function (x) { return (x.col < 0 ? whole : cells[x.col]).indexOf(x.t) >= 0; });
      tr.hidden = !keep;
      document.getElementById('m' + tr.dataset.i).hidden = !keep;
      n += keep ? 1 : 0;
    });
    shown.textContent = unknown.length ? 'no column named ' + unknown.join(', ') + ' (columns: ' + keys.join(', ') + ')'
      : n + ' of ' + rows.length + ' models shown';
  }
  function fromHash() {
    var m = /[#&]filter=([^&]*)/.exec(location.hash);
    if (m) { box.value = decodeURIComponent(m[1]); apply(); }
  }
  document.querySelectorAll('.counts a').forEach(function (a) {
    a.addEventListener('click', function () { box.value = a.dataset.filter; apply(); });
  });
  box.addEventListener('input', apply);
  window.addEventListener('hashchange', fromHash);
  apply();
  fromHash();
})();
"""

#: colours of the scatter plot's producers (the rest share the last one)
_PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#bab0ac"]


def write_html(path: str | Path, audit: Audit, settings: Settings) -> None:
    write_text(path, html_page(audit, settings))


def html_page(audit: Audit, settings: Settings) -> str:
    """The whole report as one self-contained HTML document."""
    results = audit.results
    base = _base_folder(results)
    shape = "from each model" if settings.input_shape is None else escape(str(settings.input_shape))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ok = [r for r in results if r.status == "ok"]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>onnx-pathlift audit</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>onnx-pathlift audit</h1>",
        (f"<p>{len(results)} files under <code>{escape(base or '.')}</code> (paths below are relative to it); "
         f"q = {', '.join(f'{q:g}' for q in settings.q)}; input shape {shape}; "
         f"onnx-pathlift {escape(settings.version)}; database <code>{escape(Path(audit.db).name)}</code> "
         f"(run {audit.run_id}: {audit.analysed} models analysed, {audit.reused} reused); written {when}.</p>"),
        _counts(results),
        f"<h2>Distributions over the {len(ok)} ok models</h2>", _distributions(ok, settings),
        "<h2>Path-norm against parameters</h2>", _scatter(ok, settings, base),
        "<h2>Why models fail</h2>", _failures(results, base),
        "<h2>Models</h2>",
        ('<p><input id="filter" type="search" placeholder="filter: whole words, or column:word, e.g. status:error Conv" '
         'aria-label="filter the models"> <span id="shown"></span>. Words match whole words in any column; '
         "<code>status:ok</code> matches in one column (the headers' tooltips name them). Click a column header to sort; "
         "click a path for details.</p>"),
        f'<div class="scroll">{_table(results, settings, base)}</div>',
        "<h2>Details</h2><p>The models the filter shows.</p>", *(_detail(i, r, base) for i, r in enumerate(results)),
        f"<script>{_SCRIPT}</script></body></html>",
    ])


def _base_folder(results: list[ModelResult]) -> str:
    """The deepest folder holding every file (paths are shown relative to it; "" when there is none)."""
    folders = [os.path.dirname(os.path.abspath(r.path)) for r in results]
    try:
        return os.path.commonpath(folders) if folders else ""
    except ValueError:  # different drives
        return ""


def _rel(path: str, base: str) -> str:
    return os.path.relpath(os.path.abspath(path), base) if base else path


def _unbased(text: str, base: str) -> str:
    """``text`` (a reason) with the base folder taken out of the paths it mentions."""
    return text.replace(base.rstrip(os.sep) + os.sep, "") if base else text


def _counts(results: list[ModelResult]) -> str:
    counts = Counter(r.status for r in results)
    def link(s: str) -> str:
        if not counts[s]:
            return f'<span class="{s}"><b>0</b> {s}</span>'
        return (f'<a class="{s}" href="#filter=status:{s}" data-filter="status:{s}" title="show the {s} models">'
                f"<b>{counts[s]}</b> {s}</a>")
    spans = "".join(link(s) for s in (*STATUSES, *sorted(set(counts) - set(STATUSES))))
    return f'<p class="counts">{spans}</p>'


def _distributions(ok: list[ModelResult], settings: Settings) -> str:
    """One histogram per norm: log10 ‖Φ‖_q for every q, and the log10 Lipschitz bound."""
    charts = [(f"log10 L{q:g} path-norm", f"log10 ‖Φ‖_{q:g}", [v for r in ok if (v := r.norm_log10(q)) is not None])
              for q in settings.q]
    charts.append(("log10 Lipschitz bound (ℓ∞ → ℓ1)", "log10 ‖Φ_in‖_1",
                   [r.lipschitz_log10 for r in ok if r.lipschitz_log10 is not None]))
    figures = []
    for title, label, values in charts:
        svg, note = _histogram(values, label)
        figures.append(f"<figure><figcaption>{escape(title)} ({len(values)} models){note}</figcaption>{svg}</figure>")
    return f'<div class="charts">{"".join(figures)}</div>'


def histogram_range(values: list[float]) -> tuple[float, float]:
    """The range a histogram shows: the values' range cut to Tukey's far fences Q1 − 3·w, Q3 + 3·w with
    w = max(IQR, 1) (one decade at least), so one outlier does not squash the other bars."""
    lo, hi = min(values), max(values)
    if len(values) < 4:
        return lo, hi
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    w = max(q3 - q1, 1.0)
    return max(lo, q1 - 3 * w), min(hi, q3 + 3 * w)


def _nice_step(span: float) -> float:
    """The smallest of 0.1, 0.2, 0.5, 1, 2, 5, 10, ... giving at most 30 bins over ``span``."""
    k = -1
    while True:
        for m in (1, 2, 5):
            if span <= 30 * m * 10.0 ** k:
                return round(m * 10.0 ** k, 10)
        k += 1


def _histogram(values: list[float], label: str) -> tuple[str, str]:
    """Bars over :func:`histogram_range` as inline SVG, and a caption note: values outside the range are
    counted in the end bars (drawn lighter), and the note says how many."""
    if not values:
        return "<p>No value.</p>", ""
    vmin, vmax = histogram_range(values)
    step = _nice_step(vmax - vmin)
    lo = math.floor(vmin / step) * step
    bins = math.floor((vmax - lo) / step) + 1  # vmax falls in the last bar
    below, above = sum(v < vmin for v in values), sum(v > vmax for v in values)
    counts = Counter(min(max(int((v - lo) // step), 0), bins - 1) for v in values)
    top = max(counts.values())
    w, h, left, bottom = 560, 200, 44, 44
    bw = (w - left - 10) / bins
    parts = [f'<svg viewBox="0 0 {w} {h + bottom}" role="img" aria-label="histogram of {escape(label)}">',
             f'<line x1="{left}" y1="{h}" x2="{w - 10}" y2="{h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="16" text-anchor="end">{top}</text>',
             f'<text x="{left - 6}" y="{h}" text-anchor="end">0</text>']
    label_every = math.ceil(bins / 10)
    for i in range(bins + 1):
        x = left + i * bw
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{h + 16}" text-anchor="middle">{round(lo + i * step, 10):g}</text>')
        if i < bins and counts[i]:
            bh = (h - 10) * counts[i] / top
            a, b = round(lo + i * step, 10), round(lo + (i + 1) * step, 10)
            extra = [f"{below} below {vmin:.4g}"] * (i == 0 and below > 0) + [f"{above} above {vmax:.4g}"] * (i == bins - 1 and above > 0)
            tip = f"[{a:g}, {b:g}): {counts[i]} model(s)" + (f", with {' and '.join(extra)}" if extra else "")
            parts.append(f'<rect class="bar{" clipped" if extra else ""}" x="{x + 1:.1f}" y="{h - bh:.1f}" '
                         f'width="{max(bw - 2, 1):.1f}" height="{bh:.1f}"><title>{escape(tip)}</title></rect>')
    parts.append(f'<text x="{(left + w) / 2:.0f}" y="{h + 38}" text-anchor="middle">{escape(label)}</text></svg>')
    clipped = [f"{below} below {vmin:.4g}"] * (below > 0) + [f"{above} above {vmax:.4g}"] * (above > 0)
    note = f" <small>outliers counted in the end bars: {' and '.join(clipped)}</small>" if clipped else ""
    return "".join(parts), note


def producer_family(producer: str) -> str:
    """The producer without its version ("pytorch 1.8" → "pytorch"; "" → "(none)")."""
    words = producer.split()
    while words and words[-1][:1].isdigit():
        words.pop()
    return " ".join(words) or "(none)"


def _scatter(ok: list[ModelResult], settings: Settings, base: str) -> str:
    """log10 ‖Φ‖_q (the smallest q) against log10 parameters, one dot per model, coloured by producer."""
    q = settings.q[0]
    points = [(math.log10(r.params), v, r) for r in ok if r.params and (v := r.norm_log10(q)) is not None]
    if not points:
        return "<p>No ok model with parameters and a nonzero norm.</p>"
    families = [f for f, _ in Counter(producer_family(r.producer) for *_, r in points).most_common()]
    colour = {f: _PALETTE[min(i, len(_PALETTE) - 1)] for i, f in enumerate(families)}
    x0, x1 = math.floor(min(p[0] for p in points)), math.ceil(max(p[0] for p in points))
    y0, y1 = math.floor(min(p[1] for p in points)), math.ceil(max(p[1] for p in points))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    w, h, left, top, bottom = 720, 360, 50, 10, 40
    sx, sy = (w - left - 180) / (x1 - x0), (h - top - bottom) / (y1 - y0)

    def at(x: float, y: float) -> tuple[float, float]:
        return left + (x - x0) * sx, h - bottom - (y - y0) * sy

    parts = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="log10 path-norm against log10 parameters">',
             f'<rect x="{left}" y="{top}" width="{(x1 - x0) * sx:.1f}" height="{(y1 - y0) * sy:.1f}" fill="none" stroke="#888"/>']
    for k in range(x0, x1 + 1, max(1, math.ceil((x1 - x0) / 10))):
        parts.append(f'<text x="{at(k, y0)[0]:.1f}" y="{h - bottom + 14}" text-anchor="middle">{k}</text>')
    for k in range(y0, y1 + 1, max(1, math.ceil((y1 - y0) / 10))):
        parts.append(f'<text x="{left - 6}" y="{at(x0, k)[1] + 4:.1f}" text-anchor="end">{k}</text>')
    for x, y, r in points:
        cx, cy = at(x, y)
        tip = f"{_rel(r.path, base)}: {r.params} parameters, log10 L{q:g} {y:.3f} ({r.producer or 'no producer'})"
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour[producer_family(r.producer)]}" '
                     f'fill-opacity=".8"><title>{escape(tip)}</title></circle>')
    for i, f in enumerate(families[: len(_PALETTE)]):
        name = f if i < len(_PALETTE) - 1 or len(families) == len(_PALETTE) else "other"
        parts.append(f'<circle cx="{w - 170}" cy="{top + 10 + 18 * i}" r="5" fill="{colour[f]}"/>'
                     f'<text x="{w - 160}" y="{top + 14 + 18 * i}">{escape(_clip(name, 26))}</text>')
    parts.append(f'<text x="{left + (x1 - x0) * sx / 2:.0f}" y="{h - 6}" text-anchor="middle">log10 parameters</text>'
                 f'<text transform="translate(12 {top + (y1 - y0) * sy / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 f"log10 ‖Φ‖_{q:g}</text></svg>")
    return "".join(parts)


def _failures(results: list[ModelResult], base: str) -> str:
    """Refused nodes grouped by op type, then every other failure with its reason."""
    nodes: Counter = Counter()
    models: dict[str, list[int]] = defaultdict(list)
    reasons: dict[str, Counter] = defaultdict(Counter)
    for i, r in enumerate(results):
        for ref in r.refusals:
            nodes[ref["op_type"]] += 1
            reasons[ref["op_type"]][ref["reason"]] += 1
            if i not in models[ref["op_type"]]:
                models[ref["op_type"]].append(i)
    out = []
    if nodes:
        rows = []
        for op, n in sorted(nodes.items(), key=lambda kv: (-len(models[kv[0]]), kv[0])):
            why = "<br>".join(f"{escape(_clip(k, 300))} ({c})" for k, c in reasons[op].most_common(3))
            where = ", ".join(f'<a href="#m{i}">{escape(Path(results[i].path).name)}</a>' for i in models[op][:5])
            more = f" and {len(models[op]) - 5} more" if len(models[op]) > 5 else ""
            rows.append(f"<tr><td>{escape(op)}</td><td class=n>{len(models[op])}</td><td class=n>{n}</td>"
                        f"<td>{why}</td><td>{where}{more}</td></tr>")
        out.append('<table class="sortable wrap"><colgroup><col style="width:12%"><col style="width:6em"><col style="width:6em">'
                   '<col><col style="width:28%"></colgroup><thead><tr><th>op type</th><th>models</th><th>nodes</th>'
                   f"<th>reasons (nodes)</th><th>models</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    others = [(i, r) for i, r in enumerate(results) if r.status not in ("ok", "unsupported")]
    if others:
        rows = [f'<tr><td class="{r.status}">{r.status}</td><td><a href="#m{i}">{escape(_rel(r.path, base))}</a></td>'
                f"<td>{escape(_clip(_unbased(r.brief(), base), 200))}</td></tr>" for i, r in others]
        out.append('<h3>Invalid models, errors and timeouts</h3><table class="sortable wrap"><colgroup><col style="width:7em">'
                   '<col style="width:35%"><col></colgroup><thead><tr><th>status</th>'
                   f"<th>path</th><th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(out) or "<p>No failure.</p>"


#: the models table's font size in px (its column widths are in em)
_TABLE_PX = 13


def _table(results: list[ModelResult], settings: Settings, base: str) -> str:
    """A fixed layout: long strings end in an ellipsis (the full text is the tooltip), but the path wraps at its
    slashes and takes what is left. Tier-1 then tier-2 columns are hidden on windows too narrow to leave the path
    300 px beside them (media queries computed from the widths). ``data-key`` names a column for the filter."""
    heads = [("#", "row", 2.5, 0), ("path", "path", None, 0), ("status", "status", 8, 0), ("reason", "reason", 10, 0),
             ("params", "params", 5.5, 0), *((f"log10 L{q:g}", f"l{q:g}", 6.8, int(k > 0)) for k, q in enumerate(settings.q)),
             ("log10 Lipschitz", "lipschitz", 6.8, 1), ("opset", "opset", 4.2, 2), ("producer", "producer", 8, 1),
             ("KiB", "kib", 4.5, 2), ("wall s", "wall", 4, 2), ("peak MiB", "peak", 4, 2)]
    tier = [f"t{t}" if t else "" for *_, t in heads]
    rows = []
    for i, r in enumerate(results):
        rel = escape(_rel(r.path, base))
        cells = [_num(i), f'<td class="path" title="{rel}"><a href="#m{i}">{rel.replace("/", "/<wbr>")}</a></td>',
                 f'<td class="{r.status}">{r.status}</td>',
                 f'<td title="{escape(_clip(_unbased(r.reason, base), 2000))}">{escape(_clip(_unbased(r.brief(), base), 120))}</td>',
                 _num(r.params), *(_num(r.norm_log10(q), ".6f", f"n {tier[5 + k]}") for k, q in enumerate(settings.q)),
                 _num(r.lipschitz_log10, ".6f", "n t1"), _num(r.opset, cls="n t2"),
                 f'<td class="t1" title="{escape(r.producer)}">{escape(r.producer)}</td>', _num(r.size / 1024, ".1f", "n t2"),
                 _num(r.wall_s, ".3f", "n t2"), _num(r.peak_rss_mb, ".0f", "n t2")]
        rows.append(f'<tr data-i="{i}">{"".join(cells)}</tr>')
    cols = "".join(f'<col class="{c}" style="width:{"auto" if w is None else f"{w}em"}">' for (_, _, w, _), c in zip(heads, tier))
    head = "".join(f'<th class="{c}" data-key="{k}" title="filter this column: {k}:WORD">{escape(h)}</th>'
                   for (h, k, _, _), c in zip(heads, tier))
    media = []
    for t in (2, 1):  # the window width (page margins and a scroll bar included) below which tier t goes
        ems = sum(w for *_, w, tt in heads if w is not None and tt <= t)
        media.append(f"@media (max-width:{math.ceil(ems * _TABLE_PX + 60 + 300)}px){{table.fixed .t{t}{{display:none}}}}")
    return (f'<style>{"".join(media)}</style><table class="sortable fixed" id="models"><colgroup>{cols}</colgroup>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _detail(i: int, r: ModelResult, base: str) -> str:
    items = [("status", f'<span class="{r.status}">{r.status}</span>'), ("sha256", f"<code>{r.sha256}</code>"),
             ("size", f"{r.size} bytes"), ("opset", r.opset), ("producer", escape(r.producer)), ("parameters", r.params),
             ("input shape", escape(json.dumps(r.input_shape))), ("analysed outputs", escape(", ".join(r.outputs))),
             ("layer kinds", escape(", ".join(f"{k} {v}" for k, v in sorted(r.kinds.items()))))]
    for n in r.norms:
        per_output = ", ".join(f"{escape(o)}: {_g6(v)}" for o, v in n.get("per_output_log10", {}).items())
        items.append((f"L{n['q']:g} path-norm",
                       f"{_g6(n['value']) or 'beyond float64'} (log10 {_g6(n['log10'])}; per output log10 {per_output})"))
    items += [("Lipschitz bound log10 (ℓ∞ → ℓ1)", _g6(r.lipschitz_log10)),
              ("notes", "<br>".join(escape(n) for n in r.notes)),
              ("refused nodes", "<br>".join(escape(f"{f['node']} ({f['op_type']}): {f['reason']}") for f in r.refusals)),
              ("reason", f"<pre>{escape(_unbased(r.reason, base))}</pre>" if r.reason else ""),
              ("wall time", f"{r.wall_s:.3f} s" + (f" (timeout {r.timeout_s:g} s)" if r.timeout_s else "")),
              ("peak memory", None if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f} MiB"),
              ("computed", f"{r.computed_at or ''} (run {r.run_id})")]
    rows = "".join(f"<tr><th>{k}</th><td>{'' if v is None else v}</td></tr>" for k, v in items if v not in ("", None, []))
    return (f'<details id="m{i}"><summary><span class="{r.status}">{r.status}</span> {escape(_rel(r.path, base))}</summary>'
            f'<table class="wrap"><colgroup><col style="width:14em"><col></colgroup>{rows}</table></details>')


def _num(x: float | None, fmt: str = "", cls: str = "n") -> str:
    """A numeric cell; ``data-v`` holds the exact value the sort uses."""
    attr = "class=n" if cls == "n" else f'class="{cls.strip()}"'
    if x is None:
        return f'<td {attr} data-v=""></td>'
    return f'<td {attr} data-v="{x!r}">{format(x, fmt)}</td>'


def _g6(x: float | None) -> str | None:
    """At most 6 significant digits (None stays None: past float64 range)."""
    return None if x is None else format(x, ".6g")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
