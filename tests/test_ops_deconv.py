"""ConvTranspose, the reductions (ReduceSum/Mean/Max/Min) and Pad with a nonzero constant, each in a
tiny net with a layer before and after, against the brute-force oracle: path-norms (q = 1, 2, 4),
the re-emission check, path-magnitude scores (the brute-force drop) and the path-metric sandwich.

ReduceMax/ReduceMin neurons are max-pooling neurons; the oracle only accepts ReLU and (Global)MaxPool
as non-affine nodes, so it probes a twin net that computes the same function with a GlobalMaxPool
(and ``min = −max(−x)``): same initializer names, so perturbations and zeroed weights carry over.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import dropped, inferred_net, inits, ints, net, noise, replace_inits, weight_stream
from checks import drop_fraction
from onnx import helper
from oracle import brute_force_path_norm, signed_path_metric, union_dags

import onnx_pathlift as pl
from onnx_pathlift.analyses.metric import path_metric
from onnx_pathlift.backend.verify import verify
from onnx_pathlift.errors import UnsupportedModelError

w = weight_stream(123)  # this module's own stream of weights


def _deconv(x_shape: list[int], w_shape: tuple[int, ...], before: int = 3, **attrs) -> onnx.ModelProto:
    """x → Conv(k=before, same size) → Relu → ConvTranspose(W, B) → Relu → Conv 1x1 (+ bias) → y."""
    n, c_in = len(x_shape) - 2, w_shape[0]
    c_out = w_shape[1] * attrs.get("group", 1)
    nodes = [helper.make_node("Conv", ["x", "W0"], ["a"], pads=[before // 2] * (2 * n)), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "W", "B"], ["d"], **attrs), helper.make_node("Relu", ["d"], ["r2"]),
             helper.make_node("Conv", ["r2", "W2", "B2"], ["y"])]
    return inferred_net(x_shape, nodes, {"W0": w(c_in, x_shape[1], *[before] * n), "W": w(*w_shape), "B": w(c_out),
                                         "W2": w(2, c_out, *[1] * n), "B2": w(2)})


def _reduce(op: str, axes: list[int], keepdims: int, opset: int, after: list, params: dict, **attrs) -> onnx.ModelProto:
    """x[1,2,3,3] → Conv 3x3 (pad 1, bias) → Relu → ``op`` over ``axes`` → ``after`` (reads "red", writes "y")."""
    axes_as_input = opset >= (13 if op == "ReduceSum" else 18)
    reduce_node = (helper.make_node(op, ["r", "ax"] if axes else ["r"], ["red"], keepdims=keepdims, **attrs) if axes_as_input
                   else helper.make_node(op, ["r"], ["red"], axes=axes, keepdims=keepdims, **attrs))
    nodes = [helper.make_node("Conv", ["x", "W0", "B0"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             reduce_node, *after]
    extra = {"ax": ints(*axes)} if axes_as_input and axes else {}
    return inferred_net([1, 2, 3, 3], nodes, {"W0": w(3, 2, 3, 3), "B0": w(3), **extra, **params}, opset=opset)


def _gemm_after(n_in: int) -> tuple[list, dict]:
    """Flatten → Gemm to 2 outputs (with bias)."""
    return ([helper.make_node("Flatten", ["red"], ["f"]), helper.make_node("Gemm", ["f", "Wg", "Bg"], ["y"], transB=1)],
            {"Wg": w(2, n_in), "Bg": w(2)})


def _max_twin(op: str, axes: list[int], keepdims: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """ReduceMax/Min over ``axes`` of the conv's [1,3,3,3] output, then Flatten → Gemm; and its twin
    with the reduced axes moved last and merged, a GlobalMaxPool (negated around it for a min)."""
    shape = [1, 3, 3, 3]
    kept = [i for i in range(4) if i not in axes]
    kept_sizes = [shape[i] for i in kept]
    out_shape = [1 if i in axes else shape[i] for i in range(4)] if keepdims else kept_sizes
    after, params = _gemm_after(int(np.prod(out_shape)))
    model = _reduce(op, axes, keepdims, 18, after, params)
    negate = "Neg" if op == "ReduceMin" else "Identity"
    twin_nodes = [
        helper.make_node("Conv", ["x", "W0", "B0"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r0"]),
        helper.make_node(negate, ["r0"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=kept + axes),
        helper.make_node("Reshape", ["t", "s3"], ["t3"]), helper.make_node("GlobalMaxPool", ["t3"], ["m"]),
        helper.make_node(negate, ["m"], ["m2"]), helper.make_node("Reshape", ["m2", "so"], ["red"]), *after]
    twin_params = {**inits(model), "s3": ints(1, int(np.prod(kept_sizes)), -1), "so": ints(*out_shape)}
    twin = inferred_net([1, 2, 3, 3], twin_nodes, twin_params, opset=18)
    return model, twin


def _pad_net(pads: list[int], value: float, opset: int = 17) -> onnx.ModelProto:
    """x[1,2,3,3] → Conv 1x1 → Relu → Pad(constant ``value``) → Conv 2x2 (bias) → Relu → y."""
    if opset < 11:
        pad = helper.make_node("Pad", ["r"], ["p"], pads=pads, value=value)
        extra = {}
    else:
        pad = helper.make_node("Pad", ["r", "pads", "cv"], ["p"])
        extra = {"pads": ints(*pads), "cv": np.array(value, np.float32)}
    c_pad = 2 + pads[1] + pads[5]
    nodes = [helper.make_node("Conv", ["x", "W0"], ["c"]), helper.make_node("Relu", ["c"], ["r"]), pad,
             helper.make_node("Conv", ["p", "W2", "B2"], ["c2"]), helper.make_node("Relu", ["c2"], ["y"])]
    return inferred_net([1, 2, 3, 3], nodes, {"W0": w(2, 2, 1, 1), **extra, "W2": w(2, c_pad, 2, 2), "B2": w(2)}, opset=opset)


def _plain(build):
    return lambda: (build(), None)


CASES = {
    "deconv_stride2_output_padding": _plain(lambda: _deconv([1, 2, 3, 3], (2, 2, 3, 3), strides=[2, 2], output_padding=[1, 0],
                                                            pads=[1, 0, 0, 1])),
    "deconv_dilation_pads": _plain(lambda: _deconv([1, 2, 3, 3], (3, 2, 2, 3), strides=[1, 2], dilations=[2, 1],
                                                   pads=[1, 0, 2, 1])),
    "deconv_dilation_output_padding": _plain(lambda: _deconv([1, 1, 3, 3], (2, 2, 2, 2), strides=[2, 3], dilations=[2, 2],
                                                             output_padding=[1, 2], pads=[0, 1, 2, 0])),
    "deconv_groups": _plain(lambda: _deconv([1, 2, 2, 3], (4, 1, 3, 2), strides=[2, 2], group=2, pads=[0, 1, 1, 0])),
    "deconv_groups_batchnorm": _plain(lambda: inferred_net([1, 2, 2, 2], [  # BN's scale folds into the grouped kernel
        helper.make_node("Conv", ["x", "W0"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "W", "B"], ["d"], strides=[2, 1], group=2),
        helper.make_node("BatchNormalization", ["d", "g", "b", "m", "v"], ["n"]), helper.make_node("Relu", ["n"], ["y"])],
        {"W0": w(4, 2, 1, 1), "W": w(4, 2, 2, 2), "B": w(4), "g": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5})),
    "deconv_output_shape": _plain(lambda: _deconv([1, 2, 3, 3], (2, 2, 3, 3), strides=[2, 2], output_shape=[6, 5])),
    "deconv_same_upper": _plain(lambda: _deconv([1, 2, 3, 3], (2, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER")),
    "deconv_same_lower": _plain(lambda: _deconv([1, 2, 3, 3], (2, 2, 3, 2), strides=[2, 1], auto_pad="SAME_LOWER")),
    "deconv_1d": _plain(lambda: _deconv([1, 2, 5], (2, 3, 4), strides=[3], pads=[1, 2])),
    "deconv_3d": _plain(lambda: _deconv([1, 1, 2, 2, 2], (2, 2, 2, 1, 3), before=1, strides=[2, 1, 2], output_padding=[1, 0, 0])),
    "deconv_batch2": _plain(lambda: inferred_net([2, 2, 2, 3], [  # Conv's own scores are batch-1 only: affine layers around
        helper.make_node("Add", ["x", "t"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "W"], ["d"], strides=[2, 2], pads=[1, 0, 0, 0]), helper.make_node("Relu", ["d"], ["r2"]),
        helper.make_node("ReduceSum", ["r2", "ax"], ["s"], keepdims=0), helper.make_node("Mul", ["s", "k"], ["y"])],
        {"t": w(2, 1, 1), "W": w(2, 2, 3, 2), "ax": ints(1, 3), "k": w(4)})),
    "reduce_sum_spatial_keepdims": _plain(lambda: _reduce("ReduceSum", [2, 3], 1, 17, [
        helper.make_node("Conv", ["red", "Wc", "Bc"], ["y"])], {"Wc": w(2, 3, 1, 1), "Bc": w(2)})),
    "reduce_sum_opset11_attribute": _plain(lambda: _reduce("ReduceSum", [-1], 0, 11, *_gemm_after(9))),
    "reduce_sum_all_axes": _plain(lambda: _reduce("ReduceSum", [], 1, 17, [
        helper.make_node("Mul", ["red", "k"], ["y"])], {"k": np.array(-0.3, np.float32)})),
    "reduce_mean_channel_opset11": _plain(lambda: _reduce("ReduceMean", [1], 0, 11, *_gemm_after(9))),
    "reduce_mean_spatial_opset18": _plain(lambda: _reduce("ReduceMean", [2, 3], 0, 18, *_gemm_after(3))),
    "reduce_mean_channel_and_row_keepdims": _plain(lambda: _reduce("ReduceMean", [1, 2], 1, 18, *_gemm_after(3))),
    "reduce_mean_noop_empty_axes": _plain(lambda: _reduce("ReduceMean", [], 1, 18, *_gemm_after(27), noop_with_empty_axes=1)),
    "reduce_max_spatial": lambda: _max_twin("ReduceMax", [2, 3], 1),
    "reduce_max_channel": lambda: _max_twin("ReduceMax", [1], 0),
    "reduce_min_rows": lambda: _max_twin("ReduceMin", [2], 0),
    "pad_constant_spatial": _plain(lambda: _pad_net([0, 0, 1, 0, 0, 0, 1, 2], 0.7)),
    "pad_constant_channels_opset9": _plain(lambda: _pad_net([0, 1, 0, 1, 0, 0, 1, 0], -0.5, opset=9)),
}


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[onnx.ModelProto, onnx.ModelProto]]:
    """Each case's model and the model the oracle probes (itself, or its max-pool twin)."""
    out = {}
    for name, build in CASES.items():
        model, twin = build()
        out[name] = (model, twin or model)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_norm_and_reemission(case: str, built) -> None:
    model, oracle_model = built[case]
    onnx.checker.check_model(model, full_check=True)
    dag = pl.import_model(model)
    assert verify(model, dag, trials=3).passed
    if oracle_model is not model:
        assert verify(oracle_model, dag, trials=3).passed  # the twin computes the same function
    for q in (1.0, 2.0, 4.0):
        want = brute_force_path_norm(oracle_model, q) ** (1 / q)
        assert pl.path_norm(dag, q=q).value == pytest.approx(want, rel=1e-6), q
        session = pl.PathNormSession(dag, q, scales="dynamic")
        assert session.run().value == pytest.approx(want, rel=1e-6), q


def _sample(shape: tuple[int, ...], rng: np.random.Generator, k: int = 4) -> list[tuple[int, ...]]:
    flat = rng.choice(int(np.prod(shape)), size=min(k, int(np.prod(shape))), replace=False)
    return [tuple(int(i) for i in np.unravel_index(int(f), shape)) for f in flat]


@pytest.mark.parametrize("case", sorted(CASES))
def test_scores(case: str, built) -> None:
    model, oracle_model = built[case]
    scores = pl.path_magnitude(model)
    total = brute_force_path_norm(oracle_model, 1)
    rng = np.random.default_rng(0)
    weights = [n for n in ("W0", "W", "W2", "Wc", "Wg") if n in scores.fraction]
    assert ("W" in weights) == case.startswith("deconv")
    for name in weights:
        f = scores.fraction[name]
        for idx in np.ndindex(f.shape) if name == "W" else _sample(f.shape, rng):  # every ConvTranspose kernel entry
            assert f[idx] == pytest.approx(drop_fraction(oracle_model, name, idx, total), rel=1e-5, abs=1e-9), (name, idx)


def _prunable(model: onnx.ModelProto) -> list[str]:
    """Every float initializer with more than one entry, but BatchNormalization's (zeroing a variance
    enlarges γ/√(var+ε)) and scalars (a pad constant's zero changes the architecture)."""
    bn = {i for node in model.graph.node if node.op_type == "BatchNormalization" for i in node.input}
    return [k for k, v in inits(model).items() if v.dtype.kind == "f" and v.size > 1 and k not in bn]


@pytest.mark.parametrize("kind", ["prune", "noise"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_metric_sandwich(case: str, kind: str, built) -> None:
    model_a, oracle_a = built[case]
    rng = np.random.default_rng(3)
    model_b = dropped(model_a, rng, 0.3, _prunable(model_a)) if kind == "prune" else noise(model_a, rng)
    oracle_b = replace_inits(oracle_a, inits(model_b))
    Ga, Gb, outs, edges = union_dags(oracle_a, oracle_b)
    d, n_paths = signed_path_metric(Ga, Gb, outs, edges)
    assert n_paths > 0 and d > 0
    m = path_metric(model_a, model_b)
    assert m.sign_consistent
    assert m.lower <= d * (1 + 1e-6)
    assert m.upper >= d * (1 - 1e-6)
    if kind == "prune":  # |θ'| ≤ |θ|: both bounds are d itself
        assert m.exact
        assert d * (1 - 1e-9) <= m.upper <= d * (1 + 1e-4)  # the certified interval around d, rounded outward
        assert d * (1 - 1e-4) <= m.lower <= d * (1 + 1e-9)


@pytest.mark.parametrize("op, why", [("ReduceProd", "positively homogeneous"), ("ReduceL2", "not piecewise-linear"),
                                     ("ReduceL1", "two ReLUs"), ("ReduceLogSumExp", "smooth"),
                                     ("ReduceSumSquare", "positively homogeneous")])
def test_other_reductions_are_refused(op: str, why: str) -> None:
    model = net([1, 3], [helper.make_node(op, ["x"], ["y"], axes=[1], name="red")], None, {}, opset=11)
    with pytest.raises(UnsupportedModelError, match=why):
        pl.import_model(model)


def test_deconv_output_shape_beyond_the_full_size_is_refused() -> None:
    """onnxruntime refuses an output_shape larger than the full transposed convolution."""
    model = net([1, 1, 4], [helper.make_node("ConvTranspose", ["x", "W"], ["y"], output_shape=[9])], None, {"W": w(1, 1, 3)})
    with pytest.raises(UnsupportedModelError, match="larger than the full"):
        pl.import_model(model)


def test_deconv_output_padding_of_the_stride_is_refused() -> None:
    """onnxruntime refuses output_padding ≥ stride, even below the dilation."""
    model = net([1, 1, 3], [helper.make_node("ConvTranspose", ["x", "W"], ["y"], dilations=[2], output_padding=[1])], None,
                {"W": w(1, 1, 2)})
    with pytest.raises(UnsupportedModelError, match="not below the strides"):
        pl.import_model(model)


def test_deconv_linf_gain_is_the_largest_phase_sum() -> None:
    """Stride 2, kernel 3: an output neuron gets taps {0, 2} or {1}: the ℓ∞ gain is the larger sum."""
    from onnx_pathlift.analyses.lipschitz import naive_log2

    kernel = np.array([1.0, -4.0, 2.0], np.float32).reshape(1, 1, 3)
    model = net([1, 1, 3], [helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2])], None, {"W": kernel})
    dag = pl.import_model(model)
    assert naive_log2(dag) == pytest.approx(np.log2(4.0 * 7), rel=1e-12)  # gain 4, output size 7


@pytest.mark.parametrize("seed", range(6))
def test_deconv_bound_is_the_largest_output_of_each_channel(seed: int) -> None:
    """The static bound (the largest phase sum, inputs weighted by their channels' bounds) equals the
    largest lifted output of each channel on an input large enough to have interior positions."""
    from onnx_pathlift.backend.runtime import make_session
    from onnx_pathlift.ir.dag import Layer
    from onnx_pathlift.ops import LAYER_OPS

    rng = np.random.default_rng(seed)
    n, groups = 1 + seed % 3, 1 + seed % 2
    c_in, kernel = 2 * groups, rng.integers(1, 4, n)
    attrs = {"strides": [int(v) for v in rng.integers(1, 4, n)], "dilations": [int(v) for v in rng.integers(1, 3, n)],
             "pads": [0] * (2 * n), "output_padding": [0] * n, "group": groups}
    kernel_abs = np.abs(rng.normal(size=(c_in, 2, *kernel)))
    lu = rng.normal(size=c_in)
    x = np.broadcast_to(np.exp2(lu).reshape(1, c_in, *[1] * n), (1, c_in, *[7] * n)).astype(np.float32)
    model = net(list(x.shape), [helper.make_node("ConvTranspose", ["x", "W"], ["y"], **attrs)], None, {"W": kernel_abs})
    y = make_session(model).run(None, {"x": x})[0]
    layer = Layer("d", "deconv", ["x"], y.shape, {"W": kernel_abs}, attrs)
    bound = LAYER_OPS["deconv"].bound(layer, [lu.reshape(1, c_in, *[1] * n)], [x.shape], 1.0)
    np.testing.assert_allclose(bound.reshape(-1), np.log2(y.reshape(y.shape[1], -1).max(axis=1)), atol=1e-5)
