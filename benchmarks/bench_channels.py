"""Benchmark: structured (channel) pruning of ResNet-18, MobileNetV2 and DenseNet-121 (random weights).

Run as a script, in one process (each model is built in plain torch from ``tests/torch_archs.py``
with seeded random weights and BatchNorm statistics, exported by torch's TorchScript exporter at run
time, then pruned by ``onnx_pathlift.pruning.ranking.prune_channels``):

    python benchmarks/bench_channels.py [--sparsity 0.5] [--criterion path-mass] [--scope layer] [--repeats 10]

Reports per model: removable channel groups and how many were removed, float parameters and MACs
before/after, onnxruntime latency before/after (one thread, median of ``--repeats`` runs, the two
sessions timed in alternating blocks), slim-vs-masked max relative error and the exact path-metric
certificate d(original, masked). Goal (issue "structured path-magnitude pruning"): at 50 % of the
removable channel groups removed, parameters ≤ 70 % and latency ≤ 0.75× the original's.
Needs torch (``pip install torch==2.13.0``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch_archs  # noqa: E402

from onnx_pathlift.analyses.metric import path_metric  # noqa: E402
from onnx_pathlift.backend.runtime import make_session  # noqa: E402
from onnx_pathlift.fileio.load import load_model  # noqa: E402
from onnx_pathlift.frontend.importer import import_model, import_prepared  # noqa: E402
from onnx_pathlift.frontend.prepare import prepare  # noqa: E402
from onnx_pathlift.pruning.ranking import prune_channels  # noqa: E402
from onnx_pathlift.pruning.slim import float_parameters, layer_costs, random_feeds  # noqa: E402

MODELS = {"resnet18": 32, "mobilenet_v2": 224, "densenet121": 224}
GOAL_PARAMS, GOAL_LATENCY = 0.70, 0.75


def export(name: str, size: int, folder: Path) -> onnx.ModelProto:
    fn = getattr(torch_archs, name)
    torch.manual_seed(0)
    net = torch_archs.randomise(fn(), 1).eval()
    path = folder / f"{name}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=13,
                      input_names=["input"], output_names=["logits"])
    return load_model(path)


def latencies(a: onnx.ModelProto, b: onnx.ModelProto, prepared, repeats: int) -> tuple[float, float]:
    """Median seconds per run of ``a`` and ``b`` (one thread each), timed in alternating blocks."""
    sa, sb = make_session(a, threads=1), make_session(b, threads=1)
    feeds = random_feeds(prepared)
    ta, tb = [], []
    for s in (sa, sb):
        s.run(None, feeds)
    for _ in range(repeats):
        for s, times in ((sa, ta), (sb, tb)):
            t0 = time.perf_counter()
            s.run(None, feeds)
            times.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def bench(name: str, size: int, args, folder: Path) -> dict:
    model = export(name, size, folder)
    t0 = time.perf_counter()
    prepared = prepare(model)
    dag = import_prepared(prepared, None)
    result = prune_channels(model, prepared, dag, args.sparsity, args.criterion, args.scope)
    seconds = time.perf_counter() - t0
    slim_prepared = prepare(result.slim)
    macs = [sum(c.macs for c in layer_costs(p)) for p in (prepared, slim_prepared)]
    params = [float_parameters(model), float_parameters(result.slim)]
    before, after = latencies(model, result.slim, prepared, args.repeats)
    metric = path_metric(dag, import_model(result.masked)) if args.certificate else None
    row = {"model": name, "input": [1, 3, size, size], "removable_groups": len(result.graph.removable()),
           "removed_groups": len(result.removed), "groups": len(result.graph.groups),
           "params_before": params[0], "params_after": params[1], "params_ratio": params[1] / params[0],
           "macs_before": macs[0], "macs_after": macs[1], "macs_ratio": macs[1] / macs[0],
           "latency_before_ms": 1e3 * before, "latency_after_ms": 1e3 * after, "latency_ratio": after / before,
           "slim_vs_masked_max_rel_error": result.slim_error, "prune_seconds": seconds,
           "certificate": None if metric is None else {"exact": metric.exact, "d_log10": metric.upper_log10,
                                                       "norm_log10": metric.norm_a_log10}}
    row["goal_met"] = row["params_ratio"] <= GOAL_PARAMS and row["latency_ratio"] <= GOAL_LATENCY
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--criterion", default="path-mass", choices=["path-mass", "l1-norm", "random"])
    ap.add_argument("--scope", default="layer", choices=["global", "layer"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--certificate", action="store_true", help="also compute d(original, masked) (three passes)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            row = bench(name, MODELS[name], args, Path(tmp))
            rows.append(row)
            print(f"{name:13s} groups {row['removed_groups']}/{row['removable_groups']} removed  "
                  f"params {row['params_before']:>9} → {row['params_after']:<9} ({row['params_ratio']:.1%})  "
                  f"MACs {row['macs_ratio']:.1%}  latency {row['latency_before_ms']:.2f} → {row['latency_after_ms']:.2f} ms "
                  f"({row['latency_ratio']:.2f}×)  slim err {row['slim_vs_masked_max_rel_error']:.1e}  "
                  f"prune {row['prune_seconds']:.1f} s  goal {'met' if row['goal_met'] else 'NOT met'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["goal_met"] for r in rows) else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
