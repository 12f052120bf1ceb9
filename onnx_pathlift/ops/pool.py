"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

Algebra (unrolled): a max-pool neuron is a k-max neuron with weight-1 edges from its window, so the
lifted layer is a sum-pool (a depthwise conv with an all-ones kernel, same kernel, strides, pads and
dilations; ``ceil_mode`` windows kept by extending the end pads). An average-pool neuron has edges of
weight ``1/div(p)`` from the valid positions of its window, ``div(p)`` the divisor onnxruntime uses
at that position (``K``, or the count of valid positions when ``count_include_pad=0``); the lifted
layer is ``AvgPool(x) ⊙ div(p)**(1-q)``, with ``1/div = AvgPool(1)/SumPool(1)`` computed from the op
itself in a constant subgraph. Global pools: ``Σ x`` (max) or ``N**-q · Σ x`` (average).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper

from ..errors import RefuseNode
from ..graph.bounds import along_axis
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled, on_axis
from ..graph.exponents import compact, exp_diff, exp_vector, pow_scaled, scaled_power
from ..ir.dag import Layer
from .channel_api import per_channel
from .context import ImportContext, attributes, operand
from .exact_api import EPS, FallbackRefused, LogPass, biased, max_abs, reduced, windowed
from .forms import transpose_attrs
from .geometry import pads_problem, spatial_attrs
from .layer_op import OneLipschitz, ParameterFree
from .registry import channel_rule, imports, layer_op, spec_rule


def _sum_pool_pads(layer: Layer) -> list[int]:
    """The pool's pads, the end ones extended (ceil_mode) until the floor formula gives the output size."""
    a = layer.attrs
    kernel, n = a["kernel_shape"], len(a["kernel_shape"])
    in_sp, out_sp = a["in_spatial"], layer.shape[2:]
    pads, dilations = list(a["pads"]), a.get("dilations", [1] * n)
    for i in range(n):
        need = (out_sp[i] - 1) * a["strides"][i] + (kernel[i] - 1) * dilations[i] + 1 - in_sp[i] - pads[i]
        pads[n + i] = max(pads[n + i], need)
    return pads


def _exact_sum_pool(run: LogPass, layer: Layer, v: np.ndarray, in_shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """The lifted sum-pool in the log domain: the depthwise weight-1 kernel (log 0) over the windows of
    ``v`` (pads as :func:`_sum_pool_pads`), and its ``ε_L``."""
    kernel = np.zeros((in_shape[1], 1, 1, *layer.attrs["kernel_shape"]))
    return windowed(run, layer, v, kernel, _sum_pool_pads(layer))


def _exact_pool_work(layer: Layer, in_shape: tuple[int, ...]) -> int:
    """The exact fallback's ``exp2`` for a pool: its input windows (the same at q = ∞)."""
    return math.prod(layer.shape[:1] + layer.shape[2:]) * in_shape[1] * math.prod(layer.attrs["kernel_shape"])


def _sum_pool(b: GraphBuilder, x: str, layer: Layer, channels: int) -> str:
    """Depthwise all-ones convolution reproducing the pool's windows and output size."""
    a = layer.attrs
    kernel = a["kernel_shape"]
    ones = b.const(np.ones((channels, 1, *kernel)), "ones_kernel")
    return b.op("Conv", [x, ones], "sumpool", kernel_shape=kernel, strides=a["strides"], pads=_sum_pool_pads(layer),
                dilations=a.get("dilations", [1] * len(kernel)), group=channels)


def _sum_pool_adjoint(b: GraphBuilder, g: str, layer: Layer, in_shape: tuple[int, ...]) -> str:
    """The transpose of the sum-pool: every window neuron receives its window's backward mass."""
    kernel, channels = layer.attrs["kernel_shape"], layer.shape[1]
    ones = b.const(np.ones((channels, 1, *kernel)), "ones_kernel")
    attrs = transpose_attrs(layer.attrs, tuple(kernel), in_shape, layer.shape, pads=_sum_pool_pads(layer), group=channels)
    return b.op("ConvTranspose", [g, ones], "adj", **attrs)


def _per_channel(lu: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A bound reduced to one value per channel (pooling mixes positions, never channels)."""
    return on_axis(along_axis(lu, shape, 1), len(shape), 1)


def _pool_attrs(layer: Layer, names: tuple[str, ...]) -> dict:
    return {k: layer.attrs[k] for k in names if k in layer.attrs}


@layer_op
class MaxPool(ParameterFree, OneLipschitz):
    op = "maxpool"
    keeps_sign = True
    kind = "pool"
    rescale_role = "per_channel"
    accepts_dirty = True

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("MaxPool", xs, "maxpool", **_pool_attrs(layer, ("kernel_shape", "strides", "pads", "dilations", "ceil_mode")))

    def map_axis(self, layer: Layer) -> int:
        return 1

    def rounding_ops(self, layer, in_shapes) -> int:
        return int(np.prod(layer.attrs["kernel_shape"])) + 3

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        y = _sum_pool(b, xs[0].tensor, layer, layer.shape[1])
        return replace(xs[0], tensor=y, bound=xs[0].bound + math.log2(np.prod(layer.attrs["kernel_shape"])))

    def bound(self, layer, bs, shapes, q):
        return _per_channel(bs[0], shapes[0]) + math.log2(np.prod(layer.attrs["kernel_shape"]))

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [replace(g, tensor=_sum_pool_adjoint(b, g.tensor, layer, in_shapes[0]))], {}

    def exact(self, run, layer, xs, in_shapes, feeds):
        """Lifted: a sum-pool (weights 1) in the log domain."""
        y, local = _exact_sum_pool(run, layer, xs[0][0], in_shapes[0])
        return biased(run, layer, y, xs[0][1] + local, "B")

    def exact_work(self, layer, in_shapes, inf):
        return _exact_pool_work(layer, in_shapes[0])


@layer_op
class AveragePool(ParameterFree, OneLipschitz):
    op = "avgpool"
    keeps_sign = True
    kind = "pool"
    rescale_role = "per_channel"
    _ATTRS = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "count_include_pad")

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("AveragePool", xs, "avgpool", **_pool_attrs(layer, self._ATTRS))

    def map_axis(self, layer: Layer) -> int:
        return 1

    def rounding_ops(self, layer, in_shapes) -> int:
        return int(np.prod(layer.attrs["kernel_shape"])) + 6  # and the divisor's power

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        y = b.op("AveragePool", [xs[0].tensor], "avgpool", **_pool_attrs(layer, self._ATTRS))
        div = _divisors_log2(layer.attrs, layer.shape[2:])
        if b.static and div is not None:  # weight div**-q = AvgPool's 1/div · div**(1-q) · 2**(k_in − k_out), per position
            c = layer.shape[1]
            t_out = exp_vector(b.target, c, 1)
            shift = exp_diff(exp_vector(xs[0].log2, c, 1), t_out).reshape(1, c, *([1] * len(div.shape)))
            factor = scaled_power(np.ones(()), 1.0, (1.0 - q) * div[None, None] + shift)
            k_out = compact(on_axis(t_out, len(layer.shape), 1), layer.shape)
            return Scaled(b.op("Mul", [y, b.const(factor, "avgpool_q")], "avgpool_q"), k_out)
        if q != 1.0:  # weight (1/div)^q = AvgPool · div^(1-q)
            y = b.op("Mul", [y, b.op("Pow", [self._inverse_divisor(b, layer), b.scalar(q - 1.0)], "factor")], "avgpool_q")
        return Scaled(y, xs[0].log2, xs[0].bound, dirty=True)  # weights (1/div)**q ≤ 1 may shrink it

    def _inverse_divisor(self, b: GraphBuilder, layer: Layer) -> str:
        """1/div(p) = AvgPool(1)[p] / SumPool(1)[p] on one channel: onnxruntime's own divisors."""
        shape = b.ints((1, 1, *layer.attrs["in_spatial"]), "ones_shape")
        ones = b.op("ConstantOfShape", [shape], "ones", value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
        return b.op("Div", [b.op("AveragePool", [ones], "avg1", **_pool_attrs(layer, self._ATTRS)),
                            _sum_pool(b, ones, layer, 1)], "inv_div")

    def adjoint(self, b, layer, xs, g, in_shapes):
        weighted = b.op("Mul", [g.tensor, self._inverse_divisor(b, layer)], "adj")
        return [replace(g, tensor=_sum_pool_adjoint(b, weighted, layer, in_shapes[0]))], {}

    def bound(self, layer, bs, shapes, q):
        return _per_channel(bs[0], shapes[0]) + _avg_gain_log2(layer.attrs, layer.shape[2:], q)

    def exact(self, run, layer, xs, in_shapes, feeds):
        """Lifted: a sum-pool with weights ``div(p)**-q`` at each output position ``p``."""
        y, local = _exact_sum_pool(run, layer, xs[0][0], in_shapes[0])
        div = _divisors_log2(layer.attrs, tuple(layer.shape[2:]))
        if div is None:
            raise FallbackRefused(f"the exact float64 fallback needs average-pool divisors in closed form (layer {layer.name!r})")
        y = y - run.p * div
        local += (max_abs(y) + run.p * float(np.max(div, initial=0.0))) * EPS
        return biased(run, layer, y, xs[0][1] + local, "B")

    def exact_work(self, layer, in_shapes, inf):
        return _exact_pool_work(layer, in_shapes[0])


@layer_op
class GlobalPool(ParameterFree, OneLipschitz):
    """Global max (lifted: sum) or average (lifted: N**-q · sum) pooling over spatial axes."""

    op = "globalpool"
    keeps_sign = True
    kind = "pool"
    rescale_role = "per_channel"
    accepts_dirty = True

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("GlobalMaxPool" if layer.attrs["mode"] == "max" else "GlobalAveragePool", xs, "globalpool")

    def respelled(self, layer: Layer) -> Layer:
        """The reduction it computes: ReduceMax / ReduceMean over the spatial axes, keepdims (torch's
        dynamo exporter writes AdaptiveAvgPool2d(1) so)."""
        attrs = {"mode": "max" if layer.attrs["mode"] == "max" else "mean", "axes": list(range(2, len(layer.shape))),
                 "keepdims": 1, "count": int(np.prod(layer.attrs["in_spatial"]))}
        return replace(layer, op="reduce", attrs=attrs)

    def map_axis(self, layer: Layer) -> int:
        return 1

    def rounding_ops(self, layer, in_shapes) -> int:
        return int(np.prod(layer.attrs["in_spatial"])) + 3

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        n = int(np.prod(layer.attrs["in_spatial"]))
        # GlobalAveragePool gives Σx / N; the lifted weight per edge is 1 (max) or N^-q (average)
        m, e = pow_scaled(np.array(float(n)), 1.0 if layer.attrs["mode"] == "max" else 1.0 - q)
        y = b.op("GlobalAveragePool", [xs[0].tensor], "globalpool")
        y = b.op("Mul", [y, b.scalar(float(m))], "globalpool")
        return b.shift(replace(xs[0], tensor=y, bound=xs[0].bound + 1.0), e)

    def adjoint(self, b, layer, xs, g, in_shapes):
        n = float(np.prod(layer.attrs["in_spatial"]))
        t = g.tensor if layer.attrs["mode"] == "max" else b.op("Mul", [g.tensor, b.scalar(1.0 / n)], "adj")
        return [replace(g, tensor=b.op("Expand", [t, b.ints(in_shapes[0], "shape")], "adj"))], {}

    def bound(self, layer, bs, shapes, q):
        n = float(np.prod(layer.attrs["in_spatial"]))
        return _per_channel(bs[0], shapes[0]) + (1.0 if layer.attrs["mode"] == "max" else 1.0 - q) * math.log2(n)

    def exact(self, run, layer, xs, in_shapes, feeds):
        """A sum (max at q = ∞) over the spatial axes, weights 1 (max) or ``N**-q`` (average)."""
        v = xs[0][0]
        return reduced(run, layer, xs[0], tuple(range(2, v.ndim)), layer.attrs["mode"] != "max", math.prod(v.shape[2:]))


def _window_counts(a: dict, out_spatial: tuple[int, ...]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Per spatial axis, at each output index: the in-bounds taps of the window (``valid``) and
    onnxruntime's divisor where it is known in closed form: ``valid`` without count_include_pad
    (dilations allowed); with it, the whole kernel when every window lies inside the padded input and
    there is no dilation; else None (the lifted graph then takes the divisors from onnxruntime)."""
    n, axes = len(out_spatial), []
    dil = a.get("dilations", [1] * n)
    for i, size in enumerate(out_spatial):
        k, s, d, hi = a["kernel_shape"][i], a["strides"][i], dil[i], a["pads"][n + i]
        start = np.arange(size) * s - a["pads"][i]
        taps = start[:, None] + np.arange(k)[None, :] * d
        valid = ((taps >= 0) & (taps < a["in_spatial"][i])).sum(axis=1).astype(np.float64)
        if not a["count_include_pad"]:
            axes.append((valid, valid))
        elif d == 1 and not np.any(start + k > a["in_spatial"][i] + hi):
            axes.append((valid, np.full(size, float(k))))
        else:
            axes.append((valid, None))
    return axes


def _divisors_log2(a: dict, out_spatial: tuple[int, ...]) -> np.ndarray | None:
    """``log2 div(p)`` at every output position (None where :func:`_window_counts` does not know it)."""
    axes = _window_counts(a, out_spatial)
    if any(div is None for _, div in axes):
        return None
    return np.sum(np.meshgrid(*[np.log2(div) for _, div in axes], indexing="ij"), axis=0)


def _avg_gain_log2(a: dict, out_spatial: tuple[int, ...], q: float) -> float:
    """``log2 max_p valid(p) · div(p)**-q``, the largest lifted weight sum of one window: a product
    over the spatial axes, so the product of per-axis maxima. Where the divisor is not known in
    closed form, ``div ≥ valid`` bounds it by ``(min valid)**(1−q)``."""
    total = 0.0
    for valid, div in _window_counts(a, out_spatial):
        with np.errstate(divide="ignore"):
            total += float(np.max(np.log2(valid) - q * np.log2(div))) if div is not None else (1.0 - q) * math.log2(valid.min())
    return total


def _ort_output_size(in_spatial, a) -> tuple[int, ...]:
    """Pooled size as onnxruntime computes it: with ceil_mode, a last window that would start in
    the end padding is dropped (the PyTorch rule)."""
    n, sizes = len(in_spatial), []
    for i, size in enumerate(in_spatial):
        span = size + a["pads"][i] + a["pads"][n + i] - (a["kernel_shape"][i] - 1) * a.get("dilations", [1] * n)[i] - 1
        out = (-(-span // a["strides"][i]) if a["ceil_mode"] else span // a["strides"][i]) + 1
        if a["ceil_mode"] and (out - 1) * a["strides"][i] >= size + a["pads"][i]:
            out -= 1
        sizes.append(out)
    return tuple(sizes)


@spec_rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
def pool_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """An input with a spatial dimension; every pad smaller than the kernel (the spec's bound)."""
    x = operand(node, 0, shapes)
    if x is not None and len(x) < 3:
        return f"its input {x} has no spatial dimension"
    a = attributes(node, opset)
    kernel, pads = list(a.get("kernel_shape", [])), list(a.get("pads", []))
    if kernel and len(pads) == 2 * len(kernel) and any(p >= k for p, k in zip(pads, kernel + kernel)):
        return f"its pads {pads} are not all smaller than its kernel {kernel} (the spec's bound)"
    return pads_problem(a)


channel_rule("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")(per_channel)


@imports("MaxPool", "AveragePool")
def import_pool(node, ctx: ImportContext) -> None:
    a = ctx.attrs(node)  # ceil_mode from opset 10, count_include_pad from 7: absent before
    if node.op_type == "MaxPool":
        ctx.only_first_output(node, "argmax indices")
    x_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    kernel = tuple(int(k) for k in a["kernel_shape"])
    if len(x_shape) != len(kernel) + 2:
        raise RefuseNode(f"input of rank {len(x_shape)} does not match a {len(kernel)}-D kernel")
    attrs = spatial_attrs(a, x_shape[2:], kernel)
    attrs.update(kernel_shape=list(kernel), ceil_mode=int(a.get("ceil_mode", 0)), in_spatial=list(x_shape[2:]))
    expected = _ort_output_size(x_shape[2:], attrs)
    if tuple(out_shape[2:]) != expected:
        raise RefuseNode(f"ceil_mode window starting in the end padding: ONNX shape inference gives spatial size "
                         f"{tuple(out_shape[2:])}, onnxruntime computes {expected}")
    if node.op_type == "AveragePool":
        attrs["count_include_pad"] = int(a.get("count_include_pad", 0))
        if attrs["dilations"] == [1] * len(kernel):
            del attrs["dilations"]  # AveragePool has dilations only from opset 19
    ctx.add(node, "maxpool" if node.op_type == "MaxPool" else "avgpool", [ctx.act(node.input[0])], out_shape, attrs=attrs)


@imports("GlobalAveragePool", "GlobalMaxPool")
def import_global_pool(node, ctx: ImportContext) -> None:
    x_shape = ctx.shape(node.input[0])
    attrs = {"mode": "max" if node.op_type == "GlobalMaxPool" else "average", "in_spatial": list(x_shape[2:])}
    ctx.add(node, "globalpool", [ctx.act(node.input[0])], ctx.shape(node.output[0]), attrs=attrs)
