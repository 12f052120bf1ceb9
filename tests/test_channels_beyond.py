"""Channel slicing beyond ReLU networks (issue 31): smooth activations, squeeze-excitation gates, GroupNorm
(decomposed by the TorchScript exporter or as one GroupNormalization node), Instance/LayerNormalization and
Resize. Such models are no DAG-ReLU networks (no path mass): they are scored with ``l1-norm``; the slim
model must reproduce the masked one on random inputs, in independent onnxruntime sessions."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from builders import make_model
from checks import slim_error
from onnx import helper

from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.pruning.channels import channel_graph, group_scores
from onnx_pathlift.pruning.ranking import choose
from onnx_pathlift.pruning.slim import check_slim, float_parameters, kept_channels, masked_model, slim_model, untie

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def _prune(model: onnx.ModelProto, sparsity: float, checker: bool = True):
    """l1-norm groups, the ``sparsity`` fraction removed: (prepared, channel graph, removed, masked, slim);
    ``checker``: the slim model passes ``onnx.checker`` (it refuses the deprecated GroupNormalization-18)."""
    p = prepare(model)
    cg = channel_graph(model, p)
    removed = choose(cg, group_scores(cg, p, "l1-norm"), sparsity)
    masked, slim = masked_model(model, cg, removed), slim_model(model, cg, removed)
    if checker:
        onnx.checker.check_model(slim, full_check=True)
    assert check_slim(masked, slim, p, p.outputs) <= 1e-4  # the library's own check
    assert slim_error(masked, slim, p) <= 1e-4  # and an independent one
    return p, cg, removed, masked, slim


# --- torch exports ---------------------------------------------------------------------------------

class _SE(nn.Module):
    """Squeeze-excitation (MobileNetV3 / EfficientNet): ``x · gate(x)``, the gate (N, C, 1, 1) from two
    1x1 convs after a global average pool; ``gate_first`` writes ``gate · x`` (torchvision's order)."""

    def __init__(self, c: int, gate: type[nn.Module], gate_first: bool):
        super().__init__()
        self.f = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, c, 1), gate())
        self.gate_first = gate_first

    def forward(self, x):
        return self.f(x) * x if self.gate_first else x * self.f(x)


class _SELinear(nn.Module):
    """Squeeze-excitation with Linear layers (SENet's reference form): pool, view (N, C), two Linear, view (N, C, 1, 1)."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // 4), nn.ReLU(), nn.Linear(c // 4, c), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        return x * self.fc(nn.functional.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)


class _MBConv(nn.Module):
    """MobileNetV3's block: expand 1x1 → BN → Hardswish → depthwise 3x3 → BN → Hardswish → SE (Hardsigmoid)
    → project 1x1 → BN, plus the input (a residual)."""

    def __init__(self, c: int, e: int):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), nn.Hardswish(), nn.Conv2d(e, e, 3, padding=1, groups=e),
                               nn.BatchNorm2d(e), nn.Hardswish(), _SE(e, nn.Hardsigmoid, True), nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.f(x)


def _net(act=nn.ReLU, norm=nn.BatchNorm2d, se: tuple | None = None, up: bool = False) -> nn.Module:
    """Conv 3x3 (16) → norm → act → [Upsample ×2] → Conv 3x3 (32) → norm → act → [SE] → Conv 1x1 (24) → act → pool → Linear (10)."""
    layers = [nn.Conv2d(3, 16, 3, padding=1), norm(16), act()] + ([nn.Upsample(scale_factor=2)] if up else [])
    layers += [nn.Conv2d(16, 32, 3, padding=1), norm(32), act()] + ([_SE(32, *se)] if se else [])
    layers += [nn.Conv2d(32, 24, 1), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)]
    return nn.Sequential(*layers).eval()


NETS = {
    "silu": lambda: _net(nn.SiLU),
    "hardswish": lambda: _net(nn.Hardswish),
    "gelu": lambda: _net(nn.GELU),
    "gelu_tanh": lambda: _net(lambda: nn.GELU(approximate="tanh")),
    "mish": lambda: _net(nn.Mish),
    "groupnorm": lambda: _net(nn.ReLU, norm=lambda c: nn.GroupNorm(4, c)),
    "instancenorm": lambda: _net(nn.LeakyReLU, norm=lambda c: nn.InstanceNorm2d(c, affine=True)),
    "se_hardsigmoid": lambda: _net(nn.ReLU, se=(nn.Hardsigmoid, False)),
    "se_sigmoid_gate_first": lambda: _net(nn.SiLU, se=(nn.Sigmoid, True)),
    "upsample_tanh": lambda: _net(nn.Tanh, up=True),
    "se_linear": lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(), _SELinear(16),
                                       nn.Conv2d(16, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval(),
    "mbconv": lambda: nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish(), _MBConv(16, 32),
                                    nn.Conv2d(16, 24, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(24, 10)).eval(),
}


def _export(name: str) -> onnx.ModelProto:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = NETS[name]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):  # not the identity: the affine params are sliced
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def exported() -> dict[str, onnx.ModelProto]:
    return {name: _export(name) for name in NETS}


@pytest.mark.parametrize("name", sorted(NETS))
def test_torch_nets_beyond_relu_are_pruned(exported, name: str) -> None:
    """Every channel between the input and the classifier's output is in a removable group; at 30/50/70 %
    the slim model reproduces the masked one, and at 50 % at least 20 % of the parameters go."""
    model = exported[name]
    before = float_parameters(model)
    p = prepare(model)
    cg = channel_graph(model, p)
    pinned = {g.pinned for g in cg.groups if g.pinned}
    assert all("graph input" in why or "graph output" in why for why in pinned), pinned
    for sparsity in (0.3, 0.5, 0.7):
        _, _, removed, _, slim = _prune(model, sparsity)
        assert removed
        if sparsity == 0.5:
            assert float_parameters(slim) <= 0.8 * before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["groupnorm", "se_sigmoid_gate_first", "gelu_tanh", "upsample_tanh"])
def test_dynamo_exports_beyond_relu_are_pruned(name: str) -> None:
    """The dynamo exporter (opset 18: GroupNorm as Reshape of constants, pools as ReduceMean, Linear after
    a Reshape, initializers in value_info) gives other graphs of the same nets: each is pruned as well,
    slim = masked, and the slim model passes the checker (its value_info follows the cut initializers)."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    exported = torch.onnx.export(NETS[name](), (torch.randn(1, 3, 8, 8),), dynamo=True, opset_version=18,
                                 verbose=False).model_proto
    model, _ = untie(exported)  # dynamo shares equal constants (GroupNorm's unit scales): a copy per reader, as prune does
    p = prepare(model)
    cg = channel_graph(model, p)
    assert all("graph input" in g.pinned or "graph output" in g.pinned for g in cg.groups if g.pinned)
    _, _, removed, _, slim = _prune(model, 0.5)
    assert removed and float_parameters(slim) <= 0.8 * float_parameters(model)


def test_groupnorm_removes_whole_groups(exported) -> None:
    """GroupNorm(4, C) exported as Reshape (N, 4, -1) → InstanceNormalization → Reshape(Shape(x)) → affine:
    a group holds the C/4 channels of one GroupNorm group, so every kept width is a multiple of C/4 and
    the reshape target and the InstanceNormalization scale/bias shrink by whole groups."""
    model = exported["groupnorm"]
    p, cg, removed, _, slim = _prune(model, 0.5)
    kept = kept_channels(cg, removed)
    norms = [n for n in p.nodes if n.op_type == "InstanceNormalization"]
    assert len(norms) == 2
    for norm in norms:
        folded, x = norm.input[0], next(n.input[0] for n in p.nodes if n.output[0] == norm.input[0])
        per = p.shapes[x][1] // 4
        assert kept[x] % per == 0 and kept[folded] * per == kept[x] < p.shapes[x][1]
    values = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in slim.graph.node if n.op_type == "Constant"}
    for node in (n for n in slim.graph.node if n.op_type == "InstanceNormalization"):
        fold = next(n for n in slim.graph.node if n.output[0] == node.input[0])
        groups = kept[node.input[0]]
        assert values[fold.input[1]].tolist() == [0, groups, -1]
        assert values[node.input[1]].shape == values[node.input[2]].shape == (groups,)


# --- graphs written with onnx.helper ---------------------------------------------------------------

def _chain(middle: list[onnx.NodeProto], params: dict, opset: int = 17, c: int = 8) -> onnx.ModelProto:
    """x[1,3,6,6] → Conv 3x3 (c, pad 1) → ``middle`` (reads "a", writes "m", same shape) → Conv 1x1 (4) → y."""
    rng = np.random.default_rng(0)
    p = {"W1": rng.normal(0, 0.5, (c, 3, 3, 3)), "B1": rng.normal(0, 0.3, c), "W2": rng.normal(0, 0.5, (4, c, 1, 1))}
    p = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in {**p, **params}.items()}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["a"], pads=[1, 1, 1, 1]), *middle,
             helper.make_node("Conv", ["m", "W2"], ["y"])]
    return make_model(nodes, [("x", [1, 3, 6, 6])], [("y", [1, 4, 6, 6])], p, opset=opset)


@pytest.mark.parametrize("opset,scale_size", [(18, 4), (21, 8)])
def test_group_normalization_node_keeps_whole_groups(opset: int, scale_size: int) -> None:
    """GroupNormalization(num_groups 4) of 8 channels: groups of 2 channels; scale/bias per group (opset
    18) or per channel (opset 21) are sliced; num_groups is edited to the kept groups."""
    rng = np.random.default_rng(1)
    model = _chain([helper.make_node("GroupNormalization", ["a", "s", "t"], ["m"], num_groups=4)],
                   {"s": rng.uniform(0.5, 1.5, scale_size), "t": rng.normal(0, 0.3, scale_size)}, opset=opset)
    p, cg, removed, _, slim = _prune(model, 0.5, checker=opset != 18)
    assert len(cg.removable()) == 4 and len(removed) == 2
    assert all(len([c for c in cg.groups[i].channels if c[0] == "a"]) == 2 for i in cg.removable())
    node = next(n for n in slim.graph.node if n.op_type == "GroupNormalization")
    assert next(a.i for a in node.attribute if a.name == "num_groups") == 2


@pytest.mark.parametrize("axis,sliced", [(1, False), (-3, False), (2, True)])
def test_layer_normalization_is_sliced_only_after_the_channel_axis(axis: int, sliced: bool) -> None:
    """LayerNormalization over the channel axis couples every channel to all (pinned, with the reason);
    over the spatial axes only (axis 2) it acts per channel (its scale (6, 6) has no channel axis)."""
    shape = (8, 6, 6) if axis in (1, -3) else (6, 6)
    rng = np.random.default_rng(2)
    model = _chain([helper.make_node("LayerNormalization", ["a", "s", "t"], ["m"], axis=axis)],
                   {"s": rng.uniform(0.5, 1.5, shape), "t": rng.normal(0, 0.3, shape)})
    p = prepare(model)
    cg = channel_graph(model, p)
    if not sliced:
        assert not cg.removable() and any("normalises over the channel axis" in g.pinned for g in cg.groups)
        return
    assert len(cg.removable()) == 8
    _prune(model, 0.5)


@pytest.mark.parametrize("form", ["scales", "sizes", "sizes_axes"])
def test_resize_maps_each_channel_to_itself(form: str) -> None:
    """Resize (nearest, ×2 on H and W) by scales, by sizes (its channel entry rewritten) or by sizes on
    axes (2, 3) only (nothing to rewrite); the second conv reads the upsampled tensor."""
    if form == "scales":
        inputs, extra = ["a", "", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}
    elif form == "sizes":
        inputs, extra = ["a", "", "", "sz"], {"sz": np.array([1, 8, 12, 12], np.int64)}
    else:
        inputs, extra = ["a", "", "", "sz"], {"sz": np.array([12, 12], np.int64)}
    attrs = {"axes": [2, 3]} if form == "sizes_axes" else {}
    model = _chain([helper.make_node("Resize", inputs, ["r"], mode="nearest", **attrs),
                    helper.make_node("Tanh", ["r"], ["m"])], extra, opset=18)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 12
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 12
    p, cg, removed, _, slim = _prune(model, 0.5)
    assert len(cg.removable()) == 8 and len(removed) == 4
    if form == "sizes":
        sz = next(onnx.numpy_helper.to_array(t) for t in slim.graph.initializer if t.name == "sz")
        assert sz.tolist() == [1, 4, 12, 12]


def test_broadcast_across_channels_pins_and_per_channel_gate_joins() -> None:
    """``a · g`` with ``g`` (N, 1, H, W) (a spatial gate, one channel for all) cannot be sliced: pinned;
    with ``g`` (N, C, 1, 1) (a per-channel gate from a pool and a 1x1 conv) the gate's conv output
    channel c is joined to channel c of ``a``, so its filters go with the channels they scale."""
    rng = np.random.default_rng(4)
    spatial = _chain([helper.make_node("ReduceMean", ["a", "ax"], ["g"], keepdims=1),
                      helper.make_node("Sigmoid", ["g"], ["s"]), helper.make_node("Mul", ["a", "s"], ["m"])],
                     {"ax": np.array([1], np.int64)}, opset=18)
    p = prepare(spatial)
    assert not channel_graph(spatial, p).removable()
    gate = _chain([helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Conv", ["g", "Wg"], ["h"]),
                   helper.make_node("HardSigmoid", ["h"], ["s"]), helper.make_node("Mul", ["s", "a"], ["m"])],
                  {"Wg": rng.normal(0, 0.5, (8, 8, 1, 1))})
    p = prepare(gate)
    cg = channel_graph(gate, p)
    assert len(cg.removable()) == 8
    for i in cg.removable():
        assert {t for t, _ in cg.groups[i].channels} == {"a", "g", "h", "s", "m"}
        assert {(e[0], e[1]) for e in cg.groups[i].sinks} == {("Wg", 1), ("W2", 1)}
        assert {(e[0], e[1]) for e in cg.groups[i].sources} == {("Wg", 0), ("W1", 0)}
    _prune(gate, 0.5)
