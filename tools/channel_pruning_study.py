#!/usr/bin/env python
"""Channel-pruning study: path-mass vs l1-norm vs random, before and after a random neuron rescaling.

Protocol, per shipped digits model (``models/digits_cnn_torch_bn.onnx``, ``models/digits_mlp_sklearn.onnx``):

* channel groups and scores from ``onnx_pathlift.pruning.channels`` (``path-mass``: Σ f(v)·b(v) over the
  group, ``l1-norm``: Σ |incoming weights|, ``random``: uniform, seeds 0-2), one-shot removal of
  10 %, 20 %, ..., 90 % of the removable groups in each layer (``--scope layer``; path-mass also
  ``global``), no fine-tuning; the slim model is built by ``onnx_pathlift.pruning.slim`` and checked
  against the masked model;
* path-mass and l1-norm also on the model after ``onnx_pathlift.analyses.rescale.rescale`` with λ
  log-uniform in [1/4096, 4096] (seeds 0, 1, 2): whether the same groups are chosen, and accuracy;
* top-1 accuracy of the slim model on ``models/digits_test.npz`` (one onnxruntime batch), float
  parameters, MACs, onnxruntime latency on one input (one thread, median of 200 runs), and the exact
  certificate d(original, masked) as a fraction of ‖Φ‖_1, beside the largest ℓ1 change of the logits
  observed on the test set (which must stay below max(1, R)·d, R = 1).

Results go to ``docs/channel_pruning.json``; ``docs/pruning.md`` describes them. Usage::

    python tools/channel_pruning_study.py          # ~1 min on 2 cores
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from pruning_study import LAMBDA, SEEDS, SPARSITIES, Evaluator  # noqa: E402

from onnx_pathlift import import_model  # noqa: E402
from onnx_pathlift.analyses.metric import path_metric  # noqa: E402
from onnx_pathlift.analyses.rescale import rescale  # noqa: E402
from onnx_pathlift.fileio.load import load_model  # noqa: E402
from onnx_pathlift.frontend.importer import import_prepared  # noqa: E402
from onnx_pathlift.frontend.prepare import prepare  # noqa: E402
from onnx_pathlift.pruning.channels import channel_graph, group_scores  # noqa: E402
from onnx_pathlift.pruning.ranking import choose  # noqa: E402
from onnx_pathlift.pruning.slim import check_slim, float_parameters, latency, layer_costs, masked_model, slim_model  # noqa: E402

MODELS = ["models/digits_cnn_torch_bn.onnx", "models/digits_mlp_sklearn.onnx"]
CURVES = {  # key: (criterion, scope, rescaled)
    "path-mass": ("path-mass", "layer", False),
    "path-mass rescaled": ("path-mass", "layer", True),
    "l1-norm": ("l1-norm", "layer", False),
    "l1-norm rescaled": ("l1-norm", "layer", True),
    "random": ("random", "layer", False),
    "path-mass global": ("path-mass", "global", False),
}


class Variant:
    """One parameterization of the model (as shipped or rescaled) with its groups."""

    def __init__(self, model):
        self.model = model
        self.prepared = prepare(model)
        self.dag = import_prepared(self.prepared, None)
        self.graph = channel_graph(model, self.prepared)
        self.scores: dict[tuple[str, int], np.ndarray] = {}

    def score(self, criterion: str, seed: int) -> np.ndarray:
        key = (criterion, seed if criterion == "random" else 0)
        if key not in self.scores:
            self.scores[key] = group_scores(self.graph, self.prepared, criterion, self.dag, seed)
        return self.scores[key]


def evaluate(v: Variant, removed: list[int], ev: Evaluator, base_logits: np.ndarray, full: bool) -> dict:
    masked, slim = masked_model(v.model, v.graph, removed), slim_model(v.model, v.graph, removed)
    check_slim(masked, slim, v.prepared, list(v.dag.outputs), tolerance=1e-5)
    logits = ev.logits(slim)
    row = {"accuracy": ev.accuracy(logits), "removed_groups": len(removed)}
    if full:
        sp = prepare(slim)
        d = path_metric(v.dag, import_model(masked))
        observed = float(np.abs(logits - base_logits).sum(axis=1).max())
        row.update({"params": float_parameters(slim), "macs": sum(c.macs for c in layer_costs(sp)),
                    "latency_ms": 1e3 * latency(slim, sp, 200), "d_over_norm": 10 ** (d.upper_log10 - d.norm_a_log10),
                    "d": d.upper, "exact": d.exact, "max_observed_l1_change": observed})
        assert observed <= d.upper * (1 + 1e-5), "certificate violated"
    return row


def study(path: str, data) -> dict:
    base = Variant(load_model(ROOT / path))
    ev = Evaluator(base.dag, data["x"].reshape((-1,) + base.dag.layer(base.dag.inputs[0]).shape[1:]).astype(np.float32),
                   data["y"], 1)
    base_logits = ev.logits(base.model)
    rescaled = {s: Variant(rescale(base.model, base.dag, s, *LAMBDA)[0]) for s in SEEDS}
    sp0 = base.prepared
    res = {"model": path, "groups": len(base.graph.groups), "removable_groups": len(base.graph.removable()),
           "accuracy_dense": ev.accuracy(base_logits), "params": float_parameters(base.model),
           "macs": sum(c.macs for c in layer_costs(sp0)), "latency_ms": 1e3 * latency(base.model, sp0, 200),
           "curves": {}}
    for name, (criterion, scope, is_rescaled) in CURVES.items():
        rows = []
        for s in SPARSITIES:
            runs, same = [], []
            for seed in SEEDS if (is_rescaled or criterion == "random") else [0]:
                v = rescaled[seed] if is_rescaled else base
                removed = choose(v.graph, v.score(criterion, seed), s, scope)
                runs.append(evaluate(v, removed, ev, base_logits, full=not is_rescaled and seed == 0))
                if is_rescaled:
                    same.append(removed == choose(base.graph, base.score(criterion, 0), s, scope))
            row = {"sparsity": s, **runs[0], "accuracy": float(np.mean([r["accuracy"] for r in runs])),
                   "accuracy_runs": [r["accuracy"] for r in runs]}
            if is_rescaled:
                row["same_groups_as_original"] = same
            rows.append(row)
        res["curves"][name] = rows
        print(f"{path} {name:20s} " + " ".join(f"{r['accuracy']:.3f}" for r in rows), flush=True)
    return res


def main() -> int:
    data = np.load(ROOT / "models/digits_test.npz")
    out = {"sparsities": SPARSITIES, "seeds": SEEDS, "lambda_range": LAMBDA, "models": [study(m, data) for m in MODELS]}
    (ROOT / "docs/channel_pruning.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
