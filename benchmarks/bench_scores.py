"""Benchmark: path-magnitude scores (forward + adjoint graph) vs one plain onnxruntime inference.

Run as a script, in one process on one machine (both sessions built first, then timed in
alternating blocks of runs; medians):

    python benchmarks/bench_scores.py [--repeat 10] [MODEL ...]

Default models: the shipped digits CNN and the onnx wheel's light ResNet-50 (25.6 M parameters).
Goal (issue "path-magnitude pruning"): scores ≤ 4× one plain inference of the original model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_pathlift import import_model
from onnx_pathlift.analyses.scores import scores_model
from onnx_pathlift.backend.runtime import make_session

ROOT = Path(__file__).resolve().parent.parent
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench(path: Path, repeat: int) -> dict:
    dag = import_model(path)
    shape = dag.layer(dag.inputs[0]).shape
    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = {plain.get_inputs()[0].name: np.random.default_rng(0).random(shape, np.float32)}
    t0 = time.perf_counter()
    proto, _ = scores_model(dag)
    scores = make_session(proto)
    build = time.perf_counter() - t0
    ones = {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}
    plain_ms, scores_ms = [], []
    for _ in range(3):  # alternating blocks: onnxruntime's spinning threads must not overlap
        plain_ms.append(_median_ms(lambda: plain.run(None, x), repeat))
        scores_ms.append(_median_ms(lambda: scores.run(None, ones), repeat))
    p, s = statistics.median(plain_ms), statistics.median(scores_ms)
    return {"model": path.name, "params": dag.n_params, "plain_ms": p, "scores_ms": s, "ratio": s / p,
            "build_s": build, "nodes": len(proto.proto.graph.node)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    models = args.models or [ROOT / "models" / "digits_cnn_torch_bn.onnx", LIGHT / "light_resnet50.onnx"]
    print(f"onnxruntime {ort.__version__}, {ort.get_device()}")
    print("| model | params | plain inference ms | scores (forward + adjoint) ms | ratio (goal ≤ 4) | graph build s | nodes |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in models:
        r = bench(path, args.repeat)
        print(f"| {r['model']} | {r['params']:,} | {r['plain_ms']:.3f} | {r['scores_ms']:.3f} | {r['ratio']:.2f} "
              f"| {r['build_s']:.2f} | {r['nodes']} |")


if __name__ == "__main__":
    main()
