#!/usr/bin/env python
"""Benchmark: ``onnx-pathlift audit`` throughput (models per minute) vs a bare onnxruntime loop.

Run from the repository root (a script, not a pytest test)::

    python benchmarks/bench_audit.py [--jobs 2] [--repeat 3] [--json out.json] [FOLDER]

FOLDER defaults to ``../shared/zoo`` (``models/`` when the zoo is absent). On the same machine and
in the same run:

(a) bare loop, in this process, serially: for each ``*.onnx`` file, ``InferenceSession`` + one run on
    random float32 inputs of its static shape (symbolic dimensions: 1); files onnxruntime cannot
    load or run are skipped and counted (``benchmarks/bare_loop.py``). Median of ``--repeat`` passes.
(a') the same loop as a command: ``python benchmarks/bare_loop.py FILES`` in a fresh interpreter,
    wall clock including its start and imports, like (b). Median of ``--repeat`` runs.
(b) the audit as a user runs it: ``onnx-pathlift audit FOLDER --jobs N`` as a subprocess, on a fresh
    database (L1/L2/L4 path-norms and the Lipschitz bound of every model, each in an isolated
    worker), wall clock including the interpreter's start. Median of ``--repeat`` audits.
(c) the same audit again on its database (everything reused): the cost of resuming.
(d) the audit's analysis alone, serially in this process without isolation
    (``onnx_pathlift.audit.analyse.analyse``): what the workers compute, for comparison with (b).

Rates count every file (ok or not). Goal: rate(b) ≥ 0.5 × rate(a); both (a) and (a') are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
from bare_loop import bare_loop
from bench_pathnorm import CpuWatch, cli_command, machine_info, wait_quiet

from onnx_pathlift.audit.analyse import analyse
from onnx_pathlift.audit.files import discover, task_for
from onnx_pathlift.audit.record import Settings

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT.parent / "shared" / "zoo"
GOAL = 0.5


def bare_loop_script(files: list[str]) -> float:
    """(a'): wall seconds of ``python benchmarks/bare_loop.py FILES`` (interpreter start and imports of
    numpy and onnxruntime included, as the audit CLI's are)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).with_name("bare_loop.py")), *files], capture_output=True, check=True)
    return time.perf_counter() - t0


def audit_cli(folder: Path, db: Path, jobs: int) -> tuple[float, list[dict]]:
    """(b) and (c): wall seconds of the CLI audit, and its JSON Lines results."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cli_command(), "audit", str(folder), "--jobs", str(jobs), "--db", str(db), "--json"],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_audit: the audit failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, [r for r in map(json.loads, proc.stdout.splitlines()) if "summary" not in r]  # the last line sums up


def serial_analysis(files: list[str]) -> float:
    """(d): seconds to hash and analyse every file in this process, one after the other."""
    settings = Settings()
    t0 = time.perf_counter()
    for path in files:
        analyse(task_for(path), settings)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, help="models to audit (default: the zoo, else models/)")
    parser.add_argument("--jobs", type=int, default=2, help="audit worker processes (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="passes of (a), (a') and (b) (median; default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    folder = args.folder or (ZOO if ZOO.is_dir() else ROOT / "models")
    files = discover([folder])
    n = len(files)

    noise: dict[str, float] = {}  # share of the CPU used by other processes during each measure

    def measure(name: str, fn):
        wait_quiet(30)
        watch = CpuWatch()
        out = fn()
        noise[name] = watch.foreign()
        return out

    bare_loop(files[:5])  # warm-up: onnxruntime's first session is slower
    passes = measure("bare_loop", lambda: [bare_loop(files) for _ in range(args.repeat)])
    t_bare, skipped = statistics.median(t for t, _ in passes), passes[0][1]
    t_script = statistics.median(measure("bare_script", lambda: [bare_loop_script(files) for _ in range(args.repeat)]))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        runs = measure("audit", lambda: [audit_cli(folder, db.with_suffix(f".{i}.sqlite"), args.jobs) for i in range(args.repeat)])
        t_audit, results = statistics.median(t for t, _ in runs), runs[-1][1]
        db = db.with_suffix(f".{args.repeat - 1}.sqlite")  # (c) resumes the last one
        t_resume, _ = measure("audit_resume", lambda: audit_cli(folder, db, args.jobs))
    t_serial = measure("serial_analysis", lambda: serial_analysis(files))

    def rate(seconds: float) -> float:
        return 60.0 * n / seconds

    statuses: dict[str, int] = {}
    for r in results:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    slowest = sorted(results, key=lambda r: -r["wall_s"])[:5]
    worker_s = sum(r["wall_s"] for r in {r["sha256"]: r for r in results}.values())
    figures = {
        "machine": machine_info(), "folder": str(folder), "files": n, "jobs": args.jobs, "statuses": statuses,
        "bare_loop": {"seconds": t_bare, "models_per_min": rate(t_bare), "skipped": skipped, "repeat": args.repeat},
        "bare_script": {"seconds": t_script, "models_per_min": rate(t_script)},
        "audit": {"seconds": t_audit, "models_per_min": rate(t_audit), "worker_seconds": worker_s},
        "audit_resume": {"seconds": t_resume, "models_per_min": rate(t_resume)},
        "serial_analysis": {"seconds": t_serial, "models_per_min": rate(t_serial)},
        "ratio_audit_over_bare": t_bare / t_audit, "ratio_audit_over_bare_script": t_script / t_audit, "goal": GOAL, "foreign_cpu_share": noise,
        "slowest": [{"path": r["path"], "wall_s": r["wall_s"], "status": r["status"]} for r in slowest],
    }
    print(f"{n} files in {os.path.relpath(folder)} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}); "
          f"{figures['machine']['usable_cores']} usable cores, onnxruntime {ort.__version__}")
    print(f"(a) bare onnxruntime loop:      {t_bare:8.2f} s  {rate(t_bare):8.0f} models/min  ({skipped} skipped)")
    print(f"(a') the same loop as a command: {t_script:5.2f} s  {rate(t_script):8.0f} models/min  (interpreter start included)")
    print(f"(b) audit --jobs {args.jobs} (CLI):       {t_audit:8.2f} s  {rate(t_audit):8.0f} models/min  "
          f"(workers busy {worker_s:.2f} s in all)")
    print(f"(c) audit again (all reused):   {t_resume:8.2f} s  {rate(t_resume):8.0f} models/min")
    print(f"(d) analysis, serial, in-process: {t_serial:6.2f} s  {rate(t_serial):8.0f} models/min")
    for label, t in (("(b)/(a) in-process loop", t_bare), ("(b)/(a') loop as a command", t_script)):
        verdict = "meets" if t / t_audit >= GOAL else "misses"
        print(f"rate {label} = {t / t_audit:.3f} ({verdict} the goal ≥ {GOAL})")
    print("CPU share used by other processes meanwhile: " + ", ".join(f"{k} {v:.0%}" for k, v in noise.items()))
    print("slowest models in the audit: " + ", ".join(f"{Path(r['path']).name} {r['wall_s']:.2f} s" for r in slowest))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
