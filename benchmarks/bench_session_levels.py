#!/usr/bin/env python
"""Benchmark: onnxruntime's graph-optimisation level for the graphs we build once and run once.

For each model: the lifted network (q = 1 and 2, static scales) and the scores graph (forward +
adjoint), each built into an ``InferenceSession`` at every optimisation level, then run once;
prints session build and run seconds. This is what chose ``make_session(..., rewrites=...)``: no
rewrites for the scores graph, basic ones for lifted networks run once (``norm``), all of them for
sessions run many times.

    python benchmarks/bench_session_levels.py MODEL.onnx [MODEL.onnx ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import onnx_pathlift as pl
from onnx_pathlift.analyses.scores import scores_model
from onnx_pathlift.backend.emit import lifted_bundle
from onnx_pathlift.backend.samples import one_sample

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def build_and_run(built, feeds: dict[str, np.ndarray], level) -> tuple[float, float]:
    """Seconds to build a session on ``built`` (a BuiltModel) at ``level``, and to run it once."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    opts.graph_optimization_level = level
    opts.add_external_initializers(list(built.external), [ort.OrtValue.ortvalue_from_numpy(v) for v in built.external.values()])
    data = built.proto.SerializeToString()
    t0 = time.perf_counter()
    session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    t1 = time.perf_counter()
    session.run(None, feeds)
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    args = parser.parse_args()
    print("| model | graph | nodes | " + " | ".join(f"{k}: build + run s" for k in LEVELS) + " |")
    print("|---|---|---:|" + "---|" * len(LEVELS))
    for path in args.models:
        dag, _ = one_sample(pl.import_model(path))
        feeds = {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}
        graphs = {"lifted q=1,2": lifted_bundle([(dag, 1.0), (dag, 2.0)])[0], "scores": scores_model(dag)[0]}
        for name, built in graphs.items():
            cells = [build_and_run(built, feeds, level) for level in LEVELS.values()]
            print(f"| {path.rsplit('/', 1)[-1]} | {name} | {len(built.proto.graph.node)} | "
                  + " | ".join(f"{b:.2f} + {r:.2f}" for b, r in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
