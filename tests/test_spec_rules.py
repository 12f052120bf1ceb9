"""The spec rules each op registers next to its import rule (``@spec_rule`` in ops/): the rules of the
ONNX spec that ONNX shape inference does not check, enforced by ``prepare`` with the node named
(exit 4), or refused (exit 3) where the model is valid but outside the supported set."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_pathlift.errors import InvalidModelError, UnsupportedModelError
from onnx_pathlift.frontend.importer import import_model
from onnx_pathlift.frontend.prepare import prepare
from onnx_pathlift.graph.numeric import LOG10_VALUE_MAX, json_float, log10_value
from onnx_pathlift.ops import IMPORTERS
from onnx_pathlift.ops.registry import SPEC_RULES


def _model(op: str, x_shape: list[int], inits: dict[str, np.ndarray], opset: int = 13, **attrs):
    """One ``op`` node reading ``x`` then the initializers (in the order given), output ``y``."""
    node = helper.make_node(op, ["x", *inits], ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset >= 13 else 3)


W = np.ones((4, 3, 3, 3))
#: (op, input shape, initializers, opset, attributes) -> the message prepare raises
INVALID = {
    "conv channels": (("Conv", [1, 2, 5, 5], {"W": W}, 13, {}),
                      "its input has 2 channels, its kernel (4, 3, 3, 3) with group 1 takes 3"),
    "conv group": (("Conv", [1, 3, 5, 5], {"W": W}, 13, {"group": 3}),
                   "group 3 does not divide the kernel's 4 output channels"),
    "conv bias": (("Conv", [1, 3, 5, 5], {"W": W, "B": np.ones(3)}, 13, {}),
                  "its bias has shape (3,), its kernel (4, 3, 3, 3) needs (4,)"),
    "conv kernel_shape": (("Conv", [1, 3, 5, 5], {"W": W}, 6, {"kernel_shape": [2, 2]}),
                          "its kernel_shape [2, 2] differs from its kernel (4, 3, 3, 3)"),
    "conv pads and auto_pad": (("Conv", [1, 3, 5, 5], {"W": W}, 13, {"pads": [1] * 4, "auto_pad": "SAME_UPPER"}),
                               "it sets both pads [1, 1, 1, 1] and auto_pad 'SAME_UPPER'"),
    "gemm bias": (("Gemm", [2, 3], {"W": np.ones((5, 3)), "C": np.ones((3, 3))}, 6, {"transB": 1}),
                  "its bias of shape (3, 3) does not broadcast to the output (2, 5)"),
    "batchnorm scale": (("BatchNormalization", [1, 3, 4, 4],
                         {"s": np.ones((3, 1)), "b": np.ones(3), "mu": np.ones(3), "v": np.ones(3)}, 13, {}),
                        "its scale 's' has shape (3, 1), its input (1, 3, 4, 4) needs (3,)"),
    "prelu slope": (("PRelu", [1, 3, 4, 4], {"s": np.ones((5, 1, 1))}, 6, {}),
                    "its slope of shape (5, 1, 1) does not broadcast to its input (1, 3, 4, 4)"),
    "clip min": (("Clip", [1, 3], {"lo": np.zeros(2), "hi": np.float32(6)}, 13, {}),
                 "its min 'lo' has shape (2,), not a scalar"),
    "transpose perm": (("Transpose", [1, 3, 4, 4], {}, 6, {"perm": [2, 3, 1]}),
                       "its perm [2, 3, 1] is not a permutation of the axes of its input (1, 3, 4, 4)"),
    "global pool rank": (("GlobalMaxPool", [1, 3], {}, 6, {}), "its input (1, 3) has no spatial dimension"),
    "pool pads": (("AveragePool", [1, 3, 4, 4], {}, 13, {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}),
                  "its pads [2, 0, 0, 0] are not all smaller than its kernel [2, 2] (the spec's bound)"),
    "pool auto_pad": (("MaxPool", [1, 3, 4, 4], {}, 13, {"kernel_shape": [2, 2], "pads": [1] * 4, "auto_pad": "VALID"}),
                      "it sets both pads [1, 1, 1, 1] and auto_pad 'VALID'"),
    "legacy broadcast unset": (("Add", [2, 3], {"c": np.ones(3)}, 6, {}),
                               "operands of shapes (2, 3) and (3,) differ and broadcast is not set (opset < 7)"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_spec_rule_names_the_node_and_the_problem(case):
    (op, x_shape, inits, opset, attrs), message = INVALID[case]
    with pytest.raises(InvalidModelError) as err:
        prepare(_model(op, x_shape, inits, opset, **attrs))
    assert str(err.value) == f"node 'n' ({op}): {message}"


def test_legacy_broadcast_along_another_axis_is_refused():
    with pytest.raises(UnsupportedModelError, match=r"opset < 7 broadcast of \(2,\) along axis 0 of \(2, 3\)"):
        prepare(_model("Add", [2, 3], {"c": np.ones(2)}, 6, broadcast=1, axis=0))


@pytest.mark.parametrize("op, x_shape, inits, opset, attrs", [
    ("Conv", [1, 3, 5, 5], {"W": W}, 13, {"pads": [1] * 4, "auto_pad": "NOTSET"}),
    ("Mul", [2, 3], {"c": np.ones(3)}, 6, {"broadcast": 1}),  # trailing alignment: numpy's
    ("Add", [2, 3], {"c": np.ones(3)}, 7, {}),  # opset 7 broadcasts like numpy: no legacy rule
])
def test_valid_nodes_pass_their_spec_rule(op, x_shape, inits, opset, attrs):
    dag = import_model(_model(op, x_shape, inits, opset, **attrs))
    assert [layer.op for layer in dag.layers()][0] == "input"


def test_every_spec_rule_sits_with_an_import_rule():
    """A spec rule guards what an import rule relies on: each op with one is imported."""
    assert SPEC_RULES and set(SPEC_RULES) <= set(IMPORTERS)


def test_log10_value_stays_in_float64():
    """No overflow up to the threshold, None past it; exact where float64 holds the value."""
    for x in np.linspace(LOG10_VALUE_MAX - 1, LOG10_VALUE_MAX + 1, 2001):
        v = log10_value(float(x))
        assert (v is None) == (x >= LOG10_VALUE_MAX)
        assert v is None or (math.isfinite(v) and math.isclose(math.log10(v), x, rel_tol=1e-15))
    assert log10_value(-math.inf) == 0.0 and log10_value(math.nan) is None and log10_value(0.0) == 1.0
    assert [json_float(x) for x in (None, math.nan, math.inf, -math.inf, -2.5)] == [None, None, None, None, -2.5]
