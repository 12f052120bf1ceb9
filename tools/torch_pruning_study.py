#!/usr/bin/env python
"""Structured (channel) pruning: onnx-pathlift against Torch-Pruning 1.6 on the three digits nets, at matched
parameter counts, before and after the same short fine-tune.

Protocol (issue 30), per net of ``tools/digits_nets.py`` (trained once: seeded, one thread; exported with
``torch.onnx.export``, which folds BatchNorm into the convs), per sparsity s and scope (``layer``, ``global``):

* **target**: ``prune_channel_groups(ONNX, s, criterion="path-mass", scope=...)`` (our public API; extra
  keyword arguments from ``--ours-args``, a JSON object, passed through unchanged); its parameter count P is
  the target of the setting;
* **ours, l1-norm** (and each further row of ``--ours``: ``path-mass+calibration``, ``l1-norm+calibration``,
  ``reconstruction``, where ``+calibration`` passes the training split as ``calibration=``: data-aware scores
  and the least-squares recovery): the same call with that criterion; if its count is not within 1 % of P, OUR
  sparsity is adjusted (bracketing search, below) until it is;
* **Torch-Pruning**: ``tp.pruner.MetaPruner`` (DepGraph) on the trained torch model, the last Linear ignored,
  ``global_pruning`` = scope is global, importances L1 / L2 (``MagnitudeImportance(p=1|2)``), BN-scale and
  Taylor (gradients of the cross-entropy over the training split, computed once); the Torch-Pruning
  ``pruning_ratio`` is adjusted until the count is within 1 % of P. The pruned torch model is exported the
  same way as the dense one.

Search: a bracket [lo, hi] of the adjusted ratio (parameters decrease with it), the next point interpolated
on √parameters (channel pruning removes parameters about quadratically) and kept inside the middle 80 % of
the bracket, at most 14 evaluations; a setting whose counts cannot meet 1 % (channel granularity) keeps the
closest point and says so (``matched: false``). Parameters (float initializers and constants), MACs
(``onnx_pathlift.pruning.slim.layer_costs``) and onnxruntime latency (one thread, median of ``--repeats`` runs on one
input, ``onnx_pathlift.pruning.slim.latency``) are counted on the ONNX files of both tools by the same code.

Accuracy: top-1 on the test split (a) of the pruned ONNX model in onnxruntime, no fine-tuning; (b) after
``--finetune-epochs`` of ``digits_nets.train`` (Adam, cosine, batches of 64, same seed, ``--finetune-lr``) of
the model rebuilt in torch from ITS ONNX FILE by ``tools/onnx_torch.py`` (both tools the same way: BN
folded, every Conv/Gemm weight and bias trained; ``--finetune-bn identity|fresh``: with a BatchNorm inserted
after each conv, calibrated to the identity or freshly initialised), measured in torch. The rebuild must reproduce onnxruntime
on the test split (max abs error ≤ 1e-4) or the study stops. For one model (the first fine-tuned one) the
fine-tuned module is exported again and run in onnxruntime: the round trip.

Writes ``--out`` (default ``docs/torch_pruning_study.json``) and prints markdown tables. Usage::

    python tools/torch_pruning_study.py                       # the three nets, 50 and 70 %
    python tools/torch_pruning_study.py --quick               # one net, one sparsity (development)
    python tools/torch_pruning_study.py --ours-args '{"round_to": 8}'   # keyword arguments for prune_channel_groups
    python tools/torch_pruning_study.py --nets resnet --ours path-mass+calibration reconstruction --ours-only
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import digits_nets as dn  # noqa: E402
from onnx_torch import OnnxModule, max_abs_error, onnxruntime_outputs  # noqa: E402

from onnx_pathlift.fileio.atomic import write_text  # noqa: E402
from onnx_pathlift.frontend.prepare import prepare  # noqa: E402
from onnx_pathlift.pruning.prune import prune_channel_groups  # noqa: E402
from onnx_pathlift.pruning.slim import float_parameters, latency, layer_costs  # noqa: E402

SCOPES = ("layer", "global")
IMPORTANCES: dict[str, Callable[[], object]] = {
    "L1": lambda: tp.importance.MagnitudeImportance(p=1),
    "L2": lambda: tp.importance.MagnitudeImportance(p=2),
    "BN-scale": lambda: tp.importance.BNScaleImportance(),
    "Taylor": lambda: tp.importance.TaylorImportance(),
}
OURS = ("path-mass", "l1-norm", "path-mass+calibration", "l1-norm+calibration", "reconstruction")
TOLERANCE = 0.01  # parameter counts matched within 1 %
REBUILD_TOLERANCE = 1e-4  # max |torch rebuild − onnxruntime| on the test split
MAX_STEPS = 14


@dataclass
class Net:
    """One trained net: the torch model (with Taylor's gradients), its ONNX file and the data."""

    arch: str
    model: nn.Module
    onnx_path: Path
    data: dn.Digits16
    work: Path
    offset: int = 0  # ONNX float parameters − folded torch count, on the dense model
    dense: dict = field(default_factory=dict)


def folded_params(model: nn.Module) -> int:
    """Parameters of ``model`` once BatchNorm is folded into the convs: Σ (weight + one bias per output
    channel) over Conv and Linear layers (every conv of the digits nets is followed by a BN or has a bias)."""
    return sum(m.weight.numel() + m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


def search(count: Callable[[float], int], target: int, start: float, lo: float = 0.0, hi: float = 0.98,
           p_lo: int | None = None) -> tuple[float, int, int]:
    """The ratio x in [lo, hi] whose ``count(x)`` (non-increasing) is closest to ``target``: stops within
    :data:`TOLERANCE`; returns (x, count, evaluations). Next point: interpolated on √count in the bracket,
    kept in its middle 80 % (so the bracket shrinks at least by a tenth per step)."""
    best, x, p_hi, steps = (start, math.inf), start, None, 0
    while steps < MAX_STEPS:
        p, steps = count(x), steps + 1
        if abs(p - target) < abs(best[1] - target):
            best = (x, p)
        if abs(p - target) <= TOLERANCE * target or hi - lo < 1e-4:
            break
        lo, p_lo, hi, p_hi = (x, p, hi, p_hi) if p > target else (lo, p_lo, x, p)
        if p_lo is not None and p_hi is not None and p_lo != p_hi:
            t = (math.sqrt(p_lo) - math.sqrt(target)) / (math.sqrt(p_lo) - math.sqrt(p_hi))
        elif p_lo is not None:  # no upper end yet: count ≈ p_lo·((1 − x)/(1 − lo))²
            t = (1 - math.sqrt(target / p_lo)) * (1 - lo) / (hi - lo)
        else:
            t = 0.5
        x = lo + (hi - lo) * min(max(t, 0.1), 0.9)
    return best[0], int(best[1]), steps


def onnx_costs(model: onnx.ModelProto, data: dn.Digits16, repeats: int) -> dict:
    """Parameters, MACs (one input), onnxruntime latency (s, one thread, median), test top-1 and the output
    width of every Conv/Gemm (in graph order) of an ONNX model."""
    prepared = prepare(model)
    logits = onnxruntime_outputs(model, data.x_test)
    widths = [int(prepared.shapes[n.output[0]][1]) for n in prepared.nodes if n.op_type in ("Conv", "Gemm")]
    return {"params": float_parameters(model), "macs": sum(c.macs for c in layer_costs(prepared)), "widths": widths,
            "latency_s": latency(model, prepared, repeats), "top1_pruned": float((logits.argmax(1) == data.y_test).mean())}


def finetune(model: onnx.ModelProto, data: dn.Digits16, epochs: int, lr: float, bn: str | None = None) -> tuple[dict, nn.Module]:
    """Rebuild ``model`` in torch, check it against onnxruntime on the test split, fine-tune (``bn``: with a
    BatchNorm after each conv, ``identity`` on the training split or ``fresh``: weight 1, bias 0), measure top-1."""
    module = OnnxModule(model)
    error = max_abs_error(module, model, data.x_test)
    if not error <= REBUILD_TOLERANCE:
        raise RuntimeError(f"the torch rebuild differs from onnxruntime by {error:.3g} > {REBUILD_TOLERANCE}")
    if bn is not None:
        module = OnnxModule(model, bn_after_conv=True)
        if bn == "identity":
            module.calibrate(torch.from_numpy(data.x_train))
    t0 = time.perf_counter()
    dn.train(module, data, epochs, lr=lr)
    return {"rebuild_max_abs_error": error, "top1_finetuned": dn.accuracy(module, data.x_test, data.y_test),
            "finetune_s": time.perf_counter() - t0}, module


def round_trip(module: nn.Module, data: dn.Digits16, path: Path) -> dict:
    """Export the fine-tuned rebuild again and run it in onnxruntime: max |Δ logits| and both top-1s."""
    dn.export(module, path)
    with torch.no_grad():
        ours = module.eval()(torch.from_numpy(data.x_test)).numpy()
    theirs = onnxruntime_outputs(onnx.load(path), data.x_test)
    return {"max_abs_error": float(np.abs(ours - theirs).max()),
            "top1_torch": float((ours.argmax(1) == data.y_test).mean()),
            "top1_onnxruntime": float((theirs.argmax(1) == data.y_test).mean())}


def prepare_net(arch: str, data: dn.Digits16, epochs: int, work: Path, repeats: int) -> Net:
    """Train (seeded, one thread), export, compute Taylor's gradients once, record the dense model."""
    t0 = time.perf_counter()
    model = dn.train(dn.build(arch), data, epochs)
    train_s = time.perf_counter() - t0
    path = dn.export(model, work / f"{arch}.onnx")
    model.zero_grad()
    F.cross_entropy(model(torch.from_numpy(data.x_train)), torch.from_numpy(data.y_train)).backward()
    net = Net(arch, model, path, data, work)
    dense = onnx_costs(onnx.load(path), data, repeats)
    net.offset = dense["params"] - folded_params(model)
    net.dense = {"train_s": train_s, "top1_torch": dn.accuracy(model, data.x_test, data.y_test),
                 "top1_onnxruntime": dense.pop("top1_pruned"), **dense}
    return net


def tp_prune(net: Net, importance: str, ratio: float, scope: str) -> nn.Module:
    """Torch-Pruning (DepGraph) on a copy of the trained model, last Linear kept; gradients are copied along."""
    model = copy.deepcopy(net.model)  # deepcopy does not copy .grad
    for new, old in zip(model.parameters(), net.model.parameters(), strict=True):
        new.grad = None if old.grad is None else old.grad.clone()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, 1, 16, 16), importance=IMPORTANCES[importance](),
                                  pruning_ratio=ratio, global_pruning=scope == "global", ignored_layers=[last])
    pruner.step()
    return model.eval()


def ours_prune(net: Net, sparsity: float, criterion: str, scope: str, ours_args: dict) -> onnx.ModelProto:
    """``prune_channel_groups`` on the dense ONNX file; the slim model as written."""
    out = net.work / f"{net.arch}_ours.onnx"
    prune_channel_groups(net.onnx_path, sparsity, out, criterion=criterion, scope=scope, repeats=1, **ours_args)
    return onnx.load(out)


def evaluate(net: Net, model: onnx.ModelProto, row: dict, args: argparse.Namespace) -> dict:
    """Costs, accuracy before and after fine-tuning of one pruned ONNX model; the module is kept for the round trip."""
    row.update(onnx_costs(model, net.data, args.repeats))
    ft, row["_module"] = finetune(model, net.data, args.finetune_epochs, args.finetune_lr, args.finetune_bn)
    return {**row, **ft}


def ours_rows(net: Net, sparsity: float, scope: str, args: argparse.Namespace) -> list[dict]:
    """Path-mass at the nominal sparsity (the target count), then each further row of ``--ours`` matched to it by
    our sparsity."""
    ref = ours_prune(net, sparsity, "path-mass", scope, args.ours_args)
    target = float_parameters(ref)
    rows = [evaluate(net, ref, {"tool": "ours", "criterion": "path-mass", "sparsity": sparsity, "adjusted": False,
                                "search_steps": 0}, args)]
    return rows + [matched_row(net, variant, sparsity, scope, target, args) for variant in args.ours[1:]]


def matched_row(net: Net, variant: str, sparsity: float, scope: str, target: int, args: argparse.Namespace) -> dict:
    """One row of ``--ours``: ``CRITERION`` or ``CRITERION+calibration`` (``--calibration`` on the training split:
    data-aware scores where the criterion has them, and the least-squares recovery), our sparsity adjusted to
    match ``target``."""
    criterion, _, calibrated = variant.partition("+")
    calibrated = calibrated or criterion == "reconstruction"
    extra = {"calibration": dn.save_data(net.data, net.work / "train.npz", "train")} if calibrated else {}
    models: dict[float, onnx.ModelProto] = {}

    def count(s: float) -> int:
        models[s] = ours_prune(net, s, criterion, scope, {**args.ours_args, **extra})
        return float_parameters(models[s])

    s, _, steps = search(count, target, sparsity, p_lo=net.dense["params"])
    return evaluate(net, models[s], {"tool": "ours", "criterion": variant, "sparsity": s, "adjusted": s != sparsity,
                                     "search_steps": steps}, args)


def tp_row(net: Net, importance: str, target: int, scope: str, args: argparse.Namespace) -> dict:
    """One Torch-Pruning importance, its pruning ratio searched to match ``target`` parameters. The search
    counts in torch (BN folded, plus the dense model's offset); the row reports the exported file's count, and
    the torch count too where they differ (the exporter stores bit-identical tensors once)."""
    models: dict[float, nn.Module] = {}

    def count(r: float) -> int:
        models[r] = tp_prune(net, importance, r, scope)
        return folded_params(models[r]) + net.offset

    r, p, steps = search(count, target, 1 - math.sqrt(target / net.dense["params"]), p_lo=net.dense["params"])
    model = onnx.load(dn.export(models[r], net.work / f"{net.arch}_tp.onnx"))
    row = {"tool": "torch-pruning", "importance": importance, "pruning_ratio": r, "adjusted": True, "search_steps": steps}
    if float_parameters(model) != p:
        row["params_torch_folded"] = p
    return evaluate(net, model, row, args)


def run_setting(net: Net, sparsity: float, scope: str, args: argparse.Namespace) -> dict:
    """One (net, sparsity, scope): the target, our two rows and Torch-Pruning's four, with their match."""
    t0 = time.perf_counter()
    rows = ours_rows(net, sparsity, scope, args)
    target = rows[0]["params"]
    rows += [tp_row(net, importance, target, scope, args) for importance in IMPORTANCES if not args.ours_only]
    for row in rows:
        row["param_mismatch"] = row["params"] / target - 1
        row["matched"] = abs(row["param_mismatch"]) <= TOLERANCE
    return {"sparsity": sparsity, "scope": scope, "target_params": target, "rows": rows,
            "wall_s": time.perf_counter() - t0}


def fmt_cell(row: dict, key: str, label: bool = False) -> str:
    """``0.991``, with the importance for Torch-Pruning and ``*`` when the parameter count is not matched."""
    text = f"{row[key]:.3f}" + ("" if row["matched"] else "*")
    return f"{text} ({row['importance']})" if label else text


def best_tp(rows: list[dict], key: str) -> dict:
    """Torch-Pruning's row with the best ``key`` (ties: the first importance); a placeholder under ``--ours-only``."""
    return max((r for r in rows if r["tool"] == "torch-pruning"), key=lambda r: r[key],
               default={key: math.nan, "importance": "not run", "matched": True, "params": 0, "macs": 0,
                        "latency_s": None})


def our_criteria(nets: dict) -> list[str]:
    """Our rows' criteria over every setting, in the order they first appear."""
    rows = (r for n in nets.values() for st in n["settings"] for r in st["rows"] if r["tool"] == "ours")
    return list(dict.fromkeys(r["criterion"] for r in rows))


def our_row(st: dict, criterion: str) -> dict | None:
    return next((r for r in st["rows"] if r["tool"] == "ours" and r["criterion"] == criterion), None)


def accuracy_table(nets: dict, key: str) -> list[str]:
    """Rows net × scope; a column per criterion of ours (``–`` where a setting lacks it), Torch-Pruning's best;
    cells over the sparsities."""
    criteria = our_criteria(nets)
    lines = ["| net, scope | sparsity | " + "".join(f"ours, {c} | " for c in criteria)
             + "Torch-Pruning, best importance |", "|---|---|" + "---|" * (len(criteria) + 1)]
    for arch, n in nets.items():
        for scope in SCOPES:
            settings = [st for st in n["settings"] if st["scope"] == scope]
            if not settings:
                continue
            cells = [" / ".join("–" if (r := our_row(st, c)) is None else fmt_cell(r, key) for st in settings)
                     for c in criteria]
            cells.append(" / ".join(fmt_cell(best_tp(st["rows"], key), key, True) for st in settings))
            pct = " / ".join(f"{st['sparsity']:.0%}" for st in settings)
            lines.append(f"| {arch} (dense {n['dense']['top1_onnxruntime']:.3f}), {scope} | {pct} | " + " | ".join(cells) + " |")
    return lines


def cost_table(nets: dict) -> list[str]:
    """Rows net × scope × sparsity: parameters, MACs and latency of our rows' models and Torch-Pruning's best."""
    criteria = our_criteria(nets)
    names = " / ".join([*criteria, "TP best"])
    lines = [f"| net | scope | sparsity | params: {names} | MACs: {names} | latency µs: {names} (dense) |",
             "|---|---|---|---|---|---|"]
    for arch, n in nets.items():
        for st in n["settings"]:
            rows = [our_row(st, c) for c in criteria] + [best_tp(st["rows"], "top1_finetuned")]

            def cell(key: str, fmt=str, rows=rows) -> str:
                return " / ".join("–" if r is None or r.get(key) is None else fmt(r[key]) for r in rows)

            dense_lat = n["dense"]["latency_s"]
            lines.append(f"| {arch} | {st['scope']} | {st['sparsity']:.0%} | {cell('params')} (dense {n['dense']['params']}) | "
                         f"{cell('macs')} (dense {n['dense']['macs']}) | {cell('latency_s', lambda t: f'{t * 1e6:.0f}')} "
                         f"({'n/a' if dense_lat is None else f'{dense_lat * 1e6:.0f}'}) |")
    return lines


def tables(payload: dict) -> str:
    """The markdown the tool prints: top-1 after and before fine-tuning, then sizes and latency."""
    nets, meta = payload["nets"], payload["meta"]
    return "\n".join([f"Top-1 after fine-tuning ({meta['finetune_epochs']} epochs, both tools the same way):", "",
                      *accuracy_table(nets, "top1_finetuned"), "", "Top-1 right after pruning (no fine-tuning):", "",
                      *accuracy_table(nets, "top1_pruned"), "", "Parameters, MACs and onnxruntime latency (one thread, "
                      f"median of {meta['repeats']} runs on one input):", "", *cost_table(nets), "",
                      "`*`: parameter count not within 1 % of the path-mass model's.", ""])


def combine(paths: list[Path]) -> dict:
    """One payload from several runs' JSON files (the dense nets are seeded, so the runs agree on them and on
    each setting's target): per (net, scope, sparsity), every row of every file, a row of a tool and criterion
    or importance already present kept from the first file that has it."""
    payloads = [json.loads(p.read_text()) for p in paths]
    nets: dict = {}
    for payload in payloads:
        for arch, n in payload["nets"].items():
            net = nets.setdefault(arch, {"dense": n["dense"], "settings": []})
            for st in n["settings"]:
                key = (st["scope"], st["sparsity"])
                into = next((t for t in net["settings"] if (t["scope"], t["sparsity"]) == key), None)
                if into is None:
                    net["settings"].append({**st, "rows": list(st["rows"])})
                    continue
                seen = {(r["tool"], r.get("criterion") or r.get("importance")) for r in into["rows"]}
                into["rows"] += [r for r in st["rows"] if (r["tool"], r.get("criterion") or r.get("importance")) not in seen]
    for net in nets.values():
        net["settings"].sort(key=lambda st: (st["sparsity"], SCOPES.index(st["scope"])))
        for st in net["settings"]:
            st["rows"].sort(key=lambda r: r["tool"] != "ours")
    return {"meta": {**payloads[0]["meta"], "combined": [str(p) for p in paths]}, "nets": nets}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", choices=dn.ARCHS, default=list(dn.ARCHS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7])
    parser.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES))
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of the dense nets")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-bn", choices=("identity", "fresh"),
                        help="fine-tune with a BatchNorm after each rebuilt conv, the identity on the training split "
                             "or freshly initialised (both tools)")
    parser.add_argument("--repeats", type=int, default=200, help="onnxruntime runs per latency (median)")
    parser.add_argument("--ours-args", type=json.loads, default={},
                        help="JSON object of extra keyword arguments for prune_channel_groups, passed unchanged")
    parser.add_argument("--ours", nargs="+", choices=OURS, default=["path-mass", "l1-norm"],
                        help="our rows after path-mass (always first: its parameter count is the target); "
                             "+calibration: --calibration on the training split (reconstruction always has it)")
    parser.add_argument("--ours-only", action="store_true",
                        help="skip Torch-Pruning (its rows of an earlier run stand: the dense nets are seeded)")
    parser.add_argument("--quick", action="store_true", help="the first net and the first sparsity only")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="print the tables of earlier runs' files together (rows merged per setting) and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "torch_pruning_study.json")
    args = parser.parse_args(argv)
    if not isinstance(args.ours_args, dict):
        parser.error("--ours-args must be a JSON object")
    args.ours = ["path-mass", *dict.fromkeys(o for o in args.ours if o != "path-mass")]
    if args.quick:
        args.nets, args.sparsities = args.nets[:1], args.sparsities[:1]
    return args


def meta(args: argparse.Namespace, wall_s: float) -> dict:
    return {"command": " ".join(["python tools/torch_pruning_study.py", *sys.argv[1:]]), "nets": args.nets,
            "sparsities": args.sparsities, "scopes": args.scopes, "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "finetune_bn": args.finetune_bn,
            "seed": dn.SEED,
            "repeats": args.repeats, "ours_args": args.ours_args, "ours": args.ours,
            "ours_only": args.ours_only, "tolerance": TOLERANCE,
            "rebuild_tolerance": REBUILD_TOLERANCE, "importances": list(IMPORTANCES), "threads": 1,
            "versions": {"torch": torch.__version__, "torch_pruning": tp.__version__, "onnx": onnx.__version__,
                         "onnxruntime": ort.__version__, "python": platform.python_version()},
            "adjusted": "ours l1-norm: our sparsity; Torch-Pruning: pruning_ratio; target: ours path-mass at the "
                        "nominal sparsity", "wall_s": wall_s}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.combine:
        print(tables(combine(args.combine)))
        return 0
    torch.set_num_threads(1)
    t0, data, nets, trip = time.perf_counter(), dn.digits16(), {}, None
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.nets:
            net = prepare_net(arch, data, args.epochs, Path(tmp), args.repeats)
            settings = []
            for s in args.sparsities:
                for scope in args.scopes:
                    settings.append(run_setting(net, s, scope, args))
                    print(f"{arch} {scope} {s:.0%}: " + ", ".join(
                        f"{r.get('criterion', r.get('importance'))} {r['params']} {r['top1_pruned']:.3f} → "
                        f"{r['top1_finetuned']:.3f}" for r in settings[-1]["rows"]), file=sys.stderr, flush=True)
            if trip is None:
                first = settings[0]["rows"][0]
                trip = {"net": arch, "scope": settings[0]["scope"], "sparsity": settings[0]["sparsity"],
                        "criterion": first["criterion"], **round_trip(first["_module"], data, Path(tmp) / "trip.onnx")}
            for st in settings:
                for row in st["rows"]:
                    row.pop("_module")
            nets[arch] = {"dense": net.dense, "settings": settings}
            print(f"{arch}: done at {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    payload = {"meta": meta(args, time.perf_counter() - t0), "nets": nets, "round_trip": trip}
    write_text(args.out, json.dumps(payload, indent=1) + "\n")
    print(tables(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
