#!/usr/bin/env python
"""Benchmark: wall times of CLI commands on the shipped models, this tree against another one.

Run from the repository root (a script, not a pytest test)::

    mkdir before && git archive <commit> | tar -x -C before
    python benchmarks/bench_commands.py --before before [--repeat N]

Each command runs as ``python -m onnx_pathlift.cli ...`` with ``PYTHONPATH`` set to one tree or the
other, alternately (before, after, before, ...), ``OMP_NUM_THREADS=1``; the medians of ``N`` runs each and
their ratio are printed. On a loaded machine, read ratios, not seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
M = "models/"
COMMANDS = [["norm", M + "digits_cnn_torch_bn.onnx", "-q", "1", "-q", "2", "-q", "4", "-q", "inf"],
            ["norm", M + "digits_mlp_sklearn.onnx", "-q", "1", "-q", "inf"],
            ["compare", M + "digits_cnn_torch_bn.onnx", M + "digits_cnn_torch_bn_int8.onnx"],
            ["compare", M + "digits_cnn_torch_bn.onnx", M + "digits_cnn_torch_bn_pruned50.onnx"],
            ["lipschitz", M + "digits_cnn_torch_bn.onnx"]]


def wall(tree: Path, command: list[str]) -> float:
    """Seconds of one CLI run of ``tree``'s package, run from ``tree`` (``python -m`` puts the working
    folder first on the path; each tree has its ``models/``)."""
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnx_pathlift.cli", *command], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed under {tree}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="the other tree (an export of an earlier commit)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per command and tree (default 5)")
    args = ap.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    for command in COMMANDS:
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.repeat):
            for name, tree in trees.items():
                times[name].append(wall(tree, command))
        before, after = (statistics.median(times[name]) for name in trees)
        label = " ".join(c.removeprefix(M) for c in command)
        print(f"{label:64s} before {before:6.2f} s  after {after:6.2f} s  ratio {after / before:.3f}", flush=True)


if __name__ == "__main__":
    main()
