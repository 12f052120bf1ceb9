#!/usr/bin/env python
"""Benchmark: import, lifted-session build and run of the norm at q = 1 and 2, with peak memory.

Run from the repository root, one model per process (peak RSS is per process)::

    python benchmarks/bench_lifted_build.py MODEL.onnx

To compare two trees of the package on the same machine, alternate them::

    for m in light_resnet50 light_densenet121 light_vgg19; do for tree in ../base .; do
      PYTHONPATH=$tree python benchmarks/bench_lifted_build.py \\
        .venv/lib/python3.11/site-packages/onnx/backend/test/data/light/$m.onnx; done; done
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import onnx_pathlift as pl
from onnx_pathlift.backend.norm import LiftedSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    t0 = time.perf_counter()
    dag = pl.import_model(args.model)
    t1 = time.perf_counter()
    session = LiftedSession([(dag, 1.0), (dag, 2.0)])
    t2 = time.perf_counter()
    norms = session.norms()
    t3 = time.perf_counter()
    print(json.dumps({"package": pl.__file__, "model": args.model, "import_s": t1 - t0, "session_s": t2 - t1, "run_s": t3 - t2,
                      "log10": [n.log10 for n in norms], "certified": [getattr(n, "certified", None) for n in norms],
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
