"""Channel rules declared per op (``ops/channel_api.py``): ConvTranspose slicing (path mass against the path-norm
drop, slim against masked), its MACs counted against an enumeration of the scatter, and the declarations that
``slim``/``ranking`` read instead of op names."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import oracle
import pytest
from builders import inferred_net
from checks import analyse, group_of, slim_error
from onnx import helper

from onnx_pathlift.backend.norm import path_norm
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.ops.registry import costed_op_types
from onnx_pathlift.pruning.channels import group_scores
from onnx_pathlift.pruning.ranking import channel_costs
from onnx_pathlift.pruning.recover import recover
from onnx_pathlift.pruning.slim import float_parameters, layer_costs, masked_model, slim_model


def _deconv_net(group: int = 1, seed: int = 0, **attrs) -> onnx.ModelProto:
    """x[1,2,5,5] → Conv 3x3 (4, pad 1) → Relu → ConvTranspose (6, bias, ``attrs``) → Relu → Conv 1x1 (3, bias) → y."""
    rng = np.random.default_rng(seed)
    p = {"W0": rng.normal(0, 0.5, (4, 2, 3, 3)), "W": rng.normal(0, 0.5, (4, 6 // group, 3, 3)),
         "B": rng.normal(0, 0.3, 6), "W2": rng.normal(0, 0.5, (3, 6, 1, 1)), "B2": rng.normal(0, 0.3, 3)}
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "W", "B"], ["d"], group=group, **attrs),
             helper.make_node("Relu", ["d"], ["r2"]), helper.make_node("Conv", ["r2", "W2", "B2"], ["y"])]
    return inferred_net([1, 2, 5, 5], nodes, {k: v.astype(np.float32) for k, v in p.items()})


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 2], "pads": [1, 1, 0, 0]}])
def test_conv_transpose_channels_are_sliced_and_scored(attrs: dict) -> None:
    """Group 1: the ConvTranspose's input channels (rows of ``W``) and output channels (columns of ``W``,
    bias entries) are removable; each group's path mass is the drop of ‖Φ‖_1 when it is masked (a chain:
    no path crosses a group twice), and the slim model (fewer rows and columns) reproduces the masked one."""
    model = _deconv_net(**attrs)
    p, dag, cg = analyse(model)
    norm = path_norm(model).value
    mass = group_scores(cg, p, "path-mass", dag) * norm
    groups = [group_of(cg, "r", c) for c in range(4)] + [group_of(cg, "d", c) for c in range(6)]
    assert len(set(groups)) == 10 and not any(cg.groups[i].pinned for i in groups)
    for i in groups:
        drop = norm - path_norm(masked_model(model, cg, [i])).value
        assert drop > 0 and mass[i] == pytest.approx(drop, rel=1e-5)
    removed = [groups[0], groups[2], groups[5], groups[9]]
    slim = slim_model(model, cg, removed)
    w = next(onnx.numpy_helper.to_array(t) for t in slim.graph.initializer if t.name == "W")
    assert w.shape == (2, 4, 3, 3)
    assert float_parameters(slim) < float_parameters(model)
    assert slim_error(masked_model(model, cg, removed), slim, p) <= 1e-5


def test_grouped_conv_transpose_is_pinned_with_its_reason() -> None:
    """A grouped ConvTranspose is not sliced: its channels are kept, and the reason names the group."""
    _, _, cg = analyse(_deconv_net(group=2))
    assert "group 2" in cg.groups[group_of(cg, "r", 0)].pinned
    assert "group 2" in cg.groups[group_of(cg, "d", 0)].pinned


def _scatter_macs(x_shape: tuple[int, ...], w_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of a ConvTranspose (group 1, stride 1, no pads) by enumeration: one per (input
    neuron, output channel, kernel tap) whose target position ``(i + a, j + b)`` lies inside the output."""
    _, cin, h, w = x_shape
    _, cout, kh, kw = w_shape
    taps = sum(0 <= i + a < out_shape[2] and 0 <= j + b < out_shape[3]
               for i, j, a, b in itertools.product(range(h), range(w), range(kh), range(kw)))
    return cin * cout * taps


def test_conv_transpose_macs_are_counted() -> None:
    """``layer_costs`` counts a ConvTranspose (the slip of issue 25: it was left out): MACs = input size ×
    ``Π W.shape[1:]``, checked against an enumeration of the scatter; the ``macs`` cost's total includes it."""
    model = _deconv_net()
    p = prepare(model)
    rows = {c.op: c for c in layer_costs(p)}
    assert "ConvTranspose" in rows and "ConvTranspose" in costed_op_types()
    macs = _scatter_macs(p.shapes["r"], p.consts["W"].shape, p.shapes["d"])
    assert rows["ConvTranspose"].macs == macs == 4 * 5 * 5 * 6 * 3 * 3
    assert rows["ConvTranspose"].params == 4 * 6 * 9 + 6
    _, _, cg = analyse(model)
    costs = channel_costs(cg, p, "macs")
    assert costs is not None and costs.total == sum(c.macs for c in layer_costs(p))


@pytest.mark.parametrize("opset", [13, 18])
def test_split_into_equal_parts_keeps_them_equal(opset: int) -> None:
    """A Split without sizes (equal parts: one per output, or ``num_outputs`` at opset 18) joins channel k
    of every part into one group, so the parts stay equal; each group's path mass is the brute-force
    drop and the slim model (no Split edit needed) reproduces the masked one."""
    rng = np.random.default_rng(5)
    p = {"W": rng.normal(0, 0.5, (8, 2, 3, 3)), "Wa": rng.normal(0, 0.5, (3, 4, 1, 1)),
         "Wb": rng.normal(0, 0.5, (3, 4, 1, 1)), "Wf": rng.normal(0, 0.5, (3, 2))}
    split = {"num_outputs": 2} if opset >= 18 else {}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Split", ["r"], ["s1", "s2"], axis=1, **split),
             helper.make_node("Conv", ["s1", "Wa"], ["a"]), helper.make_node("Conv", ["s2", "Wb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["u"]), helper.make_node("Relu", ["u"], ["v"]),
             helper.make_node("GlobalAveragePool", ["v"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "Wf"], ["y"])]
    model = inferred_net([1, 2, 5, 5], nodes, {k: v.astype(np.float32) for k, v in p.items()}, opset=opset)
    p_, dag, cg = analyse(model)
    assert group_of(cg, "r", 1) == group_of(cg, "r", 5) == group_of(cg, "s1", 1) == group_of(cg, "s2", 1)
    groups = sorted({group_of(cg, "r", c) for c in range(4)})
    assert len(groups) == 4 and set(groups) <= set(cg.removable())
    norm = oracle.brute_force_path_norm(model, 1.0)
    mass = group_scores(cg, p_, "path-mass", dag) * norm
    for g in groups:
        assert mass[g] == pytest.approx(norm - oracle.brute_force_path_norm(masked_model(model, cg, [g]), 1.0), rel=1e-6)
    slim = slim_model(model, cg, groups[:2])
    onnx.checker.check_model(slim, full_check=True)
    assert slim_error(masked_model(model, cg, groups[:2]), slim, p_) <= 1e-5


def test_recovery_shifts_the_bias_of_a_sliced_conv_transpose() -> None:
    """Recovery asks the channel rules how to refit: a ConvTranspose (declared ``weight``, a bias at input 2,
    no refit kind) whose input channels were cut gets its bias shifted, not a weight refit; the conv after
    it is refit; the recovered slim model computes its full-size masked form."""
    model = _deconv_net()
    p, dag, cg = analyse(model)
    removed = [group_of(cg, "r", 1), group_of(cg, "d", 4)]
    x = np.random.default_rng(6).normal(0, 1, (64, 2, 5, 5)).astype(np.float32)
    rec = recover(model, slim_model(model, cg, removed), masked_model(model, cg, removed), cg, removed, p,
                  list(dag.outputs), (x, None))
    actions = {f.node: (f.op, f.action, f.note) for f in rec.layers}
    assert actions["d"] == ("ConvTranspose", "shift", "ConvTranspose weights are not refit: bias shift only")
    assert actions["y"][:2] == ("Conv", "refit")
    assert rec.slim_error <= 1e-4
