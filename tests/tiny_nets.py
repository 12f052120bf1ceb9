"""Tiny random ONNX ReLU networks (opset 17, float32, static shapes) for tests.

Every builder takes a seed or a ``numpy.random.Generator`` and returns ``(model, rescale_fn)``.
``rescale_fn(model, rng)`` returns a copy of ``model`` to which a random neuron-wise positive
rescaling has been applied directly on the initializers: for a ReLU/identity neuron (a channel, for
convolutions, whose weights are shared across positions) its incoming weights and bias are
multiplied by ``lambda > 0`` and its outgoing weights by ``1 / lambda``. Across a BatchNormalization
``y = gamma (x - mean) / sqrt(var + eps) + beta`` the input channel is rescaled through
``mean *= lambda, gamma /= lambda`` and the output channel through ``gamma, beta *= kappa``.
Across a skip ``Add`` both branches feeding a channel share its lambda, and every consumer after
the Add gets ``1 / lambda``. The rescaled model computes the same function and has the same
path-lifting ``Phi``; magnitudes ``|theta_i|`` change. Lambdas are log-uniform in ``[1/8, 8]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from builders import bn_node, bn_params, inits, make_model, normal, replace_inits
from onnx import helper

RescaleFn = Callable[[onnx.ModelProto, np.random.Generator], onnx.ModelProto]
Builder = Callable[..., tuple[onnx.ModelProto, RescaleFn]]

LAMBDA_RANGE = (1.0 / 8.0, 8.0)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a seed (or the Generator itself)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def lambdas(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` factors log-uniform in ``[1/8, 8]``."""
    lo, hi = LAMBDA_RANGE
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size=n))


def _conv_io_scale(w: np.ndarray, out_scale: np.ndarray, in_scale: np.ndarray, group: int = 1):
    """``W[o, j] * out_scale[o] / in_scale[input channel of (o, j)]`` for a (grouped) conv."""
    c_out, c_in_g = w.shape[:2]
    per_group = c_out // group
    w = w.copy()
    for o in range(c_out):
        g = o // per_group
        for j in range(c_in_g):
            w[o, j] *= out_scale[o] / in_scale[g * c_in_g + j]
    return w


def _bn_rescale(p: dict[str, np.ndarray], prefix: str, lam_in: np.ndarray, kap_out: np.ndarray):
    """BN input channel scaled by ``lam_in`` and BN output channel scaled by ``kap_out``."""
    p[f"{prefix}_mean"] = p[f"{prefix}_mean"] * lam_in
    p[f"{prefix}_gamma"] = p[f"{prefix}_gamma"] / lam_in * kap_out
    p[f"{prefix}_beta"] = p[f"{prefix}_beta"] * kap_out


def _cols_by_channel(w: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """Divide the Gemm (transB=1) columns of channel ``c`` (``block`` features each) by scale[c]."""
    return w / np.repeat(scale, block)[None, :]


# --------------------------------------------------------------------------------------------
# the networks
# --------------------------------------------------------------------------------------------


def mlp(rng: np.random.Generator | int | None = 0) -> tuple[onnx.ModelProto, RescaleFn]:
    """x[1,6] -> Gemm(transB=1, alpha=0.7, beta=1.3) -> Relu -> Gemm -> y[1,3] (8 hidden)."""
    rng = as_rng(rng)
    d, h, o = 6, 8, 3
    p = {
        "B1": normal(rng, (h, d), d),
        "C1": rng.normal(0.1, 0.5, h),
        "B2": normal(rng, (h, o), h),
        "C2": rng.normal(0.0, 0.5, (1, o)),
    }
    nodes = [
        helper.make_node("Gemm", ["x", "B1", "C1"], ["g1"], transB=1, alpha=0.7, beta=1.3),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("Gemm", ["r1", "B2", "C2"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, d])], [("y", [1, o])], p, name="mlp", producer="tiny_nets")

    def rescale(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
        q = inits(m, np.float64)
        lam = lambdas(rng, h)
        q["B1"] *= lam[:, None]
        q["C1"] *= lam
        q["B2"] /= lam[:, None]
        return replace_inits(m, q)

    return model, rescale


def conv_bn_pool(rng: np.random.Generator | int | None = 0) -> tuple[onnx.ModelProto, RescaleFn]:
    """x[1,2,6,6] -> Conv(3x3, pad 1, bias) -> BN -> Relu -> MaxPool(3, stride 2, ceil, pad 1)
    -> AveragePool(3, stride 2, pad 1, count_include_pad=0) -> Flatten -> Gemm -> y[1,3]."""
    rng = as_rng(rng)
    c_in, c, o = 2, 4, 3
    p = {
        "W1": normal(rng, (c, c_in, 3, 3), c_in * 9),
        "b1": rng.normal(0.0, 0.5, c),
        **bn_params(rng, "bn", c),
        "Wf": normal(rng, (o, c * 4), c * 4),
        "bf": rng.normal(0.0, 0.5, o),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], kernel_shape=[3, 3],
                         strides=[1, 1], pads=[1, 1, 1, 1]),
        bn_node("bn", "c1", "n1"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),  # 6x6 -> 4x4
        helper.make_node("AveragePool", ["m1"], ["a1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], count_include_pad=0),  # 4x4 -> 2x2
        helper.make_node("Flatten", ["a1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "Wf", "bf"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", [1, c_in, 6, 6])], [("y", [1, o])], p, name="conv_bn_pool", producer="tiny_nets")

    def rescale(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
        q = inits(m, np.float64)
        lam, kap = lambdas(rng, c), lambdas(rng, c)
        q["W1"] *= lam[:, None, None, None]
        q["b1"] *= lam
        _bn_rescale(q, "bn", lam, kap)
        q["Wf"] = _cols_by_channel(q["Wf"], kap, 4)
        return replace_inits(m, q)

    return model, rescale


def residual_concat(
    rng: np.random.Generator | int | None = 0,
) -> tuple[onnx.ModelProto, RescaleFn]:
    """x[1,2,5,5] -> Conv -> Relu = a; s = a + Relu(Conv_same(a)); Concat(s, Conv1x1(a))
    -> GlobalAveragePool -> Flatten -> Gemm -> y[1,3]."""
    rng = as_rng(rng)
    c_in, c, c3, o = 2, 3, 2, 3
    p = {
        "W1": normal(rng, (c, c_in, 3, 3), c_in * 9),
        "b1": rng.normal(0.1, 0.5, c),
        "W2": normal(rng, (c, c, 3, 3), c * 9),
        "b2": rng.normal(0.0, 0.5, c),
        "W3": normal(rng, (c3, c, 1, 1), c),
        "b3": rng.normal(0.0, 0.5, c3),
        "Wf": normal(rng, (o, c + c3), c + c3),
        "bf": rng.normal(0.0, 0.5, o),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "W2", "b2"], ["c2"], kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["a", "r2"], ["s"]),
        helper.make_node("Conv", ["a", "W3", "b3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["s", "c3"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["f"]),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", [1, c_in, 5, 5])], [("y", [1, o])], p, name="residual_concat", producer="tiny_nets")

    def rescale(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
        q = inits(m, np.float64)
        lam, nu = lambdas(rng, c), lambdas(rng, c3)
        q["W1"] *= lam[:, None, None, None]
        q["b1"] *= lam
        # both branches into the Add share lam: Conv2 maps channel i (lam_i) to o (lam_o)
        q["W2"] = _conv_io_scale(q["W2"], lam, lam)
        q["b2"] *= lam
        q["W3"] = _conv_io_scale(q["W3"], nu, lam)
        q["b3"] *= nu
        q["Wf"] = _cols_by_channel(q["Wf"], np.concatenate([lam, nu]), 1)
        return replace_inits(m, q)

    return model, rescale


def everything(rng: np.random.Generator | int | None = 0) -> tuple[onnx.ModelProto, RescaleFn]:
    """x[1,2,5,5] -> Sub(mean) -> Mul(scale) -> Conv(2x2, pads 0,0,1,1, bias) -> BN -> Relu
    -> MaxPool(2, stride 2, ceil: 5 -> 3) = m; s = m + Relu(grouped(2) dilated(2) Conv(m));
    Concat(AveragePool(2, stride 1, pads 1,1,0,0, count_include_pad=1)(s), Conv1x1(s))
    -> Flatten -> Gemm -> y[1,2]."""
    rng = as_rng(rng)
    c_in, c, c3, o, hw = 2, 4, 2, 2, 9
    p = {
        "mean": rng.normal(0.0, 0.5, (1, c_in, 1, 1)),
        "scale": rng.uniform(0.5, 2.0, (1, c_in, 1, 1)) * rng.choice([-1.0, 1.0], (1, c_in, 1, 1)),
        "W1": normal(rng, (c, c_in, 2, 2), c_in * 4),
        "b1": rng.normal(0.0, 0.5, c),
        **bn_params(rng, "bn", c),
        "W2": normal(rng, (c, c // 2, 3, 3), c // 2 * 9),
        "b2": rng.normal(0.0, 0.5, c),
        "W3": normal(rng, (c3, c, 1, 1), c),
        "b3": rng.normal(0.0, 0.5, c3),
        "Wf": normal(rng, (o, (c + c3) * hw), (c + c3) * hw),
        "bf": rng.normal(0.0, 0.5, o),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["x0"]),
        helper.make_node("Mul", ["x0", "scale"], ["x1"]),
        helper.make_node("Conv", ["x1", "W1", "b1"], ["c1"], kernel_shape=[2, 2],
                         pads=[0, 0, 1, 1]),  # 5x5 -> 5x5
        bn_node("bn", "c1", "n1"),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["m"], kernel_shape=[2, 2], strides=[2, 2],
                         ceil_mode=1),  # 5x5 -> 3x3
        helper.make_node("Conv", ["m", "W2", "b2"], ["c2"], kernel_shape=[3, 3], group=2,
                         dilations=[2, 2], pads=[2, 2, 2, 2]),  # 3x3 -> 3x3
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Add", ["r2", "m"], ["s"]),
        helper.make_node("AveragePool", ["s"], ["ap"], kernel_shape=[2, 2], strides=[1, 1],
                         pads=[1, 1, 0, 0], count_include_pad=1),  # 3x3 -> 3x3
        helper.make_node("Conv", ["s", "W3", "b3"], ["c3"], kernel_shape=[1, 1]),
        helper.make_node("Concat", ["ap", "c3"], ["cat"], axis=1),
        helper.make_node("Flatten", ["cat"], ["f"]),
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["y"], transB=1),
    ]
    model = make_model(nodes, [("x", [1, c_in, 5, 5])], [("y", [1, o])], p, name="everything", producer="tiny_nets")

    def rescale(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
        q = inits(m, np.float64)
        sig, lam, kap, nu = lambdas(rng, c_in), lambdas(rng, c), lambdas(rng, c), lambdas(rng, c3)
        q["scale"] *= sig[None, :, None, None]  # the Mul neurons (the Sub ones are not free)
        q["W1"] = _conv_io_scale(q["W1"], lam, sig)
        q["b1"] *= lam
        _bn_rescale(q, "bn", lam, kap)
        q["W2"] = _conv_io_scale(q["W2"], kap, kap, group=2)  # skip Add: same kappa
        q["b2"] *= kap
        q["W3"] = _conv_io_scale(q["W3"], nu, kap)
        q["b3"] *= nu
        q["Wf"] = _cols_by_channel(q["Wf"], np.concatenate([kap, nu]), hw)
        return replace_inits(m, q)

    return model, rescale


def matmul_net(rng: np.random.Generator | int | None = 0) -> tuple[onnx.ModelProto, RescaleFn]:
    """x[1,2,3,4] -> MatMul(W1[4,6]) -> Add(b1) -> Relu -> MatMul(W2[6,3]) -> Add(b2) -> y[1,2,3,3]
    (the matrices act on the last axis)."""
    rng = as_rng(rng)
    d, h, o = 4, 6, 3
    p = {
        "W1": normal(rng, (d, h), d),
        "b1": rng.normal(0.1, 0.5, h),
        "W2": normal(rng, (h, o), h),
        "b2": rng.normal(0.0, 0.5, o),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["g1"]),
        helper.make_node("Relu", ["g1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["h2"]),
        helper.make_node("Add", ["b2", "h2"], ["y"]),
    ]
    model = make_model(nodes, [("x", [1, 2, 3, d])], [("y", [1, 2, 3, o])], p, name="matmul_net", producer="tiny_nets")

    def rescale(m: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
        q = inits(m, np.float64)
        lam = lambdas(rng, h)
        q["W1"] *= lam[None, :]
        q["b1"] *= lam
        q["W2"] /= lam[:, None]
        return replace_inits(m, q)

    return model, rescale


ALL_NETS: dict[str, Builder] = {
    "mlp": mlp,
    "conv_bn_pool": conv_bn_pool,
    "residual_concat": residual_concat,
    "everything": everything,
    "matmul_net": matmul_net,
}
