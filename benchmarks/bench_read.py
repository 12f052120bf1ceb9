#!/usr/bin/env python
"""The reader's checks, before and after issue 29's cut, alternated in one process.

"before" forces the two Python walks ``parse_model`` once made on every file: the memory count
(``wire.within_limit`` answering no) and the UTF-8 walk of the decoded message (``CHECKED_DECODE_BYTES``
below any size); "after" is the code as it is. Each round runs both, in alternating order, on
``load_split`` and then ``compute_norms(path, [1.0])``; it prints the medians of wall and process CPU
time and the CPU the machine's other processes took meanwhile (its busy time less this process's)::

    python benchmarks/bench_read.py --rounds 21 FILE...
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench_pathnorm import CpuWatch

from onnx_pathlift.api import compute_norms
from onnx_pathlift.fileio import load, read

AFTER = (read.within_limit, read.CHECKED_DECODE_BYTES)
MODES = {"before": (lambda data, limit: False, -1), "after": AFTER}


def alternate(run, path: str, rounds: int) -> str:
    """``run(path)`` before and after, ``rounds`` times each: one line of medians."""
    run(path)
    wall, cpu = {m: [] for m in MODES}, {m: [] for m in MODES}
    watch = CpuWatch()
    for r in range(rounds):
        for mode in sorted(MODES, reverse=r % 2 == 1):
            read.within_limit, read.CHECKED_DECODE_BYTES = MODES[mode]
            t, c = time.perf_counter(), time.process_time()
            run(path)
            wall[mode].append(time.perf_counter() - t)
            cpu[mode].append(time.process_time() - c)
    read.within_limit, read.CHECKED_DECODE_BYTES = AFTER
    others, cores = watch.foreign(), os.cpu_count() or 1
    ms = {m: (statistics.median(wall[m]) * 1e3, statistics.median(cpu[m]) * 1e3) for m in MODES}
    return (f"{os.path.basename(path)}: wall {ms['before'][0]:.1f} -> {ms['after'][0]:.1f} ms, CPU {ms['before'][1]:.1f} -> "
            f"{ms['after'][1]:.1f} ms (medians of {rounds}); others' CPU {others:.0%} of {cores} cores")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rounds", type=int, default=21, help="rounds of load_split (a third as many of compute_norms)")
    args = ap.parse_args()
    for name, run, rounds in (("load_split", load.load_split, args.rounds),
                              ("compute_norms", lambda p: compute_norms(p, [1.0]), max(5, args.rounds // 3))):
        for path in args.files:
            print(f"{name:13s} {alternate(run, path, rounds)}", flush=True)


if __name__ == "__main__":
    main()
