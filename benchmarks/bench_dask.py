#!/usr/bin/env python
"""Benchmark: the audit's rate on Dask against the local pool, with the same number of workers.

Run from the repository root (a script, not a pytest test; needs ``pip install -e ".[dask]"``)::

    python benchmarks/bench_dask.py [--workers 2] [--repeat 3] [--json out.json] [FOLDER]

FOLDER defaults to ``../shared/zoo``. Each round, on a fresh database each time, times the CLI as a
user runs it (``onnx-pathlift audit FOLDER --json``, interpreter start included):

(local)    ``--jobs N``: the local pool of N worker processes;
(separate) ``--scheduler``: a ``dask scheduler`` and N ``dask worker --nthreads 1`` processes started
           here on 127.0.0.1 before the first round (round 1 starts their analysis processes, later
           rounds reuse them: "cold" and "warm");
(cluster)  ``--scheduler``: a ``distributed.LocalCluster(n_workers=N, threads_per_worker=1)``.

``--preload`` starts both clusters' workers with ``--preload onnx_pathlift.audit.cluster`` (their
analysis processes start with them, so round 1 is warm too).

Rates count every file; the goal is rate(Dask) ≥ 0.8 × rate(local). Results must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pathnorm import cli_command

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT.parent / "shared" / "zoo"
GOAL = 0.8


def audit(folder: Path, db: Path, *extra: str) -> tuple[float, dict[str, tuple]]:
    """Wall seconds of one CLI audit and ``{path: (status, log10 norms)}``."""
    t0 = time.perf_counter()
    proc = subprocess.run([*cli_command(), "audit", str(folder), "--db", str(db), "--json", *extra],
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"bench_dask: the audit failed ({proc.returncode}): {proc.stderr[-2000:]}")
    rows = [r for r in map(json.loads, proc.stdout.splitlines()) if "summary" not in r]
    return elapsed, {r["path"]: (r["status"], tuple(n["log10"] for n in r["norms"])) for r in rows}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_separate(workers: int, folder: Path, preload: list[str]) -> tuple[str, list[subprocess.Popen]]:
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes on 127.0.0.1 (no dashboards)."""
    from distributed import Client

    dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or "dask"
    address = f"tcp://127.0.0.1:{free_port()}"
    log = open(folder / "dask.log", "w")  # noqa: SIM115 (kept open for the processes' lifetime)
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard"], stdout=log, stderr=log)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                                "--no-dashboard", *preload], stdout=log, stderr=log) for _ in range(workers)]
    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return address, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=ZOO, help="models to audit (default: the zoo)")
    parser.add_argument("--workers", type=int, default=2, help="local jobs = Dask workers (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--preload", action="store_true",
                        help="start the Dask workers with --preload onnx_pathlift.audit.cluster (analysis processes ready)")
    args = parser.parse_args()
    from distributed import LocalCluster

    from onnx_pathlift.audit.files import discover

    n = len(discover([args.folder]))
    tmp = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    times: dict[str, list[float]] = {"local": [], "separate": [], "cluster": []}
    answers = []
    preload = ["onnx_pathlift.audit.cluster"] if args.preload else []
    address, procs = start_separate(args.workers, tmp, [a for m in preload for a in ("--preload", m)])
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=":0", preload=preload)
    try:
        for k in range(args.repeat):
            for name, extra in (("local", ("--jobs", str(args.workers))), ("separate", ("--scheduler", address)),
                                ("cluster", ("--scheduler", cluster.scheduler_address))):
                t, rows = audit(args.folder, tmp / f"{name}{k}.sqlite", *extra)
                times[name].append(t)
                answers.append(rows)
                print(f"round {k + 1} {name:9s} {t:7.2f} s  {60 * n / t:7.0f} models/min", flush=True)
    finally:
        cluster.close()
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait()
    same = all(a == answers[0] for a in answers)
    load = os.getloadavg()
    local = statistics.median(times["local"])
    figures = {"files": n, "workers": args.workers, "preload": args.preload, "times_s": times, "identical_results": same,
               "load_average_1_5_15": load}
    print(f"{n} files, {args.workers} workers, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"results identical across all runs: {same}")
    for name in ("separate", "cluster"):
        warm = statistics.median(times[name][1:]) if len(times[name]) > 1 else times[name][0]
        ratio_cold, ratio_warm = times["local"][0] / times[name][0], local / warm
        figures[f"{name}_ratio_cold"], figures[f"{name}_ratio_warm"] = ratio_cold, ratio_warm
        print(f"rate {name} / local: round 1 (cold) {ratio_cold:.2f}, later rounds (median) {ratio_warm:.2f} "
              f"(goal ≥ {GOAL})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
