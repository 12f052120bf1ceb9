#!/usr/bin/env python
"""onnxruntime latency of channel-pruned models against ``--round-to N``: the measurement behind its default.

For each model: path-mass scores once, then for each N the groups ``prune --structure channel`` removes
(global scope, the given sparsities of the removable groups) with every layer kept at a multiple of N, the slim
model built, and its onnxruntime latency (one thread, median of ``--repeats`` runs) measured in ``--rounds``
interleaved rounds (dense, N₁, N₂, ..., dense, N₁, ...) so that load on a shared machine hits every variant alike;
the median over rounds is reported. Models: the three digits nets of ``tools/digits_nets.py`` (16×16, trained) and a
torchvision-like MobileNetV2 at 224×224 (inverted residuals of ``tools/digits_nets.py``, widths of torchvision's
``mobilenet_v2``, random weights: latency does not depend on them). Usage::

    python tools/round_to_study.py OUT_DIR [--sizes 1 4 8 16] [--sparsity 0.3 0.5] [--nets DIR]
    python tools/round_to_study.py OUT_DIR --goal 0.65 0.7   # issue 30's latency goal, below

``--goal P ...``: the MobileNetV2 224 pruned by ``prune --structure channel --target T --sparsity P`` (``T`` from
``--goal-target``: groups, params (default), macs or latency; every other option at the command's default: global scope, path-mass,
``--round-to 8``), dense and slim timed in ``--rounds`` interleaved rounds; per P the parameters and MACs kept,
the slim/dense latency ratio of each round (median, min, max: the spread a shared machine gives) and the ratio of
the fastest rounds (the least disturbed by load).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digits_nets import InvertedResidual, conv_bn  # noqa: E402

from onnx_pathlift.frontend.pipeline import load  # noqa: E402
from onnx_pathlift.pruning.channels import channel_graph, group_scores  # noqa: E402
from onnx_pathlift.pruning.ranking import choose  # noqa: E402
from onnx_pathlift.pruning.slim import float_parameters, latency, layer_costs, slim_model  # noqa: E402

#: torchvision's mobilenet_v2 setting: expansion t, channels c, repeats n, first stride s
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """torchvision-like MobileNetV2 (stem 32, the setting above, 1×1 to 1280, pool, dense 1000); the t = 1 block
    keeps an expansion conv (digits_nets' block always has one)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(3, 32, 3, 2), nn.ReLU6()]
        cin = 32
        for t, c, n, s in SETTING:
            for k in range(n):
                layers.append(InvertedResidual(cin, c, s if k == 0 else 1, t))
                cin = c
        layers += [*conv_bn(cin, 1280, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def mobilenet224(path: Path) -> Path:
    torch.manual_seed(0)
    model = MobileNetV2().eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    return path


def study(path: Path, sizes: list[int], sparsities: list[float], rounds: int, repeats: int) -> list[str]:
    """Markdown rows: model, sparsity, N, parameters kept, latency (ms) and its ratio to the dense model."""
    loaded = load(path)
    cg = channel_graph(loaded.model, loaded.prepared)
    scores = group_scores(cg, loaded.prepared, "path-mass", loaded.dag)
    variants = {("dense", 0): loaded.model}
    for s in sparsities:
        for n in sizes:
            variants[(s, n)] = slim_model(loaded.model, cg, choose(cg, scores, s, "global", n))
    times: dict = {k: [] for k in variants}
    for _ in range(rounds):
        for key, model in variants.items():
            times[key].append(latency(model, loaded.prepared, repeats))
    dense = float(np.median(times[("dense", 0)]))
    params = float_parameters(loaded.model)
    rows = [f"| {path.name} | dense | | {params} | {dense * 1e3:.3f} | 1.00 |"]
    for (s, n), model in variants.items():
        if s != "dense":
            t = float(np.median(times[(s, n)]))
            rows.append(f"| {path.name} | {s:.0%} | {n} | {float_parameters(model) / params:.1%} | {t * 1e3:.3f} | "
                        f"{t / dense:.2f} |")
    return rows


def goal(path: Path, fractions: list[float], rounds: int, repeats: int, target: str = "params") -> list[str]:
    """Markdown rows of ``--goal``: the fraction of ``target`` removed, parameters and MACs kept, dense ms, the
    slim/dense ratio per round (median [min, max]) and the ratio of the fastest rounds."""
    from onnx_pathlift.pruning.prune import prune_channel_groups

    loaded = load(path)
    variants = {"dense": loaded.model}
    for f in fractions:
        variants[f] = prune_channel_groups(path, f, path.with_name(f"slim_{f:g}.onnx"), target=target,
                                           repeats=1).result.slim
    slims = {f: load(path.with_name(f"slim_{f:g}.onnx")).prepared for f in fractions}
    times: dict = {k: [] for k in variants}
    for _ in range(rounds):
        for key, model in variants.items():
            times[key].append(latency(model, loaded.prepared if key == "dense" else slims[key], repeats))
    dense, params = np.array(times["dense"]), float_parameters(loaded.model)
    macs = sum(c.macs for c in layer_costs(loaded.prepared))
    rows = []
    for f in fractions:
        slim = np.array(times[f])
        ratio = slim / dense
        kept_macs = sum(c.macs for c in layer_costs(slims[f])) / macs
        rows.append(f"| {f:.0%} | {float_parameters(variants[f]) / params:.1%} | {kept_macs:.1%} | "
                    f"{np.median(dense) * 1e3:.1f} | "
                    f"{np.median(ratio):.2f} [{ratio.min():.2f}, {ratio.max():.2f}] | {slim.min() / dense.min():.2f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--nets", type=Path, help="a folder with tools/digits_nets.py's digits16_*.onnx (else skipped)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--goal", type=float, nargs="+", metavar="P",
                        help="only the MobileNetV2 224 goal: --target T --sparsity P, default options")
    parser.add_argument("--goal-target", default="params", choices=("groups", "params", "macs", "latency"),
                        help="--goal's --target T (default params)")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.goal:
        print(f"| {args.goal_target} removed (target) | params kept | MACs kept | dense ms | slim / dense, median "
              "[min, max] over rounds | fastest slim / fastest dense |\n|---|---:|---:|---:|---|---:|")
        model = mobilenet224(args.out_dir / "mobilenetv2_224.onnx")
        for row in goal(model, args.goal, args.rounds, args.repeats, args.goal_target):
            print(row, flush=True)
        return 0
    paths = sorted(args.nets.glob("digits16_*.onnx")) if args.nets else []
    paths.append(mobilenet224(args.out_dir / "mobilenetv2_224.onnx"))
    print("| model | removed groups | N | parameters kept | latency ms | × dense |\n|---|---|---:|---:|---:|---:|")
    for path in paths:
        for row in study(path, args.sizes, args.sparsity, args.rounds, args.repeats):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
