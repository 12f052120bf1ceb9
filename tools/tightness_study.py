#!/usr/bin/env python
"""Tightness study: the certificate of ``compare`` against the largest output change we can find,
and against the generic parameter-space bound (the paper's eq. (2)), on the same pair and after a
random neuron rescaling of B (same function, same path-lifting, other weights).

Pairs, per base model A: 50% global magnitude pruning; fp16 (every float initializer rounded to
float16); int8 weights only (the weights of onnxruntime's static QDQ int8 model in A's float
architecture); int8 QDQ as shipped (activations quantized too); noisy with sign flips (U(0.5, 1.5)
noise on Conv/Gemm/MatMul weights and biases, then 5% of the weights negated); rescaled (A against
itself after ``onnx_pathlift.analyses.rescale.rescale``, λ log-uniform in [1/8, 8]).

Columns: the certificate (weight term + activation term) for ‖x‖_∞ ≤ R; the largest ℓ1 output change
over ``--samples`` random inputs (half uniform, half corners) and after ``--search`` more steps of the
coordinate-ascent search of ``onnx_pathlift.analyses.metric.search_box``; eq. (2) read on DAGs as
``(W·R + 1)·W·L²·ρ^(L−1)·‖θ − θ'‖_∞`` (constant 1: W the widest layer, L the number of Conv/Gemm/MatMul
layers, ρ the largest ℓ∞ operator norm of a parameterised layer of A or B), on the pair and on
(A, rescaled B), and our certificate on (A, rescaled B).

Usage::

    python tools/tightness_study.py                 # shipped models + two zoo networks, ~2 min on 2 cores
    python tools/tightness_study.py --json docs/tightness.json --markdown
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from onnx_pathlift import import_model
from onnx_pathlift.analyses.check import check_bound
from onnx_pathlift.analyses.metric import pair_layers, path_metric
from onnx_pathlift.analyses.quant_bound import certify
from onnx_pathlift.analyses.rescale import rescale
from onnx_pathlift.ir.dag import Dag
from onnx_pathlift.ops import LAYER_OPS
from onnx_pathlift.rewrite.transforms import with_params_of

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits_test.npz"
BASES = [ROOT / "models" / "digits_cnn_torch_bn.onnx", ROOT / "models" / "digits_cnn_torch.onnx",
         ROOT / "models" / "digits_mlp_sklearn.onnx",
         ROOT.parent / "shared" / "zoo" / "vnncomp2021" / "mnistfc" / "mnist-net_256x4.onnx",
         ROOT.parent / "shared" / "zoo" / "vnncomp2021" / "cifar10_resnet" / "onnx" / "resnet_2b.onnx"]


def _weights(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Initializer names of the Conv/Gemm/MatMul weights and of their biases."""
    inits = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    weights = [n.input[1] for n in nodes if len(n.input) > 1 and n.input[1] in inits]
    biases = [n.input[2] for n in nodes if len(n.input) > 2 and n.input[2] in inits]
    return list(dict.fromkeys(weights)), list(dict.fromkeys(biases))


def _replaced(model: onnx.ModelProto, new: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in new:
            t.CopyFrom(numpy_helper.from_array(new[t.name].astype(numpy_helper.to_array(t).dtype), t.name))
    return out


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def pruned(model: onnx.ModelProto, frac: float = 0.5) -> onnx.ModelProto:
    """Global magnitude pruning of the Conv/Gemm/MatMul weights."""
    arrays, (weights, _) = _arrays(model), _weights(model)
    threshold = np.quantile(np.concatenate([np.abs(arrays[n]).ravel() for n in weights]), frac)
    return _replaced(model, {n: np.where(np.abs(arrays[n]) < threshold, 0, arrays[n]) for n in weights})


def fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    arrays = _arrays(model)
    return _replaced(model, {n: v.astype(np.float16).astype(np.float32) for n, v in arrays.items() if v.dtype == np.float32})


def noisy_flip(model: onnx.ModelProto, rng: np.random.Generator, frac: float = 0.05) -> onnx.ModelProto:
    arrays, (weights, biases) = _arrays(model), _weights(model)
    new = {n: arrays[n] * rng.uniform(0.5, 1.5, arrays[n].shape) for n in weights + biases}
    for n in weights:
        new[n] = np.where(rng.random(new[n].shape) < frac, -new[n], new[n])
    return _replaced(model, new)


def qdq(model: onnx.ModelProto, calibration: list[dict]) -> onnx.ModelProto:
    """onnxruntime's static QDQ int8 quantizer (per-tensor), calibrated on ``calibration``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=False,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def calibration(dag: Dag, rng: np.random.Generator, n: int = 60) -> list[dict]:
    """Digits images where the input is 64 pixels, else uniform [0, 1] noise."""
    (name,) = dag.inputs
    shape = dag.layer(name).shape
    if int(np.prod(shape)) == 64:
        x = np.load(DIGITS)["x"]
        return [{name: x[i].reshape(shape).astype(np.float32)} for i in range(n)]
    return [{name: rng.uniform(0, 1, shape).astype(np.float32)} for _ in range(n)]


def eq2(a: Dag, b: Dag, r: float) -> float:
    """The generic bound's scaling ``(W·r + 1)·W·L²·ρ^(L−1)·‖θ − θ'‖_∞`` (constant 1), read on DAGs."""
    pairs = pair_layers(a, b)
    width = max(int(np.prod(layer.shape[1:])) for layer in a.layers())
    scored = {layer.name for layer in a.layers() if layer.op in LAYER_OPS and LAYER_OPS[layer.op].scored}
    depth = max(sum(1 for n in p if n in scored) for p in _longest_paths(a))
    rho = max(2.0 ** LAYER_OPS[x.op].linf_gain(x) for d in (a, b) for x in d.layers() if x.params)
    dtheta = max(float(np.max(np.abs(layer.params[k] - b.layer(pairs[layer.name]).params[k])))
                 for layer in a.layers() for k in layer.params)
    return (width * r + 1) * width * depth**2 * rho ** max(depth - 1, 0) * dtheta


def _longest_paths(dag: Dag) -> list[list[str]]:
    return [nx.dag_longest_path(dag.graph)]


def observe(model_a, model_b, dag_a: Dag, dag_b: Dag, metric, cert, r: float, samples: int, search: int) -> dict:
    """Largest change over the samples only, and after the search (models as shipped when quantized)."""
    act = cert.activation.term
    runs = [check_bound(model_a, model_b, dag_a, dag_b, metric, r, samples, search=s, activation=act, seed=1)
            for s in (0, search)]
    pick = [rep.shipped_max_observed if rep.shipped_max_observed is not None else rep.max_observed for rep in runs]
    assert not any(rep.violated for rep in runs), "certificate exceeded: a bug"
    return {"sampled": pick[0], "searched": pick[1]}


def study_pair(label: str, model_a, model_b, dag_a: Dag, dag_b: Dag, rescaled_b, r: float, samples: int, search: int) -> dict:
    metric = path_metric(dag_a, dag_b)
    cert = certify(dag_a, dag_b, metric.bound_log10(r), r)
    row = {"pair": label, "route": metric.route, "exact": metric.exact, "certificate": cert.total,
           "weight_term": 10 ** metric.bound_log10(r), "activation_term": cert.activation.term,
           **observe(model_a, model_b, dag_a, dag_b, metric, cert, r, samples, search), "eq2": eq2(dag_a, dag_b, r)}
    if rescaled_b is not None:
        dag_rb = import_model(rescaled_b)
        m2 = path_metric(dag_a, dag_rb)
        row |= {"eq2_rescaled": eq2(dag_a, dag_rb, r), "certificate_rescaled": 10 ** m2.bound_log10(r)}
    return row


def study(path: Path, r: float, samples: int, search: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    model = onnx.load(path)
    dag = import_model(model)
    pairs: list[tuple[str, onnx.ModelProto | None, Dag]] = []
    for label, b in (("pruned 50%", pruned(model)), ("fp16", fp16(model)), ("noisy + 5% flips", noisy_flip(model, rng)),
                     ("rescaled", rescale(model, dag, seed=seed)[0])):
        pairs.append((label, b, import_model(b)))
    try:
        q = qdq(model, calibration(dag, rng))
        dag_q = import_model(q)
        pairs += [("int8 weights only", None, with_params_of(dag, dag_q, pair_layers(dag, dag_q))), ("int8 QDQ", q, dag_q)]
    except Exception as err:  # noqa: BLE001 - a model the quantizer or the importer cannot handle: say so
        print(f"{path.name}: no int8 pair ({type(err).__name__}: {err})", file=sys.stderr)
    rows = []
    for label, b, dag_b in pairs:
        rb = rescale(b, dag_b, seed=seed + 1)[0] if b is not None and label not in ("int8 QDQ", "rescaled") else None
        rows.append({"model": path.name, **study_pair(label, model, b, dag, dag_b, rb, r, samples, search)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _fmt(x) -> str:
    return "–" if x is None else (f"{x:.3g}" if isinstance(x, float) and math.isfinite(x) else str(x))


def markdown(rows: list[dict]) -> str:
    head = ("| model | pair | route | certificate | found: samples | found: + search | found / cert. | eq. (2) "
            "| eq. (2), B rescaled | ours, B rescaled |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for x in rows:
        ratio = x["searched"] / x["certificate"] if x["certificate"] else None
        lines.append(f"| {x['model']} | {x['pair']} | {x['route']} | {_fmt(x['certificate'])} | {_fmt(x['sampled'])} | "
                     f"{_fmt(x['searched'])} | {_fmt(ratio)} | {_fmt(x['eq2'])} | {_fmt(x.get('eq2_rescaled'))} | "
                     f"{_fmt(x.get('certificate_rescaled'))} |")
    return head + "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input-linf", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--search", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every row here")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = ap.parse_args()
    rows = [row for p in BASES if p.exists() for row in study(p, args.input_linf, args.samples, args.search, args.seed)]
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"input_linf": args.input_linf, "samples": args.samples, "search": args.search,
                                   "rows": rows}, indent=1))
        tmp.replace(args.json)
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
