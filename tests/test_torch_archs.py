"""Import what the world exports: torchvision's architectures, rebuilt in plain torch
(``torch_archs``), exported by both torch exporters, must import, re-emit faithfully and get the
path-norms that an independent float64 evaluation of the torch module itself gives
(``torch_reference``: torch.fx interpretation of the lifted network), to 1e-5 relative for q = 1, 2, 4.

Both exporters fold each BatchNorm that follows a Conv into it (eval mode): the ONNX path-norm is
that of the fused parameterization, so the reference folds the same pairs, and the test checks
that the ONNX file keeps exactly the BatchNorms the reference keeps (DenseNet's pre-activation
ones). The reference itself is checked against the brute-force oracle on tiny exported nets.
"""

from __future__ import annotations

import gc
import math

import onnx
import oracle
import pytest

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.frontend.importer import import_prepared
from onnx_pathlift.frontend.prepare import prepare

torch = pytest.importorskip("torch")
import torch_archs  # noqa: E402  (they import torch)
import torch_reference  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

QS = (1.0, 2.0, 4.0)
RTOL = 1e-5
EXPORTERS = ("torchscript", "dynamo")

#: (architecture, exporter) → why onnx_pathlift cannot analyse that export yet (strict xfail)
XFAIL: dict[tuple[str, str], str] = {}


def export(model: nn.Module, shape, exporter: str, path) -> None:
    """TorchScript exporter at opset 13, or the dynamo exporter at opset 18 with external data."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (.ci/run installs it)")
    x = torch.randn(shape)
    if exporter == "torchscript":
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=13, input_names=["input"],
                          output_names=["logits"])
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, external_data=True,
                          input_names=["input"], output_names=["logits"], verbose=False)


_REFERENCE: dict[str, tuple[dict[float, float], int]] = {}


def reference(name: str, model: nn.Module, shape) -> tuple[dict[float, float], int]:
    """The reference ``log10 ‖Φ‖_q^q`` per q (BatchNorms folded into their convs as the exporters
    do) and the number of BatchNorms it keeps, computed once per architecture."""
    if name not in _REFERENCE:
        ref, kept = {}, set()
        for q in QS:
            log2, n_bn = torch_reference.lifted_log2(model, shape, q, fuse_conv_bn=True)
            ref[q] = log2 * math.log10(2.0)
            kept.add(n_bn)
        _REFERENCE[name] = ref, kept.pop()
    return _REFERENCE[name]


def rel_error(log10_a: float, log10_b: float) -> float:
    """|a/b − 1| from the two log10 values."""
    return abs(math.expm1((log10_a - log10_b) * math.log(10.0)))


CASES = [pytest.param(name, exporter, id=f"{name}-{exporter}",
                      marks=[pytest.mark.xfail(strict=True, reason=XFAIL[name, exporter])]
                      if (name, exporter) in XFAIL else [])
         for name in torch_archs.ARCHS for exporter in EXPORTERS]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_exported_architecture(name: str, exporter: str, tmp_path) -> None:
    model, shape = torch_archs.build(name, seed=list(torch_archs.ARCHS).index(name))  # the same weights each time
    ref, kept_bn = reference(name, model, shape)
    path = tmp_path / f"{name}.onnx"
    export(model, shape, exporter, path)
    del model  # VGG-11 holds 0.5 GB
    gc.collect()

    source = load_model(path)  # external data from the model's folder
    assert sum(n.op_type == "BatchNormalization" for n in source.graph.node) == kept_bn, \
        "the exporter did not fold exactly the Conv→BatchNorm pairs the reference folds"
    prepared = prepare(source)
    dag = import_prepared(prepared)
    report = verify(source, dag, prepared.elem_types, trials=1)
    assert report.passed, report

    for q in QS:
        got = pl.path_norm(dag, q=q)  # ‖Φ‖_q: compare the q-th powers, the reference's quantity
        err = rel_error(q * got.log10, ref[q])
        assert err <= RTOL, f"q={q}: ‖Φ‖_q^q = 10^{q * got.log10:.9f}, reference 10^{ref[q]:.9f} (rel. error {err:.2e})"


# ---------------------------------------------------------------------------------------------
# the reference itself, against the brute-force oracle (path enumeration on the exported ONNX)
# ---------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """Conv+bias → BN (folded by the exporter), max-pool with padding and a ceil_mode window,
    ReLU6 (as a module, or spelled out as its DAG-ReLU chain ``6 − relu(6 − relu(x))``), slices,
    skip add, concat, BN on a concat (kept), avg-pool ceil_mode without pad counting, mean, Linear."""

    def __init__(self, explicit_relu6: bool = False):
        super().__init__()
        self.explicit = explicit_relu6
        self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.conv2, self.relu6 = nn.Conv2d(4, 4, 1), nn.ReLU6()
        self.bn2 = nn.BatchNorm2d(6)
        self.avg = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.fc = nn.Linear(6 * 3 * 3 + 6, 3)

    def forward(self, x):
        y = self.pool(F.relu(self.bn1(self.conv1(x))))
        z = self.conv2(y)
        z = 6.0 - F.relu(6.0 - F.relu(z)) if self.explicit else self.relu6(z)
        u = F.relu(self.bn2(torch.cat([z + y, y[:, :2]], 1)))
        return self.fc(torch.cat([torch.flatten(self.avg(u), 1), u.mean([2, 3])], 1))


class TinyPools(nn.Module):
    """Dilated max-pool, avg-pool ceil_mode counting pads, adaptive avg-pool with overlapping windows
    (3 → 2; the dynamo exporter writes it as a GatherND, the TorchScript exporter refuses it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.mp = nn.MaxPool2d(2, 1, dilation=2)
        self.ap = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
        self.fc = nn.Linear(3 * 2 * 2, 2)

    def forward(self, x):
        y = self.ap(self.mp(F.relu(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, (2, 2)), 1))


def _tiny(cls, *args) -> nn.Module:
    torch.manual_seed(0)
    return torch_archs.randomise(cls(*args), 1).eval()


def test_reference_against_brute_force_oracle(tmp_path) -> None:
    shape = (1, 2, 7, 7)
    explicit, relu6 = _tiny(Tiny, True), _tiny(Tiny, False)
    export(explicit, shape, "torchscript", tmp_path / "tiny.onnx")
    export(relu6, shape, "torchscript", tmp_path / "tiny_relu6.onnx")
    pools = _tiny(TinyPools)
    export(pools, shape, "dynamo", tmp_path / "pools.onnx")
    for q in QS:
        want = oracle.brute_force_path_norm(onnx.load(tmp_path / "tiny.onnx"), q)
        got, kept = torch_reference.lifted_log2(explicit, shape, q, fuse_conv_bn=True)
        assert kept == 1
        assert 2.0 ** got == pytest.approx(want, rel=1e-6)
        # ReLU6's lifted form is that of its DAG-ReLU chain (same parameters)
        assert torch_reference.lifted_log2(relu6, shape, q, fuse_conv_bn=True)[0] == pytest.approx(got, abs=1e-12)
        # and onnx_pathlift agrees on the Clip export
        assert rel_error(q * pl.path_norm(tmp_path / "tiny_relu6.onnx", q=q).log10, got * math.log10(2)) <= RTOL

        want = oracle.brute_force_path_norm(onnx.load(tmp_path / "pools.onnx"), q)
        got = torch_reference.lifted_log2(pools, shape, q)[0]
        assert 2.0 ** got == pytest.approx(want, rel=1e-6)
        # the dynamo export writes the overlapping adaptive pool as Transpose → GatherND → ReduceMean
        assert rel_error(q * pl.path_norm(tmp_path / "pools.onnx", q=q).log10, got * math.log10(2)) <= RTOL


def test_reference_unfused_batchnorm_differs_only_with_a_conv_bias() -> None:
    """Folding BN into a conv without bias keeps the path-norm; with a bias it lowers it."""
    shape = (1, 2, 7, 7)
    for with_bias in (False, True):
        torch.manual_seed(0)
        net = torch_archs.randomise(nn.Sequential(nn.Conv2d(2, 3, 3, bias=with_bias), nn.BatchNorm2d(3), nn.ReLU(),
                                                  nn.Flatten(), nn.Linear(75, 2)), 1).eval()
        fused, kept_f = torch_reference.lifted_log2(net, shape, 1.0, fuse_conv_bn=True)
        unfused, kept_u = torch_reference.lifted_log2(net, shape, 1.0)
        assert (kept_f, kept_u) == (0, 1)
        assert fused < unfused if with_bias else fused == pytest.approx(unfused, abs=1e-12)
