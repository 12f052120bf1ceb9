"""The shared test builders themselves: a model written in ONNX text is the model built from nodes,
and each parameter edit changes exactly what it says (checked entry by entry, and against the
brute-force oracle and the hand network's closed form)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import (
    HAND,
    dropped,
    from_text,
    hand_mlp,
    hand_norm,
    initializer,
    inits,
    make_model,
    replace_inits,
    zeroed,
)
from onnx import TensorProto, helper
from oracle import brute_force_path_norm

import onnx_pathlift as pl

HAND_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
hand (float[1, 4] x) => (float[1, 2] y) {
    h = Gemm <transB = 1> (x, W1, b1)
    r = Relu (h)
    y = Gemm <transB = 1> (r, W2, b2)
}
"""


def test_text_and_nodes_build_the_same_network() -> None:
    """The hand network from ONNX text (weights given as arrays) and from nodes: same graph, same
    initializers, and both have the closed-form path-norm (49 for q = 1), which the oracle confirms."""
    text, nodes = from_text(HAND_TEXT, HAND), hand_mlp(out_shape=[1, 2])
    assert [n.op_type for n in text.graph.node] == [n.op_type for n in nodes.graph.node]
    assert [(list(n.input), list(n.output)) for n in text.graph.node] == [(list(n.input), list(n.output)) for n in nodes.graph.node]
    a, b = inits(text), inits(nodes)
    assert a.keys() == b.keys() and all(a[k].dtype == np.float32 and np.array_equal(a[k], b[k]) for k in a)
    assert hand_norm(1) == 49.0
    for q in (1.0, 2.0):
        assert brute_force_path_norm(text, q) ** (1 / q) == pytest.approx(hand_norm(q), rel=1e-12)
        for model in (text, nodes):
            assert pl.path_norm(model, q=q).value == pytest.approx(hand_norm(q), rel=1e-6)


def test_from_text_refuses_an_invalid_model() -> None:
    with pytest.raises(onnx.checker.ValidationError):
        from_text(HAND_TEXT)  # W1, b1, W2, b2 undefined


def test_initializer_stores_float64_as_float32_and_keeps_other_dtypes() -> None:
    assert initializer("a", np.ones(2)).data_type == TensorProto.FLOAT
    assert initializer("b", [1.5, 2.5]).data_type == TensorProto.FLOAT
    assert initializer("c", np.ones(2, np.float16)).data_type == TensorProto.FLOAT16
    assert initializer("d", np.array([1, 2])).data_type == TensorProto.INT64
    assert initializer("e", np.zeros(1, np.int8)).data_type == TensorProto.INT8


@pytest.mark.parametrize("opset, ir", [(9, 8), (17, 8), (19, 9), (21, 10)])
def test_ir_version_is_8_or_what_the_opset_needs(opset: int, ir: int) -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 2])], [("y", [1, 2])], opset=opset)
    assert model.ir_version == ir
    onnx.checker.check_model(model, full_check=True)
    assert make_model([], [], [], opset=opset, ir_version=7).ir_version == 7  # asked for: kept


def test_zeroed_sets_exactly_one_entry() -> None:
    model = hand_mlp()
    out = zeroed(model, "W1", (1, 0))
    before, after = inits(model), inits(out)
    assert after["W1"][1, 0] == 0 and before["W1"][1, 0] == 2
    assert np.count_nonzero(before["W1"] != after["W1"]) == 1
    assert all(np.array_equal(before[k], after[k]) for k in before if k != "W1")
    assert inits(model)["W1"][1, 0] == 2  # the original is left alone


def test_dropped_zeroes_the_named_tensors_only_about_the_fraction() -> None:
    """Each entry independently with probability 0.3: over 10 000 entries the count of zeros is within
    5 standard deviations of 3000; every other entry and every other tensor keeps its value."""
    rng = np.random.default_rng(0)
    weights = {"W": rng.uniform(1, 2, (100, 100)).astype(np.float32), "V": rng.uniform(1, 2, (100, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])]
    model = make_model(nodes, [("x", [1, 100])], [("y", [1, 3])], weights)
    out = inits(dropped(model, np.random.default_rng(1), 0.3, ["W"]))
    zeros = out["W"] == 0
    assert abs(int(zeros.sum()) - 3000) <= 5 * np.sqrt(10_000 * 0.3 * 0.7)
    assert np.array_equal(out["W"][~zeros], weights["W"][~zeros]) and np.array_equal(out["V"], weights["V"])
    both = inits(dropped(model, np.random.default_rng(1), 0.3))  # default: every MatMul weight
    assert (both["W"] == 0).any() and (both["V"] == 0).any()


def test_replace_inits_keeps_each_tensors_dtype() -> None:
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("Mul", ["r", "h"], ["y"])],
                       [("x", [1, 4])], [("y", [4])], {"s": np.array([4]), "h": np.ones(4, np.float16)})
    out = replace_inits(model, {"s": np.array([4.0]), "h": np.full(4, 2.0)})
    got = inits(out)
    assert got["s"].dtype == np.int64 and got["h"].dtype == np.float16 and (got["h"] == 2).all()
