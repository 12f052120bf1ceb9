#!/usr/bin/env python
"""Channel pruning beyond ReLU networks (issue 31), measured: small torch nets with SiLU, Hardswish, GELU, Mish,
Tanh, GroupNorm, MobileNetV3-style squeeze-excitation (Hardswish, gates by HardSigmoid) and SE gates on a ReLU
net, with a ReLU control, exported by torch (CPU, one thread) and pruned by ``prune --structure channel`` at
each sparsity: the criterion chosen, groups removed, parameters, MACs and onnxruntime latency (one thread,
median of ``--repeats``) before and after, and the slim-vs-masked check. ``tests/test_prune_beyond_relu.py``
exports the same nets (``NETS``, :func:`export`). Usage::

    python tools/beyond_relu_nets.py OUT_DIR [--sparsity 0.3 0.5 0.7] [--exporter torchscript|dynamo] [--repeats 20]

prints a Markdown table and writes ``OUT_DIR/beyond_relu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = (1, 3, 16, 16)


class SqueezeExcite(nn.Module):
    """MobileNetV3's gate: ``x · HardSigmoid(W2·ReLU(W1·avgpool(x)))`` per channel."""

    def __init__(self, c: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1),
                                  nn.Hardsigmoid())

    def forward(self, x):
        return x * self.gate(x)


def net(act, norm=nn.BatchNorm2d, se: bool = False) -> nn.Module:
    """stem conv, 1×1 expansion, depthwise 3×3 (then an SE gate), 1×1 projection, pooled dense head."""
    layers = [nn.Conv2d(3, 16, 3, padding=1), norm(16), act(), nn.Conv2d(16, 32, 1), norm(32), act(),
              nn.Conv2d(32, 32, 3, padding=1, groups=32), norm(32), act()]
    if se:
        layers.append(SqueezeExcite(32))
    layers += [nn.Conv2d(32, 32, 1), norm(32), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)]
    return nn.Sequential(*layers)


def _group_norm(c: int) -> nn.Module:
    return nn.GroupNorm(4, c)


#: name → (network, the op types the importer may refuse in its export; none for the ReLU control)
NETS = {
    "relu": (lambda: net(nn.ReLU), set()),
    "silu": (lambda: net(nn.SiLU), {"Sigmoid", "Silu", "Swish"}),
    "hardswish": (lambda: net(nn.Hardswish), {"HardSwish"}),
    "gelu": (lambda: net(nn.GELU), {"Erf", "Gelu"}),
    "mish": (lambda: net(nn.Mish), {"Mish", "Softplus", "Tanh"}),
    "tanh": (lambda: net(nn.Tanh), {"Tanh"}),
    "groupnorm": (lambda: net(nn.ReLU, _group_norm), {"InstanceNormalization", "GroupNormalization"}),
    "mobilenetv3": (lambda: net(nn.Hardswish, se=True), {"HardSwish", "HardSigmoid"}),
    "relu-se": (lambda: net(nn.ReLU, se=True), {"HardSigmoid"}),
}


def export(module: nn.Module, path: Path, exporter: str = "torchscript") -> Path:
    """``module`` (in eval mode) exported on one thread at opset 17 (TorchScript) or 18 (dynamo), input
    ``input`` of :data:`SHAPE`, output ``logits``."""
    torch.set_num_threads(1)
    torch.onnx.export(module.eval(), (torch.randn(*SHAPE),), str(path), dynamo=exporter == "dynamo",
                      opset_version=17 if exporter == "torchscript" else 18, input_names=["input"],
                      output_names=["logits"], **({"verbose": False} if exporter == "dynamo" else {}))
    return path


def measure(path: Path, sparsity: float, out: Path, repeats: int) -> dict:
    """One ``prune --structure channel`` run (library call) and the numbers of its record."""
    from onnx_pathlift.pruning.prune import prune_channel_groups

    r = prune_channel_groups(path, sparsity, out / f"{path.stem}_slim{sparsity}.onnx", repeats=repeats).record
    keys = ("criterion", "params_before", "params_after", "macs_before", "macs_after", "latency_before_s",
            "latency_after_s", "slim_vs_masked_max_rel_error")
    return {"net": path.stem, "sparsity": sparsity, "removed": r["groups"]["removed"],
            "removable": r["groups"]["removable"], "certified": r["metric"] is not None, **{k: r[k] for k in keys}}


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    print("| net | criterion | S | groups removed | parameters | MACs | latency (ms) | certified |\n|---|---|---|---|---|---|---|---|")
    for name, (build, _) in NETS.items():
        torch.manual_seed(0)
        path = export(build(), args.out / f"{name}.onnx", args.exporter)
        for s in args.sparsity:
            r = measure(path, s, args.out, args.repeats)
            rows.append(r)
            print(f"| {name} | {r['criterion']} | {s:g} | {r['removed']}/{r['removable']} | {r['params_before']} → "
                  f"{r['params_after']} ({r['params_after'] / r['params_before']:.0%}) | {r['macs_before']} → "
                  f"{r['macs_after']} | {_ms(r['latency_before_s'])} → {_ms(r['latency_after_s'])} | "
                  f"{'yes' if r['certified'] else 'no'} |", flush=True)
    (args.out / "beyond_relu.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
