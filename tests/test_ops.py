"""Every supported op configuration, alone in a tiny net, against the brute-force oracle and the
re-emission check."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import net, weight_stream
from checks import assert_scores_are_brute_force_drops, drop_fraction
from onnx import TensorProto, helper
from oracle import brute_force_path_norm

import onnx_pathlift as pl
from onnx_pathlift.backend.verify import verify

w = weight_stream(123)


def _conv(x_shape, w_shape, out_shape, **attrs):
    return net(x_shape, [helper.make_node("Conv", ["x", "W", "B"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["y"])],
               out_shape, {"W": w(*w_shape), "B": w(w_shape[0])})


def _pool(op, x_shape, out_shape, **attrs):
    return net(x_shape, [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
                         helper.make_node(op, ["c"], ["y"], **attrs)], out_shape, {"W": w(2, x_shape[1], 3, 3)})


CASES = {
    "conv1d_stride_dilation": lambda: _conv([1, 2, 9], [3, 2, 3], [1, 3, 3], strides=[2], dilations=[2]),
    "conv3d": lambda: _conv([1, 1, 4, 4, 3], [2, 1, 2, 2, 2], [1, 2, 3, 3, 2]),
    "conv_auto_pad_same_upper": lambda: _conv([1, 2, 5, 5], [2, 2, 2, 2], [1, 2, 3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    "conv_auto_pad_same_lower": lambda: _conv([1, 2, 5, 5], [2, 2, 2, 2], [1, 2, 5, 5], auto_pad="SAME_LOWER"),
    "conv_depthwise": lambda: _conv([1, 4, 5, 5], [4, 1, 3, 3], [1, 4, 5, 5], group=4, pads=[1, 1, 1, 1]),
    "maxpool_ceil_dilation": lambda: _pool("MaxPool", [1, 1, 8, 8], [1, 2, 4, 4], kernel_shape=[2, 2], strides=[2, 2],
                                           dilations=[2, 2], ceil_mode=1),
    "maxpool_pads": lambda: _pool("MaxPool", [1, 1, 6, 6], [1, 2, 3, 3], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0]),
    "avgpool_include_pad_ceil": lambda: _pool("AveragePool", [1, 1, 6, 6], [1, 2, 4, 4], kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[1, 1, 1, 1], count_include_pad=1, ceil_mode=1),
    "avgpool_exclude_pad": lambda: _pool("AveragePool", [1, 1, 5, 5], [1, 2, 3, 3], kernel_shape=[3, 3], strides=[2, 2],
                                         pads=[1, 1, 1, 1]),
    "global_max_pool": lambda: _pool("GlobalMaxPool", [1, 2, 4, 4], [1, 2, 1, 1]),
    "global_avg_pool": lambda: _pool("GlobalAveragePool", [1, 2, 4, 4], [1, 2, 1, 1]),
    "gemm_transA_alpha_beta": lambda: net([4, 1], [helper.make_node("Gemm", ["x", "W", "C"], ["y"], transA=1, alpha=0.5, beta=2.0)],
                                          [1, 3], {"W": w(4, 3), "C": w(1, 3)}),
    "gemm_constant_left": lambda: net([4, 2], [helper.make_node("Gemm", ["W", "x", "C"], ["y"], transA=1)], [3, 2],
                                      {"W": w(4, 3), "C": w(3, 1)}),
    "matmul_constant_left": lambda: net([1, 4, 2], [helper.make_node("MatMul", ["W", "x"], ["m"]),
                                                    helper.make_node("Relu", ["m"], ["y"])], [1, 3, 2], {"W": w(3, 4)}),
    "sub_div_mul_constants": lambda: net([1, 3], [helper.make_node("Sub", ["c", "x"], ["a"]),
                                                  helper.make_node("Div", ["a", "d"], ["b"]),
                                                  helper.make_node("Mul", ["m", "b"], ["e"]),
                                                  helper.make_node("Sub", ["e", "s"], ["y"])], [1, 3],
                                         {"c": w(3), "d": w(1, 3), "m": w(3), "s": w(3)}),
    "sum_three_with_constant": lambda: net([1, 3], [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["x"], ["r"]),
                                                    helper.make_node("Sum", ["a", "r", "x", "c"], ["y"])], [1, 3],
                                           {"W": w(3, 3), "c": w(3)}),
    "sub_of_activations": lambda: net([1, 3], [helper.make_node("MatMul", ["x", "W"], ["a"]),
                                               helper.make_node("Sub", ["x", "a"], ["y"])], [1, 3], {"W": w(3, 3)}),
    "broadcast_bias_grows_tensor": lambda: net([1, 1], [helper.make_node("Add", ["x", "c"], ["a"]),
                                                        helper.make_node("Relu", ["a"], ["y"])], [2, 3], {"c": w(2, 3)}),
    "squeeze_unsqueeze_transpose_flatten": lambda: net(
        [1, 2, 3], [helper.make_node("Unsqueeze", ["x", "ax"], ["u"]), helper.make_node("Transpose", ["u"], ["t"], perm=[0, 3, 2, 1]),
                    helper.make_node("Squeeze", ["t", "ax0"], ["s"]), helper.make_node("Flatten", ["s"], ["f"], axis=1),
                    helper.make_node("MatMul", ["f", "W"], ["y"])], [3, 5],
        {"ax": np.array([1], np.int64), "ax0": np.array([0], np.int64), "W": w(2, 5)}),
    "reshape_from_shape_arithmetic": lambda: net(  # the oracle folds constants only, so it sees no Shape
        [1, 2, 2, 2], [helper.make_node("Shape", ["x"], ["sh"]), helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
                       helper.make_node("Concat", ["n", "m1"], ["ns"], axis=0), helper.make_node("Reshape", ["x", "ns"], ["r"]),
                       helper.make_node("Gemm", ["r", "W", "B"], ["y"])], [1, 3],
        {"i0": np.array([0], np.int64), "m1": np.array([-1], np.int64), "W": w(8, 3), "B": w(3)}),
    "reshape_to_constant_shape": lambda: net(
        [1, 2, 2, 2], [helper.make_node("Reshape", ["x", "ns"], ["r"]), helper.make_node("Gemm", ["r", "W", "B"], ["y"])],
        [1, 3], {"ns": np.array([1, -1], np.int64), "W": w(8, 3), "B": w(3)}),
    "concat_and_dropout_identity": lambda: net(
        [1, 2, 3, 3], [helper.make_node("Conv", ["x", "W"], ["a"]), helper.make_node("Dropout", ["x"], ["d"]),
                       helper.make_node("Identity", ["d"], ["i"]), helper.make_node("Concat", ["a", "i"], ["y"], axis=1)],
        [1, 4, 3, 3], {"W": w(2, 2, 1, 1)}),
    "batchnorm_1d_input": lambda: net(
        [1, 4], [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
                 helper.make_node("Relu", ["n"], ["y"])], [1, 4],
        {"g": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.1}),
    "pad_zero_then_conv": lambda: net([1, 2, 4, 4], [helper.make_node("Pad", ["x", "pads"], ["p"]),
                                                     helper.make_node("Conv", ["p", "W"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                                      [1, 3, 4, 4], {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "W": w(3, 2, 2, 2)}),
    "pad_edge": lambda: net([1, 2, 3, 3], [helper.make_node("Conv", ["x", "W"], ["c"]),
                                           helper.make_node("Pad", ["c", "pads"], ["y"], mode="edge")],
                            [1, 2, 5, 4], {"W": w(2, 2, 1, 1), "pads": np.array([0, 0, 1, 0, 0, 0, 1, 1], np.int64)}),
    "pad_reflect": lambda: net([1, 1, 4, 4], [helper.make_node("Conv", ["x", "W"], ["c"]),
                                              helper.make_node("Pad", ["c", "pads"], ["y"], mode="reflect")],
                               [1, 2, 6, 6], {"W": w(2, 1, 1, 1), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}),
    "max_of_two_branches": lambda: net([1, 2, 3, 3], [helper.make_node("Conv", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                                                      helper.make_node("Conv", ["x", "V", "B"], ["b"]), helper.make_node("Max", ["r", "b"], ["m"]),
                                                      helper.make_node("Conv", ["m", "U"], ["y"])],
                                       [1, 2, 2, 2], {"W": w(3, 2, 1, 1), "V": w(3, 2, 1, 1), "B": w(3), "U": w(2, 3, 2, 2)}),
    "max_of_three": lambda: net([1, 3], [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["x"], ["r"]),
                                         helper.make_node("Max", ["a", "r", "x"], ["y"])], [1, 3], {"W": w(3, 3)}),
    "old_opset_9": lambda: net([1, 3], [helper.make_node("Gemm", ["x", "W", "B"], ["g"], transB=1),
                                        helper.make_node("Relu", ["g"], ["y"])], [1, 2], {"W": w(2, 3), "B": w(2)}, opset=9),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_against_oracle(case: str) -> None:
    model = CASES[case]()
    onnx.checker.check_model(model, full_check=True)
    dag = pl.import_model(model)
    assert verify(model, dag, trials=3).passed
    if case == "reshape_from_shape_arithmetic":
        return  # its norm equals the constant-shape twin's, checked below
    for q in (1.0, 2.0, 4.0):
        want = brute_force_path_norm(model, q)
        assert pl.path_norm(dag, q=q).value == pytest.approx(want ** (1 / q), rel=1e-6), q


def test_shape_arithmetic_is_folded() -> None:
    global w
    w = weight_stream(5)
    folded = CASES["reshape_from_shape_arithmetic"]()
    w = weight_stream(5)
    plain = CASES["reshape_to_constant_shape"]()
    assert pl.path_norm(folded, q=2).value == pytest.approx(pl.path_norm(plain, q=2).value, rel=1e-12)


def test_refusals_list_every_node() -> None:
    model = net([1, 3], [helper.make_node("Sigmoid", ["x"], ["a"], name="sig"), helper.make_node("Tanh", ["x"], ["b"], name="th"),
                         helper.make_node("Mul", ["a", "b"], ["c"], name="prod"), helper.make_node("Relu", ["x"], ["r"]),
                         helper.make_node("Mul", ["r", "r"], ["y"], name="square")], [1, 3], {})
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3]))
    with pytest.raises(pl.UnsupportedModelError) as err:
        pl.import_model(model)
    assert {(r.node, r.op_type) for r in err.value.refusals} == {("sig", "Sigmoid"), ("th", "Tanh"), ("square", "Mul")}
    assert err.value.exit_code == 3


def test_maxpool_ceil_window_in_padding_is_refused() -> None:
    """onnxruntime drops a ceil_mode window that starts in the end padding; ONNX shape inference keeps it."""
    model = net([1, 1, 4, 4], [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                                                pads=[0, 0, 1, 1], ceil_mode=1, name="mp")], [1, 1, 3, 3], {})
    with pytest.raises(pl.UnsupportedModelError, match="onnxruntime computes"):
        pl.import_model(model)


def _act_net(act_nodes: list, extra: dict) -> onnx.ModelProto:
    """Gemm → (activation nodes: h → a) → Gemm, with fixed weights."""
    rng = np.random.default_rng(9)
    params = {"W1": rng.normal(size=(4, 3)), "b1": rng.normal(size=4), "W2": rng.normal(size=(2, 4)), **extra}
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), *act_nodes,
             helper.make_node("Gemm", ["a", "W2"], ["y"], transB=1)]
    return net([1, 3], nodes, [1, 2], params)


def _c(v) -> np.ndarray:
    return np.asarray(v, np.float32)


#: each piecewise-linear activation, and the same function written with Mul/Add/Relu nodes only: the
#: brute-force oracle probes the second, so it checks the DAG-ReLU form the importer chose
ACTIVATIONS = {
    "leaky_relu": ([helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.2)], {},
                   [helper.make_node("Mul", ["h", "al"], ["p"]), helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Mul", ["r", "om"], ["s"]), helper.make_node("Add", ["p", "s"], ["a"])],
                   {"al": _c(0.2), "om": _c(0.8)}),
    "prelu_per_channel": ([helper.make_node("PRelu", ["h", "sl"], ["a"])], {"sl": _c([0.1, -0.3, 0.5, 2.0])},
                          [helper.make_node("Mul", ["h", "sl"], ["p"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Mul", ["r", "om"], ["s"]), helper.make_node("Add", ["p", "s"], ["a"])],
                          {"sl": _c([0.1, -0.3, 0.5, 2.0]), "om": _c([0.9, 1.3, 0.5, -1.0])}),
    "relu6": ([helper.make_node("Clip", ["h", "lo", "hi"], ["a"])], {"lo": _c(0.0), "hi": _c(6.0)},
              [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Sub", ["six", "r"], ["d"]),
               helper.make_node("Relu", ["d"], ["r2"]), helper.make_node("Sub", ["six", "r2"], ["a"])],
              {"six": _c(6.0)}),
    "clip_two_sided": ([helper.make_node("Clip", ["h", "lo", "hi"], ["a"])], {"lo": _c(-0.5), "hi": _c(0.7)},
                       [helper.make_node("Add", ["h", "half"], ["u"]), helper.make_node("Relu", ["u"], ["r"]),
                        helper.make_node("Sub", ["span", "r"], ["d"]), helper.make_node("Relu", ["d"], ["r2"]),
                        helper.make_node("Sub", ["hi", "r2"], ["a"])],
                       {"half": _c(0.5), "span": _c(1.2), "hi": _c(0.7)}),
    "clip_min_only": ([helper.make_node("Clip", ["h", "lo"], ["a"])], {"lo": _c(0.3)},
                      [helper.make_node("Sub", ["h", "lo"], ["u"]), helper.make_node("Relu", ["u"], ["r"]),
                       helper.make_node("Add", ["r", "lo"], ["a"])], {"lo": _c(0.3)}),
    "clip_max_only": ([helper.make_node("Clip", ["h", "", "hi"], ["a"])], {"hi": _c(0.3)},
                      [helper.make_node("Sub", ["hi", "h"], ["u"]), helper.make_node("Relu", ["u"], ["r"]),
                       helper.make_node("Sub", ["hi", "r"], ["a"])], {"hi": _c(0.3)}),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_piecewise_linear_activation_forms(name: str) -> None:
    nodes, extra, plain_nodes, plain_extra = ACTIVATIONS[name]
    model, plain = _act_net(nodes, extra), _act_net(plain_nodes, plain_extra)
    dag = pl.import_model(model)
    assert verify(model, dag, trials=5).passed
    for q in (1.0, 2.0, 4.0):
        assert pl.path_norm(dag, q=q).value == pytest.approx(brute_force_path_norm(plain, q) ** (1 / q), rel=1e-6)


def test_relu6_form_does_not_double_paths() -> None:
    """20 ReLU6 layers: the one-chain form keeps the path count linear (lifted x + 2·6^q per layer);
    relu(x) − relu(x − 6) would double every path per layer (2^20)."""
    width, depth = 2, 20
    nodes, params, x = [], {"lo": _c(0.0), "hi": _c(6.0)}, "x"
    for i in range(depth):
        params[f"W{i}"] = np.eye(width) * 0.5
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]), helper.make_node("Clip", [f"m{i}", "lo", "hi"], [f"c{i}"])]
        x = f"c{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    value = 1.0  # per neuron: S ← 0.5·S + 2·6 (q = 1)
    for _ in range(depth):
        value = 0.5 * value + 12.0
    assert pl.path_norm(net([1, width], nodes, [1, width], params), q=1).value == pytest.approx(width * value, rel=1e-6)


def test_scores_through_zero_padding() -> None:
    """The adjoint of a zero Pad is a Slice: scores of the conv behind it match the brute force."""
    from onnx_pathlift.analyses.scores import path_magnitude

    model = CASES["pad_zero_then_conv"]()
    total = brute_force_path_norm(model, 1)
    scores = path_magnitude(model).fraction["W"]
    for idx in [(0, 0, 0, 0), (1, 1, 1, 0), (2, 0, 1, 1)]:
        assert scores[idx] == pytest.approx(drop_fraction(model, "W", idx, total), rel=1e-5)


@pytest.mark.parametrize("attrs", [{"strides": [2, 2], "pads": [1, 0, 0, 1]}, {"strides": [1, 1]}, {"strides": [3, 2]}])
def test_pointwise_conv_scores(attrs: dict) -> None:
    """1x1 convolutions take the GEMM path of the adjoint: scores equal the brute-force drops."""
    from onnx_pathlift.analyses.scores import path_magnitude

    model = net([1, 3, 5, 5], [helper.make_node("Conv", ["x", "W"], ["c"], **attrs), helper.make_node("Relu", ["c"], ["r"]),
                               helper.make_node("GlobalAveragePool", ["r"], ["y"])], [1, 2, 1, 1], {"W": w(2, 3, 1, 1)})
    total = brute_force_path_norm(model, 1)
    scores = path_magnitude(model).fraction["W"]
    for idx in np.ndindex(scores.shape):
        assert scores[idx] == pytest.approx(drop_fraction(model, "W", idx, total), rel=1e-5)


def test_max_scores_compare_and_refusals() -> None:
    """An elementwise Max (a k-max neuron) through every analysis: scores are brute-force drops, a
    model compared with itself is at distance 0; a constant or broadcast operand is refused by name."""
    model = CASES["max_of_two_branches"]()
    assert_scores_are_brute_force_drops(model)
    assert pl.path_metric(model, model).upper == 0.0
    constant = net([1, 3], [helper.make_node("Max", ["x", "c"], ["y"], name="mx")], [1, 3], {"c": w(1, 3)})
    broadcast = net([2, 3], [helper.make_node("MatMul", ["x", "W"], ["r"]),
                             helper.make_node("ReduceSum", ["r"], ["s"], keepdims=1, axes=[0]),
                             helper.make_node("Max", ["r", "s"], ["y"], name="mx")], [2, 3], {"W": w(3, 3)}, opset=11)
    for bad, why in ((constant, "constant operand"), (broadcast, "broadcasts")):
        with pytest.raises(pl.UnsupportedModelError) as err:
            pl.import_model(bad)
        assert [(r.node, r.op_type) for r in err.value.refusals] == [("mx", "Max")] and why in err.value.refusals[0].reason
