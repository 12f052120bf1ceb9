#!/usr/bin/env python
"""Three small CNNs trained on scikit-learn's digits at 16×16, exported to ONNX: the pruning benchmark's nets.

* ``resnet``: a ResNet with projection shortcuts (1×1 conv + BN on the shortcut where the shape changes);
* ``mobilenet``: a MobileNetV2 with inverted residuals (expand 1×1, depthwise 3×3, project 1×1) and ReLU6;
* ``vgg``: a VGG (conv-BN-ReLU stacks and max-pools, a dense head).

Digits are 8×8 with pixels 0..16: scaled to [0, 1] and upsampled to 16×16 (bilinear), split 80/20 stratified
(``random_state=0``). Training: Adam, cosine schedule, one thread, fixed seeds (a few seconds to a minute per
net on one core). Export: ``torch.onnx.export`` (TorchScript exporter, opset 17, BatchNorm folded into the
convs as the exporter does in eval mode; input ``input [batch, 1, 16, 16]``, output ``logits``).

Used by the tests and the pruning study tools; nothing is committed. Usage::

    python tools/digits_nets.py OUT_DIR [--arch resnet mobilenet vgg] [--epochs 15]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ARCHS = ("resnet", "mobilenet", "vgg")
SEED = 0


@dataclass(frozen=True)
class Digits16:
    """The digits at 16×16, pixels in [0, 1]: ``x_*`` float32 ``[N, 1, 16, 16]``, ``y_*`` int64 ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def digits16() -> Digits16:
    """scikit-learn's digits scaled to [0, 1], upsampled bilinearly to 16×16, split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1).numpy()
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED, stratify=y)
    return Digits16(*(np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test)))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """conv (no bias) then BatchNorm: the unit every net below is made of."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    """y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut is a 1×1 conv + BN when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem 16 → stages of 16, 32, 64 channels (two blocks each, strides 1, 2, 2) → global pool → dense 10."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(1, widths[0]), nn.ReLU()]
        cin = widths[0]
        for i, w in enumerate(widths):
            layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class InvertedResidual(nn.Module):
    """expand 1×1 (ReLU6) → depthwise 3×3 (ReLU6) → project 1×1 (linear), plus x when stride 1 and cin = cout."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(*conv_bn(cin, hidden, 1), nn.ReLU6(), *conv_bn(hidden, hidden, 3, stride, hidden),
                                  nn.ReLU6(), *conv_bn(hidden, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """Stem 16 (ReLU6) → inverted residuals (16→16, 16→24 /2, 24→24, 24→32 /2, 32→32; expansion 4) → 1×1 to 128
    (ReLU6) → global pool → dense 10."""

    SETTING = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1))

    def __init__(self, expand: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(1, 16), nn.ReLU6()]
        cin = 16
        for cout, stride in self.SETTING:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [*conv_bn(cin, 128, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class VGG(nn.Module):
    """conv-BN-ReLU stacks 32, 32 | pool | 64, 64 | pool | 128 | pool → flatten (128·2·2) → dense 128 → ReLU → 10."""

    def __init__(self, plan: tuple = (32, 32, "M", 64, 64, "M", 128, "M")) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*conv_bn(cin, item), nn.ReLU()]
                cin = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(cin * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build(arch: str) -> nn.Module:
    """A freshly initialised net (seeded) of one of :data:`ARCHS`."""
    torch.manual_seed(SEED)
    return {"resnet": ResNet, "mobilenet": MobileNetV2, "vgg": VGG}[arch]()


def train(model: nn.Module, data: Digits16, epochs: int, lr: float = 3e-3, seed: int = SEED) -> nn.Module:
    """Adam with a cosine schedule, batches of 64, one thread; returns the model in eval mode."""
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 of a torch model on ``(x, y)``."""
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model: nn.Module, path: Path) -> Path:
    """``torch.onnx.export`` (TorchScript exporter, opset 17), dynamic batch; input ``input``, output ``logits``."""
    dummy = torch.zeros(1, 1, 16, 16)
    torch.onnx.export(model.eval(), (dummy,), str(path), input_names=["input"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return path


def make(arch: str, out_dir: Path, epochs: int = 15, data: Digits16 | None = None) -> tuple[Path, float]:
    """Train ``arch`` and write ``OUT_DIR/digits16_ARCH.onnx``; returns the path and the torch test top-1."""
    data = data or digits16()
    model = train(build(arch), data, epochs)
    path = export(model, Path(out_dir) / f"digits16_{arch}.onnx")
    return path, accuracy(model, data.x_test, data.y_test)


def save_data(data: Digits16, path: Path, split: str = "test") -> Path:
    """``x``/``y`` arrays of one split as ``.npz`` (the format of ``prune --eval`` and ``--calibration``)."""
    np.savez(path, x=getattr(data, f"x_{split}"), y=getattr(data, f"y_{split}"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--arch", nargs="+", choices=ARCHS, default=list(ARCHS))
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    data = digits16()
    save_data(data, args.out_dir / "digits16_test.npz", "test")
    save_data(data, args.out_dir / "digits16_train.npz", "train")
    for arch in args.arch:
        path, acc = make(arch, args.out_dir, args.epochs, data)
        print(f"{path}: torch test top-1 {acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
