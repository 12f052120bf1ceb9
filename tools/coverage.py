#!/usr/bin/env python
"""Coverage of real models: ``inspect`` + ``norm --verify`` on each, written as a Markdown table.

Usage::

    python tools/coverage.py                                   # ../shared/zoo, the onnx wheel's light models, exporters
    python tools/coverage.py PATH... -o OUT.md [--timeout S] [--jobs N] [--exporters]

PATH is an .onnx file or a folder (searched recursively for *.onnx). Without PATH the tool covers
every .onnx under ``../shared/zoo`` (beside the clone; skipped with a message when absent) and
``onnx/backend/test/data/light/*.onnx`` of the installed onnx wheel, and writes ``docs/coverage.md``.
Without PATH (or with ``--exporters``) it also covers the exporter corpus of ``tools/exporter_corpus.py``,
generated into a temporary folder: small ReLU networks from each installed exporter, simplified,
optimised and quantized (what could not be produced is listed in the report, with why).

Each model runs in its own forked worker through the Python API (``inspect_model``, then
``PathNormSession(q=1)`` and the re-emission check ``verify``), killed after ``--timeout`` seconds, so
one slow or crashing model only fails its own row. Status per model:

* ``ok``: imported, L1 path-norm computed, re-emission check passed;
* ``refused``: operators outside the supported set (exit code 3), every refused node listed;
* ``invalid``: unreadable or invalid model (exit code 4);
* ``error``: anything else (a usage problem such as symbolic dimensions, a failed re-emission check,
  a timeout, a crash, an internal error).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT.parent / "shared" / "zoo"
STATUSES = ("ok", "refused", "invalid", "error")


def light_dir() -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def default_paths() -> list[Path]:
    paths = []
    if (ZOO / "MANIFEST.txt").is_file():
        paths.append(ZOO)
    else:
        print(f"coverage: the shared zoo is not at {ZOO}; covering the light models only", file=sys.stderr)
    paths.append(light_dir())
    return paths


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for *.onnx; sorted, without duplicates."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.onnx") if q.is_file())
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def source_of(path: Path) -> tuple[str, str]:
    """(source, file) for the table: the zoo folder, the onnx wheel's light models, or the path itself."""
    resolved = path.resolve()
    for label, base in (("zoo", ZOO.resolve()), ("onnx light", light_dir().resolve())):
        if resolved.is_relative_to(base):
            return label, str(resolved.relative_to(base))
    try:
        return "other", str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return "other", str(path)


# ------------------------------------------------------------------------------------------------
# the worker: one model
# ------------------------------------------------------------------------------------------------


def analyse(path: str) -> dict:
    """inspect + L1 path-norm + re-emission check of one model, as a plain dict (runs in the worker)."""
    row: dict = {"status": "error", "layers": None, "params": None, "l1_log10": None, "verify": None,
                 "refusals": [], "reason": "", "notes": []}
    try:
        from onnx_pathlift.analyses.inspection import inspect_model
        from onnx_pathlift.errors import (
            InvalidModelError,
            PathliftError,
            UnsupportedModelError,
        )
        from onnx_pathlift.fileio.load import load_model
        from onnx_pathlift.frontend.importer import import_prepared
        from onnx_pathlift.frontend.prepare import prepare
    except Exception as err:  # noqa: BLE001  (a broken installation: every row says so)
        row["reason"] = f"cannot import onnx_pathlift: {type(err).__name__}: {err}"
        return row
    try:
        report = inspect_model(path)
        row["refusals"] = [(r.node, r.op_type, r.reason) for r in report.refusals]
        row["notes"] = [c for c in report.notes]
        row["layers"] = report.layers if report.status == "ok" else None
        row["params"] = report.parameters
        cut = {op: None for c in report.cut for op, _ in c["nodes"] if op not in ("Cast", "Reshape", "Squeeze",
                                                                                  "Unsqueeze", "Flatten", "CastLike")}
        row["changes"] = "; ".join(x for x in (
            "cut " + ", ".join(cut) if cut else "",
            "decomposed " + ", ".join(i.op_type for i in report.decomposed) if report.decomposed else "",
            f"{report.activation_qdq} activation Q/DQ pair(s) as identity/ReLU" if report.activation_qdq else "",
            "dropped " + ", ".join(repr(d["output"]) for d in report.dropped) if report.dropped else "") if x)
        if report.status == "refused":
            row["status"] = "refused"
            return row
        from onnx_pathlift.backend.norm import PathNormSession
        from onnx_pathlift.backend.verify import verify

        model = load_model(path)
        prepared = prepare(model)
        dag = import_prepared(prepared)
        row["l1_log10"] = PathNormSession(dag, 1.0).run().log10
        check = verify(model, dag, prepared.elem_types, raise_on_failure=False)
        row["verify"] = max(check.max_rel_error.values()) if check.max_rel_error else 0.0
        if check.passed:
            row["status"] = "ok"
        else:
            row["reason"] = f"re-emission check FAILED: max relative error {row['verify']:.3g} (tolerance {check.rtol:g})"
    except UnsupportedModelError as err:  # refused by an analysis step after inspect
        row["status"], row["refusals"] = "refused", [(r.node, r.op_type, r.reason) for r in err.refusals]
    except InvalidModelError as err:
        row["status"], row["reason"] = "invalid", str(err)
    except PathliftError as err:
        row["reason"] = f"{type(err).__name__}: {err}"
    except Exception as err:  # noqa: BLE001  (an internal error: report it, keep going)
        tb = traceback.extract_tb(err.__traceback__)[-1]
        row["reason"] = f"internal error {type(err).__name__}: {err} (at {Path(tb.filename).name}:{tb.lineno})"
    return row


def _worker(path: str, conn) -> None:
    try:
        conn.send(analyse(path))
    finally:
        conn.close()


def run_all(paths: list[Path], timeout: float, jobs: int, progress=True) -> list[dict]:
    """Analyse every model in forked workers, at most ``jobs`` at a time, each killed after ``timeout`` s."""
    ctx = mp.get_context("fork")
    todo = list(enumerate(paths))
    running: dict[int, tuple] = {}
    rows: dict[int, dict] = {}
    while todo or running:
        while todo and len(running) < jobs:
            i, path = todo.pop(0)
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(str(path), send), daemon=True)
            proc.start()
            send.close()
            running[i] = (proc, recv, time.monotonic())
        time.sleep(0.02)
        for i, (proc, recv, t0) in list(running.items()):
            elapsed = time.monotonic() - t0
            row = None
            if recv.poll():
                try:
                    row = recv.recv()
                except EOFError:
                    row = None
                proc.join(5)
                if row is None:
                    row = {"status": "error", "reason": f"worker died (exit code {proc.exitcode})"}
            elif not proc.is_alive():
                proc.join()
                row = {"status": "error", "reason": f"worker died (exit code {proc.exitcode}; out of memory?)"}
            elif elapsed > timeout:
                proc.kill()
                proc.join()
                row = {"status": "error", "reason": f"timed out after {timeout:g} s"}
            if row is None:
                continue
            recv.close()
            del running[i]
            source, file = source_of(paths[i])
            row.update(source=source, file=file, seconds=elapsed)
            rows[i] = row
            if progress:
                print(f"[{len(rows)}/{len(paths)}] {row['status']:8s} {elapsed:7.1f} s  {source}/{file}", file=sys.stderr)
    return [rows[i] for i in range(len(paths))]


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


def _blank(value) -> str:
    return "" if value is None else str(value)


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _refusal_text(refusals: list) -> str:
    """Refusals grouped by (op, reason), each group listing its nodes."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node, op, reason in refusals:
        groups.setdefault((op, reason), []).append(node)
    parts = []
    for (op, reason), nodes in groups.items():
        shown = ", ".join(f"`{n}`" for n in nodes[:8]) + (f" and {len(nodes) - 8} more" if len(nodes) > 8 else "")
        parts.append(f"{op} ×{len(nodes)} ({shown}): {reason}")
    return "<br>".join(_cell(p) for p in parts)


def exporter_rows(timeout: float, jobs: int, folder: Path) -> tuple[list[dict], dict[str, str]]:
    """Generate the exporter corpus into ``folder`` and analyse it (rows labelled ``exporter``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from exporter_corpus import generate

    files, skipped = generate(folder)
    rows = run_all(files, timeout, jobs)
    for row, path in zip(rows, files):
        row["source"], row["file"] = "exporter", path.name
    return rows, skipped


def _skipped_section(skipped: dict[str, str] | None) -> list[str]:
    if skipped is None:
        return []
    lines = ["## Exporter corpus", "",
             "Generated at run time by `tools/exporter_corpus.py` (files `ARCHITECTURE__VARIANT.onnx`: the float export,",
             "`onnxsim`, `ort_basic` / `ort_extended` / `ort_all` (onnxruntime's offline optimiser), `qdq_*` / `qoperator_*` /",
             "`dynamic_*` (onnxruntime's quantizer), `qdq_weights_only_per_channel`). Only files onnxruntime runs are",
             "kept. Not produced:", ""]
    lines += [f"- {_cell(k)}: {_cell(v)}" for k, v in sorted(skipped.items())] or ["- nothing"]
    return lines + [""]


def render(rows: list[dict], command: str, skipped: dict[str, str] | None = None) -> str:
    counts = Counter(r["status"] for r in rows)
    lines = [
        "# Coverage of real models",
        "",
        f"Generated by `{command}`: for each model, `inspect` (what the importer sees) and `norm -q 1 --verify`",
        "(L1 path-norm of the imported DAG and the re-emission check: the DAG, emitted back with its signed",
        "weights and real activations, must reproduce the model's own outputs in onnxruntime). Sources: the",
        "shared zoo beside the clone (`../shared/zoo`, see its MANIFEST.txt) and the onnx wheel's light models",
        "(`onnx/backend/test/data/light`: real architectures, weights built by ConstantOfShape), and the exporter",
        "corpus generated at run time (see below). Regenerate it",
        "after adding an op; statuses: ok / refused (operators outside the supported set, exit 3) / invalid",
        "(unreadable or invalid model, exit 4) / error (anything else: a usage problem, a failed re-emission",
        "check, a timeout).",
        "",
        "## Summary",
        "",
        "| status | models |",
        "|---|---|",
        *[f"| {s} | {counts.get(s, 0)} |" for s in STATUSES],
        f"| **total** | **{len(rows)}** |",
        "",
    ]
    reasons: dict[tuple[str, str], list] = {}
    for r in rows:
        for _, op, reason in r.get("refusals") or []:
            entry = reasons.setdefault((op, reason), [0, set()])
            entry[0] += 1
            entry[1].add(r["file"])
    if reasons:
        lines += ["## Refusal reasons", "", "| op | reason | nodes | models |", "|---|---|---|---|"]
        for (op, reason), (n, files) in sorted(reasons.items(), key=lambda kv: (-len(kv[1][1]), kv[0])):
            lines.append(f"| {_cell(op)} | {_cell(reason)} | {n} | {len(files)} |")
        lines.append("")
    lines += _skipped_section(skipped)
    other = [r for r in rows if r["status"] in ("invalid", "error")]
    if other:
        lines += ["## Invalid models and errors", ""]
        lines += [f"- {r['source']}/`{r['file']}` ({r['status']}): {_cell(r.get('reason', ''))}" for r in other]
        lines.append("")
    lines += ["## Models", "",
              ("| source | file | status | layers | params | L1 path-norm (log10) | verify max error | seconds "
               "| cut / decomposed | refusals / reason |"),
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["source"], r["file"])):
        l1 = r.get("l1_log10")
        l1 = "" if l1 is None else ("-inf" if l1 == -math.inf else f"{l1:.6f}")
        err = "" if r.get("verify") is None else f"{r['verify']:.2e}"
        why = _refusal_text(r.get("refusals") or []) or _cell(r.get("reason", ""))
        cols = [r["source"], f"`{r['file']}`", r["status"], _blank(r.get("layers")), _blank(r.get("params")), l1, err,
                f"{r['seconds']:.1f}", _cell(r.get("changes", "")), why]
        lines.append("| " + " | ".join(str(c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="inspect + norm --verify over many models, as a Markdown table")
    ap.add_argument("paths", nargs="*", type=Path, help=".onnx files or folders (default: the zoo and the light models)")
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "coverage.md", help="where to write the table")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per model (default 600)")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="models analysed at once")
    ap.add_argument("--exporters", action="store_true", help="also the exporter corpus (the default without PATH)")
    args = ap.parse_args(argv)
    paths = expand(args.paths or default_paths())
    missing = [p for p in paths if not p.is_file()]
    if missing:
        ap.error(f"no such file: {missing[0]}")
    if not paths:
        ap.error("no .onnx file found")
    rows = run_all(paths, args.timeout, max(args.jobs, 1))
    skipped = None
    if args.exporters or not args.paths:
        with tempfile.TemporaryDirectory(prefix="pathlift-exporters-") as folder:
            more, skipped = exporter_rows(args.timeout, max(args.jobs, 1), Path(folder))
        rows += more
    shown = ["python tools/coverage.py", *(str(p) for p in args.paths), *(["--exporters"] if args.exporters else [])]
    if args.out != ROOT / "docs" / "coverage.md":
        shown += ["-o", str(args.out)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, " ".join(shown), skipped))
    counts = Counter(r["status"] for r in rows)
    print(f"wrote {args.out}: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in STATUSES), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
