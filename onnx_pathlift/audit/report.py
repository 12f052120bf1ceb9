"""Audit reports: a self-contained HTML page, CSV and JSON Lines (one row / object per model file).

The HTML page has no external resource: status counts, a histogram of log10 path-norms (inline
SVG), failures grouped by op type, a sortable table (small inline script) and per-model details.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ..atomic import atomic_write, write_text
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
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f4f4f4}table.sortable th{cursor:pointer}table.sortable th:hover{background:#e8e8e8}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.unsupported{color:#9a6700}.invalid{color:#8250df}.error{color:#cf222e}.timeout{color:#bc4c00}
.counts span{display:inline-block;margin-right:1.5em;font-size:1.1em}
details{margin:.3em 0}summary{cursor:pointer}pre{white-space:pre-wrap;margin:0}
.bar{fill:#4c78a8}.bar:hover{fill:#f58518}svg text{font:11px system-ui,sans-serif}
"""

_SCRIPT = """
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
"""


def write_html(path: str | Path, audit: Audit, settings: Settings) -> None:
    write_text(path, html_page(audit, settings))


def html_page(audit: Audit, settings: Settings) -> str:
    """The whole report as one self-contained HTML document."""
    results = audit.results
    hist_q = 1.0 if 1.0 in settings.q else settings.q[0]
    values = [v for r in results if r.status == "ok" and (v := r.norm_log10(hist_q)) is not None]
    shape = "from each model" if settings.input_shape is None else escape(str(settings.input_shape))
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>onnx-pathlift audit</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>onnx-pathlift audit</h1>",
        (f"<p>{len(results)} files; q = {', '.join(f'{q:g}' for q in settings.q)}; input shape {shape}; "
         f"onnx-pathlift {escape(settings.version)}; database <code>{escape(str(audit.db))}</code> "
         f"(run {audit.run_id}: {audit.analysed} models analysed, {audit.reused} reused); written {when}.</p>"),
        _counts(results),
        f"<h2>log10 L{hist_q:g} path-norm of the {len(values)} ok models</h2>", _histogram(values, f"log10 ‖Φ‖_{hist_q:g}"),
        "<h2>Why models fail</h2>", _failures(results),
        "<h2>Models</h2><p>Click a column header to sort; click a path for details.</p>", _table(results, settings),
        "<h2>Details</h2>", *(_detail(i, r) for i, r in enumerate(results)),
        f"<script>{_SCRIPT}</script></body></html>",
    ])


def _counts(results: list[ModelResult]) -> str:
    counts = Counter(r.status for r in results)
    spans = "".join(f'<span class="{s}"><b>{counts[s]}</b> {s}</span>' for s in STATUSES)
    return f'<p class="counts">{spans}</p>'


def _histogram(values: list[float], label: str) -> str:
    """Bars of unit width in log10 (wider when the range is large), as inline SVG."""
    if not values:
        return "<p>No ok model.</p>"
    lo, hi = math.floor(min(values)), math.ceil(max(values))
    hi = max(hi, lo + 1)
    step = max(1, math.ceil((hi - lo) / 40))
    bins = math.ceil((hi - lo) / step)
    counts = Counter(min(int((v - lo) // step), bins - 1) for v in values)
    top = max(counts.values())
    w, h, left, bottom = 640, 220, 40, 40
    bw = (w - left - 10) / bins
    parts = [f'<svg width="{w}" height="{h + bottom}" role="img" aria-label="histogram of {escape(label)}">',
             f'<line x1="{left}" y1="{h}" x2="{w - 10}" y2="{h}" stroke="#888"/>',
             f'<text x="{left - 6}" y="14" text-anchor="end">{top}</text>',
             f'<text x="{left - 6}" y="{h}" text-anchor="end">0</text>']
    label_every = math.ceil(bins / 16)
    for i in range(bins + 1):
        x = left + i * bw
        if i % label_every == 0:
            parts.append(f'<text x="{x:.1f}" y="{h + 14}" text-anchor="middle">{lo + i * step}</text>')
        if i < bins and counts[i]:
            bh = (h - 10) * counts[i] / top
            a, b = lo + i * step, lo + (i + 1) * step
            parts.append(f'<rect class="bar" x="{x + 1:.1f}" y="{h - bh:.1f}" width="{max(bw - 2, 1):.1f}" '
                         f'height="{bh:.1f}"><title>[{a}, {b}): {counts[i]} model(s)</title></rect>')
    parts.append(f'<text x="{(left + w) / 2:.0f}" y="{h + 34}" text-anchor="middle">{escape(label)}</text></svg>')
    return "".join(parts)


def _failures(results: list[ModelResult]) -> str:
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
            why = "<br>".join(f"{escape(k)} ({c})" for k, c in reasons[op].most_common(3))
            where = ", ".join(f'<a href="#m{i}">{escape(Path(results[i].path).name)}</a>' for i in models[op][:5])
            more = f" and {len(models[op]) - 5} more" if len(models[op]) > 5 else ""
            rows.append(f"<tr><td>{escape(op)}</td><td class=n>{len(models[op])}</td><td class=n>{n}</td>"
                        f"<td>{why}</td><td>{where}{more}</td></tr>")
        out.append('<table class="sortable"><thead><tr><th>op type</th><th>models</th><th>nodes</th>'
                   f"<th>reasons (nodes)</th><th>models</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    others = [(i, r) for i, r in enumerate(results) if r.status not in ("ok", "unsupported")]
    if others:
        rows = [f'<tr><td class="{r.status}">{r.status}</td><td><a href="#m{i}">{escape(r.path)}</a></td>'
                f"<td>{escape(_clip(r.brief(), 200))}</td></tr>" for i, r in others]
        out.append('<h3>Invalid models, errors and timeouts</h3><table class="sortable"><thead><tr><th>status</th>'
                   f"<th>path</th><th>reason</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(out) or "<p>No failure.</p>"


def _table(results: list[ModelResult], settings: Settings) -> str:
    heads = ["#", "path", "status", "reason", "params", *(f"log10 L{q:g}" for q in settings.q), "log10 Lipschitz",
             "opset", "producer", "KiB", "wall s", "peak MiB"]
    rows = []
    for i, r in enumerate(results):
        cells = [_num(i), f'<td><a href="#m{i}">{escape(r.path)}</a></td>', f'<td class="{r.status}">{r.status}</td>',
                 f'<td title="{escape(r.reason)}">{escape(_clip(r.brief(), 80))}</td>', _num(r.params),
                 *(_num(r.norm_log10(q), ".6f") for q in settings.q), _num(r.lipschitz_log10, ".6f"), _num(r.opset),
                 f"<td>{escape(r.producer)}</td>", _num(r.size / 1024, ".1f"), _num(r.wall_s, ".3f"),
                 _num(r.peak_rss_mb, ".0f")]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _detail(i: int, r: ModelResult) -> str:
    items = [("status", f'<span class="{r.status}">{r.status}</span>'), ("sha256", f"<code>{r.sha256}</code>"),
             ("size", f"{r.size} bytes"), ("opset", r.opset), ("producer", escape(r.producer)), ("parameters", r.params),
             ("input shape", escape(json.dumps(r.input_shape))), ("analysed outputs", escape(", ".join(r.outputs))),
             ("layer kinds", escape(", ".join(f"{k} {v}" for k, v in sorted(r.kinds.items()))))]
    for n in r.norms:
        per_output = ", ".join(f"{escape(o)}: {v}" for o, v in n.get("per_output_log10", {}).items())
        items.append((f"L{n['q']:g} path-norm", f"{n['value']} (log10 {n['log10']}; per output log10 {per_output})"))
    items += [("Lipschitz bound log10 (ℓ∞ → ℓ1)", r.lipschitz_log10),
              ("notes", "<br>".join(escape(n) for n in r.notes)),
              ("refused nodes", "<br>".join(escape(f"{f['node']} ({f['op_type']}): {f['reason']}") for f in r.refusals)),
              ("reason", f"<pre>{escape(r.reason)}</pre>" if r.reason else ""),
              ("wall time", f"{r.wall_s:.3f} s" + (f" (timeout {r.timeout_s:g} s)" if r.timeout_s else "")),
              ("peak memory", None if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f} MiB"),
              ("computed", f"{r.computed_at or ''} (run {r.run_id})")]
    rows = "".join(f"<tr><th>{k}</th><td>{'' if v is None else v}</td></tr>" for k, v in items if v not in ("", None, []))
    return (f'<details id="m{i}"><summary><span class="{r.status}">{r.status}</span> {escape(r.path)}</summary>'
            f"<table>{rows}</table></details>")


def _num(x: float | None, fmt: str = "") -> str:
    if x is None:
        return '<td class=n data-v=""></td>'
    return f'<td class=n data-v="{x!r}">{format(x, fmt)}</td>'


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
