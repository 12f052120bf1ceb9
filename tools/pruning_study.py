#!/usr/bin/env python
"""One-shot pruning study: path-magnitude vs magnitude, before and after a random neuron rescaling.

Reproduces, at toy scale, the finding of Gonon et al. (ICML 2025, §5): path-magnitude scores are
invariant under neuron-wise rescaling (a change of weights that keeps the function), so the models
they prune are the same before and after it; magnitude pruning is not, and a rescaling can make it
collapse. Results go to ``docs/pruning.json`` (every number), ``docs/pruning.png`` (the figure);
``docs/pruning.md`` describes them.

Extra dependency (tools only, not a dependency of onnx_pathlift): **matplotlib**
(``pip install matplotlib``), for the figure. Everything else is what the package already needs
(numpy, onnx, onnxruntime).

Protocol, per model:

* scores: ``onnx_pathlift.analyses.scores.path_magnitude`` (fractions of ‖Φ‖_1) and ``magnitude`` (|θ|) of
  every Conv / Gemm / MatMul weight (not biases, not BatchNormalization);
* one-shot global unstructured pruning at 10, 20, ..., 90 % of those weights
  (``onnx_pathlift.pruning.prune.masks(..., scope="global")`` then ``prune.apply``), no fine-tuning;
* each criterion on the model as shipped and on the model after ``onnx_pathlift.analyses.rescale.rescale``
  with λ log-uniform in [1/4096, 4096] (seeds 0, 1, 2);
* top-1 accuracy of the pruned ONNX model on ``models/digits_test.npz``, the whole test set in one
  onnxruntime batch;
* the certified output-change bound: for every input with ‖x‖_∞ ≤ R (R = 1: pixels lie in [0, 1]),
  ‖A(x) − B(x)‖_1 ≤ max(R, 1) · d, with d = ``path_metric(dag, pruned_dag).upper`` (exact for
  pruning), on the analysed output (the logits: for the scikit-learn MLP, the tensor before its
  Softmax); and beside it the largest ℓ1 change of that output observed on the test set and on
  2000 random inputs of the box ‖x‖_∞ ≤ 1 (half uniform, half corners), which must stay below it.

Usage::

    python tools/pruning_study.py            # ~10 s on 2 cores (writes docs/pruning.{json,png})

Also prints a side check (no rescaling) on ``models/digits_cnn_torch.onnx``, the same CNN with
its BatchNorms folded, stored under ``side_checks`` in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper

import onnx_pathlift
from onnx_pathlift import import_model
from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.analyses.rescale import rescale
from onnx_pathlift.analyses.scores import magnitude, path_magnitude, scores_model
from onnx_pathlift.backend.runtime import make_session
from onnx_pathlift.pruning import prune

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["models/digits_cnn_torch_bn.onnx", "models/digits_mlp_sklearn.onnx"]
DATA = "models/digits_test.npz"
# side check, no rescaling: the same trained CNN exported with its BatchNorms folded into the convs
# (the same function, another parameterization of it)
SIDE_MODELS = ["models/digits_cnn_torch.onnx"]
SPARSITIES = [round(0.1 * k, 1) for k in range(1, 10)]
SEEDS = [0, 1, 2]
LAMBDA = (1 / 4096, 4096.0)
R = 1.0  # ‖x‖_∞ bound of the inputs: pixels are in [0, 1]
TIMING_REPEATS = 5
BOX_SAMPLES = 2000  # random inputs with ‖x‖_∞ ≤ R (half uniform, half at the box's corners)
CURVES = {  # key: (label, criterion, rescaled)
    "pm": ("path-magnitude", "path-magnitude", False),
    "pm_rescaled": ("path-magnitude after rescaling", "path-magnitude", True),
    "mag": ("magnitude", "magnitude", False),
    "mag_rescaled": ("magnitude after rescaling", "magnitude", True),
}


class Evaluator:
    """Runs a (pruned) copy of the model on the whole test set in one batch; returns the analysed
    output (logits) and the top-1 accuracy computed from it."""

    def __init__(self, dag, x: np.ndarray, y: np.ndarray, threads: int):
        self.input = dag.inputs[0]
        self.output = next(iter(dag.outputs))  # the analysed output's ONNX name (the head is cut)
        self.x, self.y = x, y
        self.opts = ort.SessionOptions()
        self.opts.intra_op_num_threads = threads
        self.opts.inter_op_num_threads = 1
        self.opts.log_severity_level = 3

    def _with_output(self, model: ModelProto) -> ModelProto:
        if any(o.name == self.output for o in model.graph.output):
            return model
        out = ModelProto()
        out.CopyFrom(model)  # e.g. the MLP's pre-Softmax logits, an inner tensor of the graph
        out.graph.output.append(helper.make_tensor_value_info(self.output, TensorProto.FLOAT, None))
        return out

    def logits(self, model: ModelProto, x: np.ndarray | None = None) -> np.ndarray:
        s = ort.InferenceSession(self._with_output(model).SerializeToString(), self.opts,
                                 providers=["CPUExecutionProvider"])
        return s.run([self.output], {self.input: self.x if x is None else x})[0]

    def accuracy(self, logits: np.ndarray) -> float:
        return float(np.mean(np.argmax(logits, axis=1) == self.y))


def timed(fn, repeats: int = TIMING_REPEATS):
    """(last result, median seconds over ``repeats`` calls)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        out = result  # the previous result is freed here, outside the timed span
    return out, float(np.median(times))


def study(path: str, data, threads: int) -> dict:
    model = onnx.load(str(ROOT / path))
    dag = import_model(model)
    in_shape = [d.dim_param or d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = data["x"].reshape((-1,) + tuple(dag.layer(dag.inputs[0]).shape[1:])).astype(np.float32)
    ev = Evaluator(dag, x, data["y"], threads)
    base_logits = ev.logits(model)
    # the analysed output's argmax must be the model's own prediction (Softmax is monotone)
    full = ort.InferenceSession(str(ROOT / path), ev.opts, providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in full.get_outputs()], full.run(None, {ev.input: x})))
    shipped_pred = outs["label"] if "label" in outs else np.argmax(outs[ev.output], 1)
    assert np.array_equal(np.argmax(base_logits, 1), shipped_pred), "analysed output's argmax != model prediction"
    # reference timings of the model itself: building its session + one run on the test set, and
    # runs of the built session on the test set (360 inputs) and on one input
    _, t_session_and_forward = timed(lambda: ev.logits(model))
    _, t_forward = timed(lambda: full.run(None, {ev.input: x}))
    _, t_forward1 = timed(lambda: full.run(None, {ev.input: x[:1]}))
    rng = np.random.default_rng(0)
    box_shape = (BOX_SAMPLES // 2,) + x.shape[1:]
    box = np.concatenate([rng.uniform(-R, R, box_shape), R * rng.choice([-1.0, 1.0], box_shape)]).astype(np.float32)
    base_box = ev.logits(model, box)

    variants = {"original": (model, dag, None)}
    for seed in SEEDS:
        r_model, rep = rescale(model, dag, seed, *LAMBDA)
        r_logits = ev.logits(r_model)
        change = float(np.abs(r_logits - base_logits).max() / np.abs(base_logits).max())
        variants[f"seed{seed}"] = (r_model, import_model(r_model),
                                   {"neurons": rep.neurons, "layers": rep.layers, "max_rel_logit_change": change,
                                    "accuracy": ev.accuracy(r_logits)})

    res = {"model": path, "input": {"name": ev.input, "shape": in_shape}, "analysed_output": ev.output,
           "box_samples": BOX_SAMPLES,
           "scored_tensors": {}, "test_samples": len(x), "accuracy_dense": ev.accuracy(base_logits),
           "l1_path_norm": None, "rescaling": {}, "score_checks": {},
           "timing_s": {"session_and_forward_test_set": t_session_and_forward, "forward_test_set": t_forward,
                        "forward_one_input": t_forward1},
           "curves": {}}
    scores, pm0 = {}, None
    for vname, (_, vdag, rep) in variants.items():
        if rep is not None:
            res["rescaling"][vname] = rep
        pm, t_pm = timed(lambda d=vdag: path_magnitude(d))
        mg, t_mg = timed(lambda d=vdag: magnitude(d))
        res["timing_s"][f"path_magnitude_{vname}"] = t_pm
        res["timing_s"][f"magnitude_{vname}"] = t_mg
        scores[vname] = {"path-magnitude": pm.fraction, "magnitude": mg}
        if pm0 is None:
            pm0 = pm
            res["l1_path_norm"] = 10 ** pm.log10_norm
            res["scored_tensors"] = {k: int(v.size) for k, v in sorted(pm.fraction.items())}
        else:  # invariance of the scores themselves, and of the magnitudes (for contrast)
            rel_pm = max(float(np.abs(pm.fraction[k] - pm0.fraction[k]).max() / pm0.fraction[k].max()) for k in pm.fraction)
            res["score_checks"][vname] = {
                "l1_path_norm_log10_change": pm.log10_norm - pm0.log10_norm,
                "path_magnitude_max_rel_change": rel_pm,
                "magnitude_max_ratio": max(float(np.max(np.maximum(mg[k], 1e-30) / np.maximum(scores["original"]["magnitude"][k], 1e-30)))
                                           for k in mg),
            }
    n_scored = sum(res["scored_tensors"].values())
    # where the path-magnitude time goes (model as shipped): building the forward + adjoint graph,
    # building its onnxruntime session, and running it once on the all-ones input
    (proto, _), t_build = timed(lambda: scores_model(dag))
    session, t_session = timed(lambda: make_session(proto))
    feeds = {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}
    _, t_run = timed(lambda: session.run(None, feeds))
    res["timing_s"]["path_magnitude_breakdown"] = {"build_graph": t_build, "build_session": t_session, "run": t_run}

    for key, (label, criterion, rescaled) in CURVES.items():
        runs = {}
        for vname in ([f"seed{s}" for s in SEEDS] if rescaled else ["original"]):
            vmodel, vdag, _ = variants[vname]
            v_logits = base_logits if vname == "original" else ev.logits(vmodel)
            v_box = base_box if vname == "original" else ev.logits(vmodel, box)
            rows = []
            for sp in SPARSITIES:
                keep = prune.masks(scores[vname][criterion], sp, "global")
                pruned, report = prune.apply(vmodel, keep)
                logits = ev.logits(pruned)
                m = path_metric(vdag, import_model(pruned))
                assert m.exact and m.sign_consistent
                box_change = float(np.abs(ev.logits(pruned, box) - v_box).sum(axis=1).max())
                bound = 10 ** m.bound_log10(R)
                assert box_change <= bound * (1 + 1e-5) + 1e-3, (path, key, vname, sp, box_change, bound)  # the theorem
                mask0 = prune.masks(scores["original"][criterion], sp, "global")
                rows.append({
                    "sparsity": sp, "achieved_sparsity": report.sparsity, "pruned": report.pruned,
                    "accuracy": ev.accuracy(logits),
                    "d": m.upper, "d_log10": m.upper_log10, "bound": bound,
                    "bound_relative": 10 ** (m.upper_log10 - m.norm_a_log10),  # d / ‖Φ(θ)‖_1
                    "observed_max_l1_change": float(np.abs(logits - v_logits).sum(axis=1).max()),
                    "observed_max_l1_change_box": box_change,
                    "mask_differs_from_original": int(sum(np.count_nonzero(keep[k] != mask0[k]) for k in keep)),
                })
            runs[vname] = rows
        res["curves"][key] = {"label": label, "criterion": criterion, "rescaled": rescaled, "runs": runs,
                              "summary": summarise(runs)}
    res["scored_weights"] = n_scored
    return res


def side_check(path: str, data, threads: int) -> dict:
    """Path-magnitude and magnitude pruning of ``path`` as shipped (accuracy and certified bound)."""
    model = onnx.load(str(ROOT / path))
    dag = import_model(model)
    x = data["x"].reshape((-1,) + tuple(dag.layer(dag.inputs[0]).shape[1:])).astype(np.float32)
    ev = Evaluator(dag, x, data["y"], threads)
    pm = path_magnitude(dag)
    out = {"model": path, "accuracy_dense": ev.accuracy(ev.logits(model)), "l1_path_norm": 10 ** pm.log10_norm,
           "curves": {}}
    for key, sc in (("pm", pm.fraction), ("mag", magnitude(dag))):
        rows = []
        for sp in SPARSITIES:
            pruned, _ = prune.apply(model, prune.masks(sc, sp, "global"))
            m = path_metric(dag, import_model(pruned))
            rows.append({"sparsity": sp, "accuracy": ev.accuracy(ev.logits(pruned)), "bound": 10 ** m.bound_log10(R)})
        out["curves"][key] = rows
    return out


def summarise(runs: dict) -> list[dict]:
    """Per sparsity: mean, min and max over the runs (one run for the un-rescaled curves)."""
    out = []
    for i, sp in enumerate(SPARSITIES):
        row = {"sparsity": sp}
        for field in ("accuracy", "bound", "observed_max_l1_change", "observed_max_l1_change_box",
                      "mask_differs_from_original"):
            vals = np.array([rows[i][field] for rows in runs.values()], float)
            row[field] = {"mean": float(vals.mean()), "min": float(vals.min()), "max": float(vals.max())}
        out.append(row)
    return out


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"pm": {"color": "tab:blue", "marker": "o", "lw": 2.2},
             "pm_rescaled": {"color": "tab:cyan", "marker": "x", "ls": "--", "lw": 1.6},
             "mag": {"color": "tab:red", "marker": "s", "lw": 2.2},
             "mag_rescaled": {"color": "tab:orange", "marker": "^", "ls": "--", "lw": 1.6}}
    fig, axes = plt.subplots(2, len(results), figsize=(6.2 * len(results), 9.4), sharex=True,
                             gridspec_kw={"height_ratios": [3, 2]})
    for j, res in enumerate(results):
        ax, bx = axes[0, j], axes[1, j]
        xs = [100 * s for s in SPARSITIES]
        for key, curve in res["curves"].items():
            summ = curve["summary"]
            mean = [r["accuracy"]["mean"] for r in summ]
            label = curve["label"] + (f" (mean, min–max band, {len(SEEDS)} seeds)" if curve["rescaled"] else "")
            ax.plot(xs, mean, label=label, **style[key])
            if curve["rescaled"]:
                ax.fill_between(xs, [r["accuracy"]["min"] for r in summ], [r["accuracy"]["max"] for r in summ],
                                color=style[key]["color"], alpha=0.2)
            bmean = [r["bound"]["mean"] for r in summ]
            bx.plot(xs, bmean, **style[key])
            if curve["rescaled"]:
                bx.fill_between(xs, [r["bound"]["min"] for r in summ], [r["bound"]["max"] for r in summ],
                                color=style[key]["color"], alpha=0.2)
        for key in ("pm", "mag"):
            obs = [r["observed_max_l1_change_box"]["mean"] for r in res["curves"][key]["summary"]]
            bx.plot(xs, obs, color=style[key]["color"], ls=":", lw=1.4, marker=".",
                    label=f"{res['curves'][key]['label']}: largest observed ‖Δlogits‖₁ over {BOX_SAMPLES} random x, ‖x‖∞ ≤ 1")
        ax.axhline(res["accuracy_dense"], color="gray", lw=1, ls=":", label="unpruned model")
        ax.axhline(0.1, color="gray", lw=0.8, ls="-.", label="chance (0.1)")
        name = Path(res["model"]).name
        ax.set_title(f"{name}\n{res['scored_weights']} Conv/Gemm/MatMul weights, global one-shot, no fine-tuning", fontsize=10)
        ax.set_ylabel("top-1 accuracy (360 test digits)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        bx.set_yscale("log")
        bx.set_ylabel("certified bound on ‖Δlogits‖₁\nfor all ‖x‖∞ ≤ 1 (log)")
        bx.set_xlabel("sparsity of the scored weights (%)")
        bx.set_xticks(xs)
        bx.grid(alpha=0.3, which="major")
        ax.text(0.98, 0.98, f"unpruned: {res['accuracy_dense']:.3f}", transform=ax.transAxes, ha="right", va="top", fontsize=9)
        bx.text(0.98, 0.03, "upper curves: certified bound (= exact path-metric d)\n"
                "dotted: largest observed change", transform=bx.transAxes, ha="right", va="bottom", fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    handles, labels = [], []
    for a in (axes[0, 0], axes[1, 0]):
        for h, lab in zip(*a.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle("One-shot pruning: path-magnitude vs magnitude, before / after a random neuron rescaling "
                 "(λ ∈ [1/4096, 4096])", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=str(ROOT / "docs/pruning.json"))
    p.add_argument("--png", default=str(ROOT / "docs/pruning.png"))
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for the accuracy runs")
    args = p.parse_args(argv)
    load0 = os.getloadavg()  # timings below are wall-clock: other work on the machine inflates them
    t0 = time.perf_counter()
    data = np.load(ROOT / DATA)
    results = []
    for path in MODELS:
        t = time.perf_counter()
        res = study(path, data, args.threads)
        res["timing_s"]["study"] = time.perf_counter() - t
        results.append(res)
        print(f"{path}: dense accuracy {res['accuracy_dense']:.4f}, ‖Φ‖_1 = {res['l1_path_norm']:.4g}, "
              f"{res['scored_weights']} scored weights, {res['timing_s']['study']:.1f} s")
        print(f"  scores (median of {TIMING_REPEATS}): path-magnitude {1e3 * res['timing_s']['path_magnitude_original']:.1f} ms, "
              f"(graph {1e3 * res['timing_s']['path_magnitude_breakdown']['build_graph']:.1f} + session "
              f"{1e3 * res['timing_s']['path_magnitude_breakdown']['build_session']:.1f} + run "
              f"{1e3 * res['timing_s']['path_magnitude_breakdown']['run']:.2f} ms), "
              f"magnitude {1e3 * res['timing_s']['magnitude_original']:.2f} ms; "
              f"model: session + test-set run {1e3 * res['timing_s']['session_and_forward_test_set']:.1f} ms, "
              f"test-set run {1e3 * res['timing_s']['forward_test_set']:.2f} ms, "
              f"one-input run {1e3 * res['timing_s']['forward_one_input']:.3f} ms")
        for seed, rep in res["rescaling"].items():
            chk = res["score_checks"][seed]
            print(f"  rescaling {seed}: {rep['neurons']} neurons in {rep['layers']} layers, logits moved {rep['max_rel_logit_change']:.1e} (rel), "
                  f"path-magnitude scores moved {chk['path_magnitude_max_rel_change']:.1e} (rel), "
                  f"largest |θ| ratio {chk['magnitude_max_ratio']:.3g}")
        print("  sparsity   " + "  ".join(f"{k:>16s}" for k in res["curves"]) + "   bound(pm)  bound(mag)")
        for i, sp in enumerate(SPARSITIES):
            cells = []
            for curve in res["curves"].values():
                a = curve["summary"][i]["accuracy"]
                cells.append(f"{a['mean']:.3f}" + (f" [{a['min']:.2f},{a['max']:.2f}]" if curve["rescaled"] else " " * 12))
            print(f"  {100 * sp:5.0f} %   " + "  ".join(f"{c:>16s}" for c in cells)
                  + f"   {res['curves']['pm']['summary'][i]['bound']['mean']:.3g}  {res['curves']['mag']['summary'][i]['bound']['mean']:.3g}")
    side = [side_check(path, data, args.threads) for path in SIDE_MODELS]
    for res in side:
        print(f"side check {res['model']} (no rescaling): accuracy pm / mag per sparsity: "
              + ", ".join(f"{100 * a['sparsity']:.0f}% {a['accuracy']:.3f}/{b['accuracy']:.3f}"
                          for a, b in zip(res["curves"]["pm"], res["curves"]["mag"])))
    total = time.perf_counter() - t0
    meta = {"command": "python tools/pruning_study.py", "sparsities": SPARSITIES, "seeds": SEEDS, "lambda_range": LAMBDA,
            "input_linf_R": R, "scope": "global", "fine_tuning": False, "data": DATA, "total_seconds": total,
            "threads": args.threads,
            "versions": {"python": platform.python_version(), "numpy": np.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "onnx_pathlift": getattr(onnx_pathlift, "__version__", None)},
            "machine": platform.machine(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "load_average_at_start": load0}
    Path(args.json).write_text(json.dumps({"meta": meta, "models": results, "side_checks": side}, indent=1, default=_json_default) + "\n")
    plot(results, Path(args.png))
    print(f"wrote {args.json} and {args.png} in {total:.1f} s")
    return 0


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


if __name__ == "__main__":
    sys.exit(main())
