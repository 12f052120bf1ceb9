"""Convolution (1-D/2-D/3-D, groups, dilations, strides, pads, auto_pad) with a constant kernel.

Algebra: unrolled, each output neuron sums ``w · x`` over its receptive field (zero padding adds no
edge), so the lifted layer is the same convolution with ``|W|**q``. The bias becomes a separate
affine layer (``|b|**q`` in the lifted network).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import PathliftError
from ..graph.bounds import along_axis, channel_vector, log2_max_row_sum, log2_outward, log2_power_matvec32, log2_rows, pow_row_sums
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled, on_axis
from ..graph.exponents import compact, exp_vector, lost_below, neg_exp, scaled_rows
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout, SlimEdit, optional_input
from .context import ImportContext, attributes, operand
from .exact_api import biased, windowed
from .forms import bias_bound, channel_bias, lift_bias, product_exponent, split_weight, transpose_attrs
from .geometry import pads_problem, spatial_attrs
from .layer_op import LayerOp, RescaleAxes
from .registry import channel_rule, imports, layer_op, spec_rule


@layer_op
class Conv(LayerOp):
    """``Conv(x, W)`` with explicit pads; attrs strides, pads, dilations, group."""

    op = "conv"
    kind = "conv"
    scored = True
    onnx_op = "Conv"  # the emitted op (ConvTranspose for the subclass); attrs are passed through
    rescale_role = "weights"

    def rescale_axes(self, layer: Layer) -> RescaleAxes:
        """Channels on axis 1; ``W`` is ``(C_out, C_in/group, k...)``: a grouped conv's input channels
        share filters with other channels' (no 1/λ per input channel)."""
        return RescaleAxes(1, 0, 1 if layer.attrs["group"] == 1 else None, False)

    def gain_log2(self, layer: Layer, q: float) -> float:
        """``log2`` of the largest lifted output on an all-ones input of ``|W|**q · 2**-e`` (``e`` of
        :func:`~onnx_pathlift.graph.exponents.pow_exponent`): a whole filter's sum."""
        w = layer.params["W"]
        return log2_max_row_sum(w, w.reshape(w.shape[0], -1), q)

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op(self.onnx_op, [xs[0], b.const(layer.params["W"], "W")], self.op, **layer.attrs)

    def map_axis(self, layer: Layer) -> int:
        return 1  # one exponent per input channel, folded into the kernel

    def rounding_ops(self, layer, in_shapes) -> int:
        w = layer.params["W"]
        return int(np.prod(w.shape[1:])) + 3  # a dot product of C_in/group · kernel terms, the bias, a scaling

    def kernel_channels(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """The input and output channel of each ``W[a, b]`` (layout ``(C_out, C_in/group, k...)``), as
        integer arrays broadcastable to ``(C_out, C_in/group)`` (a row or a column where they can be)."""
        c_out, c_in_group = layer.params["W"].shape[:2]
        o, i = np.arange(c_out)[:, None], np.arange(c_in_group)[None, :]
        return (i if layer.attrs["group"] == 1 else (o // (c_out // layer.attrs["group"])) * c_in_group + i), o

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        w = layer.params["W"]
        if b.static:  # |W|**q · 2**(k_in − k_out) per (output, input) channel pair
            ins, outs = self.kernel_channels(layer)
            k_in = exp_vector(xs[0].log2, int(ins.max()) + 1, 1)
            t_out = exp_vector(b.target, layer.shape[1], 1)
            tail = (1,) * (w.ndim - 2)
            shifts = _per_entry(k_in, ins, tail), _per_entry(neg_exp(t_out), outs, tail)

            def floor() -> np.ndarray:
                return _per_entry(b.floors(0, len(k_in), 1), ins, tail)

            k_out = compact(on_axis(t_out, len(layer.shape), 1), layer.shape)
            bias = channel_bias(layer, q, k_out, 1)
            ins = [xs[0].tensor, b.weight(w, q, "absW", *shifts, floor=floor)] + ([] if bias is None else [b.const(bias, "absBias")])
            y = Scaled(b.op(self.onnx_op, ins, self.op, **layer.attrs), k_out)
            return y if bias is not None else lift_bias(b, layer, y, q, k_out)
        c, e = b.abs_power(w, q, "absW")
        y = b.op(self.onnx_op, [xs[0].tensor, c], self.op, **layer.attrs)
        y = b.shift(Scaled(y, xs[0].log2, xs[0].bound + max(self.gain_log2(layer, q), 0.0), dirty=True), e)
        return lift_bias(b, layer, y, q)

    def bound(self, layer, bs, shapes, q):
        kernel = layer.params["W"]
        c_out, c_in_group = kernel.shape[:2]
        taps = int(np.prod(kernel.shape[2:]))
        v = along_axis(bs[0], shapes[0], 1)
        if layer.attrs["group"] == 1:  # every output reads every (input channel, tap): one product
            fast = log2_power_matvec32(kernel, kernel.reshape(c_out, -1), q, np.repeat(v, taps))
            if fast is not None:
                return bias_bound(layer, on_axis(fast, len(layer.shape), 1), q)
        groups = np.arange(c_out) // (c_out // layer.attrs["group"])  # group of each output channel
        # (c_out, c_in_group): the bound of the input channel each kernel row reads (one row for group 1)
        v_in = v[None, :] if layer.attrs["group"] == 1 else v[(groups[:, None] * c_in_group + np.arange(c_in_group)[None, :])]
        sums, e = pow_row_sums(kernel, kernel.reshape(c_out * c_in_group, taps), q)
        w = sums.reshape(c_out, c_in_group)
        top = float(np.max(v_in, initial=-np.inf))
        if not np.isfinite(top):
            out = np.full(c_out, -np.inf)
        elif lost_below(layer.params["W"], q) or float(np.min(v_in[np.isfinite(v_in)])) - top < -1000:  # one scale per output channel
            out = log2_rows(kernel.reshape(c_out, -1), q, np.repeat(np.broadcast_to(v_in, w.shape), taps, axis=1))
        else:
            sums = w @ np.exp2(v_in[0] - top) if v_in.shape[0] == 1 else (w * np.exp2(v_in - top)).sum(axis=1)
            out = log2_outward(sums, c_in_group * taps, 0.0, 0.0) + top + e
        return bias_bound(layer, on_axis(out, len(layer.shape), 1), q)

    def split_params(self, a: Layer, b: Layer):
        return split_weight(a, b)

    def adjoint(self, b, layer, xs, g, in_shapes):
        m = layer.params["W"]  # its shape; the constant |W| · 2**-e is shared with the forward pass
        w, e = b.abs_power(m, 1.0, "absW")
        a, x_shape, y_shape = layer.attrs, in_shapes[0], layer.shape
        if x_shape[0] != 1:  # the kernel correlation below sums over positions of one sample
            raise PathliftError(f"layer {layer.name!r}: kernel scores of a conv layer are computed for batch 1, and this "
                                f"network does not split into independent samples of its batch {x_shape[0]}; "
                                "pass --input-shape with batch 1")
        gx = b.op("ConvTranspose", [g.tensor, w], "adj", **transpose_attrs(a, m.shape[2:], x_shape, y_shape))
        if a["group"] == 1 and 4 * math.prod(m.shape[1:]) * math.prod(y_shape[2:]) <= _UNFOLD_BYTES:
            c = _unfolded_correlation(b, xs[0].tensor, g.tensor, a, m.shape, x_shape, y_shape)
        else:
            c = _kernel_correlation(b, xs[0].tensor, g.tensor, a, m.shape, x_shape, y_shape)
        s = b.op("Mul", [c, w], "score")
        return [b.shift(Scaled(gx, g.log2), e)], {"W": Scaled(s, product_exponent(b, xs[0], g, e))}

    def linf_gain(self, layer: Layer) -> float:
        w = np.abs(layer.params["W"])
        top = float(w.reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64).max(initial=0.0))  # interior positions: whole filter
        return math.log2(top) if top > 0 else -math.inf

    def absorb_bias(self, layer: Layer, bias: np.ndarray) -> Layer | None:
        s = channel_vector(bias, layer.shape, 1)
        return None if s is None else replace(layer, params={**layer.params, "B": s.reshape((-1,) + (1,) * (len(layer.shape) - 2))})

    def absorb_scale(self, layer: Layer, scale: np.ndarray) -> Layer | None:
        s = channel_vector(scale, layer.shape, 1)
        if s is None:
            return None
        return replace(layer, params={**layer.params, "W": scaled_rows(layer.params["W"], s.reshape((-1,) + (1,) * (layer.params["W"].ndim - 1)))})

    def absorb_input_scale(self, layer: Layer, scale: np.ndarray, in_shape: tuple[int, ...]) -> Layer | None:
        s = channel_vector(scale, in_shape, 1)
        if s is None:
            return None
        w = layer.params["W"]  # (C_out, C_in / g, k...): output channel o reads input channels of its group
        group = layer.attrs.get("group", 1)
        per_out = s.reshape(group, 1, -1).repeat(w.shape[0] // group, axis=1).reshape(w.shape[0], w.shape[1])
        return replace(layer, params={**layer.params, "W": w * per_out.reshape(per_out.shape + (1,) * (w.ndim - 2))})

    def exact(self, run, layer, xs, in_shapes, feeds):
        """Each output ``log2 Σ 2**(x_window + q·log2|W|)`` (:func:`~onnx_pathlift.ops.exact_api.windowed`), then the bias."""
        w, (v, err) = layer.params["W"], xs[0]
        a, ea = run.weight(w)
        g = layer.attrs["group"]
        y, local = windowed(run, layer, v, a.reshape(g, w.shape[0] // g, *w.shape[1:]), layer.attrs["pads"])
        return biased(run, layer, y, err + ea + local, "B")

    def exact_work(self, layer, in_shapes, inf):
        """Its input windows (im2col) at finite q, its multiply-adds at q = ∞."""
        if inf:
            return math.prod(layer.shape) * math.prod(layer.params["W"].shape[1:])
        return math.prod(layer.shape[:1] + layer.shape[2:]) * in_shapes[0][1] * math.prod(layer.params["W"].shape[2:])


def _unfolded_correlation(b: GraphBuilder, x: str, g: str, a: dict, kernel: tuple[int, ...], x_shape, y_shape) -> str:
    """``c[o, i, t] = Σ_p g[o, p] · x_pad[i, p·stride + t·dilation]`` for one group, shaped like W: the
    padded input unfolded into one slice per kernel tap ``t`` (``U[t, i, p]``, a strided Slice each),
    then a single GEMM ``g · Uᵀ`` over the output positions ``p`` (a 1x1 kernel: one slice, no unfolding;
    onnxruntime's Conv with the positions as kernel ran 3x3 kernels at a third of the GEMM's speed)."""
    n, pads, taps = len(x_shape) - 2, a["pads"], list(np.ndindex(*kernel[2:]))
    if any(pads):
        x = b.op("Pad", [x, b.ints([0, 0, *pads[:n], 0, 0, *pads[n:]], "pads")], "xpad")
    padded = [x_shape[2 + i] + pads[i] + pads[n + i] for i in range(n)]
    span = [(y_shape[2 + i] - 1) * a["strides"][i] + 1 for i in range(n)]  # the positions one tap reads
    unfolded = []
    for t in taps:
        starts = [t[i] * a["dilations"][i] for i in range(n)]
        if any(starts) or any(s != 1 for s in a["strides"]) or any(s + e != p for s, e, p in zip(starts, span, padded)):
            ends = [s + e for s, e in zip(starts, span)]
            unfolded.append(b.op("Slice", [x, b.ints(starts, "starts"), b.ints(ends, "ends"), b.ints(np.arange(2, 2 + n), "axes"),
                                           b.ints(a["strides"], "steps")], "xsub"))
        else:
            unfolded.append(x)
    u = unfolded[0] if len(taps) == 1 else b.op("Concat", unfolded, "unfold", axis=0)  # (T, C_in, positions...)
    u = b.op("Reshape", [u, b.ints([len(taps) * x_shape[1], -1], "shape")], "x2")
    g2 = b.op("Reshape", [g, b.ints([y_shape[1], -1], "shape")], "g2")
    c = b.op("Gemm", [g2, u], "corr", transB=1)  # (C_out, T·C_in): column t·C_in + i
    if len(taps) > 1:
        c = b.op("Reshape", [c, b.ints([y_shape[1], len(taps), x_shape[1]], "shape")], "corr")
        c = b.op("Transpose", [c], "corr", perm=[0, 2, 1])
    return b.op("Reshape", [c, b.ints([y_shape[1], x_shape[1], *kernel[2:]], "shape")], "corr")


def _kernel_correlation(b: GraphBuilder, x: str, g: str, a: dict, kernel: tuple[int, ...], x_shape, y_shape) -> str:
    """The same correlation as :func:`_unfolded_correlation`, group by group, with no unfolded copy: the
    padded forward masses as images (one per input channel) convolved with the backward masses as kernels."""
    n, groups, pads = len(x_shape) - 2, a["group"], a["pads"]
    xp = b.op("Pad", [x, b.ints([0, 0, *pads[:n], 0, 0, *pads[n:]], "pads")], "xpad")
    sp = [x_shape[2 + i] + pads[i] + pads[n + i] for i in range(n)]
    xg = b.op("Reshape", [xp, b.ints([groups, x_shape[1] // groups, *sp], "shape")], "xg")
    xg = b.op("Transpose", [xg], "xg", perm=[1, 0, *range(2, 2 + n)])
    kg = b.op("Reshape", [g, b.ints([y_shape[1], 1, *y_shape[2:]], "shape")], "gk")
    c = b.op("Conv", [xg, kg], "corr", strides=a["dilations"], dilations=a["strides"], group=groups)
    c = b.op("Slice", [c, b.ints(np.zeros(n), "starts"), b.ints(kernel[2:], "ends"), b.ints(np.arange(2, 2 + n), "axes")], "corr")
    return b.op("Transpose", [c], "corr", perm=[1, 0, *range(2, 2 + n)])


def _set_group(node, tensor: str, ctx: SlimEdit) -> None:
    """A depthwise conv's ``group`` becomes its kept channel count."""
    next(a for a in node.attribute if a.name == "group").i = ctx.kept[tensor]


def kernel_macs(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """Conv: each output neuron takes ``C_in/group · Π kernel`` products (``Π W.shape[1:]``)."""
    w = consts.get(node.input[1])
    return math.prod(shapes[node.output[0]]) * math.prod(w.shape[1:]) if w is not None else 0


@channel_rule("Conv", edit=_set_group, macs=kernel_macs, weight=True, refit="kernel", bias=2)
def conv_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """``group`` 1: input channel ``c`` is a sink (weight column ``W[:, c]``), output channel ``o`` a
    source (filter ``W[o]``, bias ``b[o]`` sliced with it); depthwise (``group`` = channels in = out):
    channel ``c`` in and out are one channel (filter ``c`` sliced, ``group`` edited); other groups:
    :func:`_grouped`. A conv on a flattened tensor is not sliced."""
    x, w, bias = xs[0], node.input[1], optional_input(node, 2)
    weight, group = b.consts[w], int(b.attrs(node).get("group", 1))
    out = b.new(node.output[0], weight.shape[0], 1)
    params = [w] + ([bias] if bias else [])
    if x.axis != 1 or x.block != 1:
        return b.opaque(node)
    if group == 1:
        if b.owned_or_pin(params, [x, out], node):
            b.entry(x, "sink", w, 1)
            b.entry(out, "source", w, 0)
            if bias:
                b.entry(out, "slice", bias, 0)
    elif group == x.n == out.n:  # depthwise, multiplier 1: channel c in -> channel c out
        b.join(b.slots(x), b.slots(out))
        if b.owned_or_pin(params, [out], node):
            b.entry(out, "dw", w, 0)
            if bias:
                b.entry(out, "slice", bias, 0)
            b.edit(node, node.output[0])
    elif x.n % group == 0 and out.n % group == 0:
        _grouped(b, node, x, out, group, params)
    else:
        b.opaque(node)


def _grouped(b: ChannelBuilder, node, x: Layout, out: Layout, group: int, params: list[str]) -> None:
    """A grouped conv keeps equal groups: input channel k of every group is one group (its sink is
    the weight column k), and so is output channel k of every group (filters k, k + C/G, ...)."""
    w = node.input[1]
    cin, cout = x.n // group, out.n // group
    for layout, per in ((x, cin), (out, cout)):
        first = np.arange(layout.base, layout.base + per)
        for g in range(1, group):
            b.join(first, first + g * per)
    if b.owned_or_pin(params, [x, out], node):
        b.entry(Layout(x.base, cin, 1), "sink", w, 1)  # group 0's input channels: columns 0 .. C_in/G - 1
        b.entry(out, "source", w, 0)
        if len(params) > 1:
            b.entry(out, "slice", params[1], 0)


#: the largest unfolded input (bytes) a kernel's scores are computed from by one GEMM
#: (:func:`_unfolded_correlation`: kernel taps × input channels × output positions, float32); above it, the
#: correlation is a Conv with the positions as kernel, which needs no unfolded copy
_UNFOLD_BYTES = 1 << 28


def _per_entry(values: np.ndarray, index: np.ndarray, tail: tuple[int, ...]) -> np.ndarray:
    """``values[index]`` (``index``: a channel per kernel entry ``[a, b]``, broadcastable) shaped to
    broadcast against the kernel."""
    return values[index].reshape(index.shape + tail)


@spec_rule("Conv")
def conv_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """Kernel and input of one rank (≥ 3), ``group`` dividing the output channels and the input's
    channels ``= W.shape[1]·group``, a bias of shape ``(C_out,)``, ``kernel_shape`` = the kernel's."""
    x, w, b = operand(node, 0, shapes), operand(node, 1, consts), operand(node, 2, consts)
    if x is None or w is None:
        return None
    a = attributes(node, opset)
    group = a.get("group", 1)
    if w.ndim != len(x) or w.ndim < 3:
        return f"its kernel {w.shape} and its input {x} differ in rank"
    if group < 1 or w.shape[0] % group:
        return f"group {group} does not divide the kernel's {w.shape[0]} output channels"
    if x[1] != w.shape[1] * group:
        return f"its input has {x[1]} channels, its kernel {w.shape} with group {group} takes {w.shape[1] * group}"
    if b is not None and b.shape != w.shape[:1]:
        return f"its bias has shape {b.shape}, its kernel {w.shape} needs ({w.shape[0]},)"
    if list(a.get("kernel_shape", w.shape[2:])) != list(w.shape[2:]):
        return f"its kernel_shape {a['kernel_shape']} differs from its kernel {w.shape}"
    return pads_problem(a)


@imports("Conv")
def import_conv(node, ctx: ImportContext) -> None:
    w = ctx.param(node, 1, "kernel", weight=True)
    x_shape = ctx.shape(node.input[0])
    a = ctx.attrs(node)
    attrs = spatial_attrs(a, x_shape[2:], tuple(w.shape[2:]))
    attrs["group"] = int(a["group"])
    add_kernel_layer(ctx, node, "conv", w, attrs)


def add_kernel_layer(ctx: ImportContext, node, op: str, w: np.ndarray, attrs: dict) -> None:
    """Add a Conv-like layer (kernel ``w`` from input 1) and, for an input-2 bias, its own affine layer."""
    out_shape = ctx.shape(node.output[0])
    has_bias = len(node.input) > 2 and node.input[2]
    layer = ctx.add(node, op, [ctx.act(node.input[0])], out_shape, {"W": w}, attrs, suffix=f"/{op}" if has_bias else "",
                    origins={"W": (node.input[1], False)})
    if has_bias:
        b = ctx.param(node, 2, "bias")
        ctx.add(node, "affine", [layer], out_shape, {"bias": b.reshape((-1,) + (1,) * (len(out_shape) - 2))},
                origins={"bias": (node.input[2], False)})
