"""Transposed convolution (ConvTranspose: 1-D/2-D/3-D, groups, strides, dilations, pads,
output_padding; ``output_shape`` and ``auto_pad`` resolved to explicit pads as onnxruntime does)
with a constant kernel ``W`` of layout ``(C_in, C_out/group, k...)``.

Algebra: unrolled, input neuron ``x[i, j]`` sends ``W[i, o, k] · x[i, j]`` to output position
``p = j·s − pad_begin + k·d`` of channel ``o`` (of ``i``'s group), so each output neuron sums ``w · x``
over the input neurons that scatter into it: the lifted layer is the same ConvTranspose with
``|W|**q``; the bias becomes a separate affine layer (``|b|**q``), as for Conv. An output position
``p`` receives the taps ``k`` with ``k·d ≡ p + pad_begin (mod s)`` (one *phase* of the kernel), so
the largest lifted output of a channel is the largest phase sum. The transpose (adjoint) is the
forward Conv of the backward masses with ``|W|``, read as a Conv weight from ``C_out`` to ``C_in``
channels, same strides, dilations, pads and group; the kernel scores correlate the forward masses
with the padded backward masses (a grouped Conv with strides and dilations swapped).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import RefuseNode
from ..graph.bounds import along_axis, channel_vector, log2_outward
from ..graph.builder import GraphBuilder, Scaled, on_axis
from ..graph.exponents import lost_below, pow_scaled
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout, optional_input
from .context import ImportContext
from .conv import Conv, add_kernel_layer
from .forms import bias_bound, product_exponent
from .geometry import split_pads
from .layer_op import LayerOp, RescaleAxes
from .registry import channel_rule, imports, layer_op


def _log2_phase_gain(w: np.ndarray, attrs: dict, lu: np.ndarray, lost: float = 0.0) -> np.ndarray:
    """Per output channel ``o``: an upper bound on ``log2 max_phase Σ_{i, k ∈ phase} w[i, o, k] · 2**lu[i]``
    for a non-negative kernel ``w`` and per-input-channel ``lu`` (the largest sum one output neuron
    gets; ``lost`` as in :func:`~onnx_pathlift.graph.bounds.log2_weighted_sum`)."""
    c_in, c_out_group, kernel = w.shape[0], w.shape[1], w.shape[2:]
    strides, dilations, groups = attrs["strides"], attrs["dilations"], attrs["group"]
    taps = np.meshgrid(*[(np.arange(k) * d) % s for k, s, d in zip(kernel, strides, dilations)], indexing="ij")
    phase = np.ravel_multi_index(tuple(t.reshape(-1) for t in taps), strides)
    sums = w.reshape(c_in, c_out_group, -1).astype(np.float64) @ np.eye(math.prod(strides))[phase]  # (C_in, C_out/g, phases)
    top = float(np.max(lu, initial=-np.inf))
    if not np.isfinite(top):
        return np.full(c_out_group * groups, -np.inf)
    sums = sums * np.exp2(lu - top)[:, None, None]
    per_channel = sums.reshape(groups, c_in // groups, c_out_group, -1).sum(axis=1).max(axis=-1)  # (group, C_out/g)
    low = float(np.min(lu[np.isfinite(lu)]))  # -inf terms are exact zeros, not underflow
    return log2_outward(per_channel.reshape(-1), c_in // groups * math.prod(kernel), lost, low - top) + top


def _crop(b: GraphBuilder, t: str, have: list[int], want: list[int]) -> str:
    """``t`` cut to the first ``want`` positions of its spatial axes (it has ``have ≥ want``)."""
    if have == want:
        return t
    n = len(want)
    return b.op("Slice", [t, b.ints(np.zeros(n), "starts"), b.ints(want, "ends"),
                          b.ints(np.arange(2, 2 + n), "axes")], "crop")


@layer_op
class ConvTranspose(Conv):
    """``ConvTranspose(x, W)`` with explicit pads; attrs strides, pads, dilations, output_padding,
    group. The bias and the two-stream split are Conv's (a per-output-channel bias, one weight)."""

    op = "deconv"
    kind = "conv"
    onnx_op = "ConvTranspose"
    exact, exact_work = LayerOp.exact, LayerOp.exact_work  # no exact form (the fallback refuses it)

    def rescale_axes(self, layer: Layer) -> RescaleAxes | None:
        """``W`` is ``(C_in, C_out/group, k...)``: output channels on axis 1 (whole only when group = 1),
        input channels on axis 0."""
        return RescaleAxes(1, 1, 0, False) if layer.attrs["group"] == 1 else None

    def gain_log2(self, layer: Layer, q: float) -> float:
        m, _ = pow_scaled(layer.params["W"], q)
        return float(np.max(_log2_phase_gain(m, layer.attrs, np.zeros(m.shape[0]))))  # the largest phase sum

    def rounding_ops(self, layer, in_shapes) -> int:
        w = layer.params["W"]
        return (w.shape[0] // layer.attrs["group"]) * int(np.prod(w.shape[2:])) + 3

    def kernel_channels(self, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
        """Layout ``(C_in, C_out/group, k...)``: ``W[c, j]`` feeds output channel ``group(c)·C_out/g + j``."""
        c_in, c_out_group = layer.params["W"].shape[:2]
        c, j = np.arange(c_in)[:, None], np.arange(c_out_group)[None, :]
        return c, (j if layer.attrs["group"] == 1 else (c // (c_in // layer.attrs["group"])) * c_out_group + j)

    def bound(self, layer, bs, shapes, q):
        m, e = pow_scaled(layer.params["W"], q)
        lost = float(lost_below(layer.params["W"], q))
        out = _log2_phase_gain(m, layer.attrs, along_axis(bs[0], shapes[0], 1), lost) + e
        return bias_bound(layer, on_axis(out, len(layer.shape), 1), q)

    def adjoint(self, b, layer, xs, g, in_shapes):
        m = layer.params["W"]  # its shape; the constant |W| · 2**-e is shared with the forward pass
        w, e = b.abs_power(m, 1.0, "absW")
        a, x_shape, y_shape = layer.attrs, in_shapes[0], layer.shape
        n, kernel, groups = len(x_shape) - 2, list(m.shape[2:]), a["group"]
        s, d, pads = a["strides"], a["dilations"], a["pads"]
        # end pads less the output padding (positions no input reaches; output_padding < stride, so the
        # Conv gives the input's size exactly), clamped at 0: the scores' correlation is cropped instead
        ends = [max(pads[n + i] - a["output_padding"][i], 0) for i in range(n)]
        padded = [y_shape[2 + i] + pads[i] + ends[i] for i in range(n)]
        gx = b.op("Conv", [g.tensor, w], "adj", strides=s, dilations=d, pads=pads[:n] + ends, group=groups)
        # scores[i, o, k] = |W[i, o, k]| · Σ_{batch, j} x[i, j] · g_padded[o, j·s + k·d]: the backward masses as
        # images (C_out/g, group·N), the forward masses as kernels (C_in, N), one group per ConvTranspose group
        batch, c_out_g = y_shape[0], y_shape[1] // groups
        img = b.op("Reshape", [g.tensor, b.ints([batch, groups, c_out_g, *y_shape[2:]], "shape")], "gimg")
        img = b.op("Transpose", [img], "gimg", perm=[2, 1, 0, *range(3, 3 + n)])
        img = b.op("Reshape", [img, b.ints([c_out_g, groups * batch, *y_shape[2:]], "shape")], "gimg")
        kx = b.op("Transpose", [xs[0].tensor], "xk", perm=[1, 0, *range(2, 2 + n)])
        c = b.op("Conv", [img, kx], "corr", strides=d, dilations=s, pads=pads[:n] + ends, group=groups)
        c = _crop(b, c, [(padded[i] - s[i] * (x_shape[2 + i] - 1) - 1) // d[i] + 1 for i in range(n)], kernel)
        c = b.op("Transpose", [c], "corr", perm=[1, 0, *range(2, 2 + n)])
        s_w = b.op("Mul", [c, w], "score")
        return [b.shift(Scaled(gx, g.log2), e)], {"W": Scaled(s_w, product_exponent(b, xs[0], g, e))}

    def linf_gain(self, layer: Layer) -> float:
        w = np.abs(layer.params["W"], dtype=np.float64)
        return float(np.max(_log2_phase_gain(w, layer.attrs, np.zeros(w.shape[0]))))  # interior positions

    def absorb_scale(self, layer: Layer, scale: np.ndarray) -> Layer | None:
        s = channel_vector(scale, layer.shape, 1)
        if s is None:
            return None
        w, groups = layer.params["W"], layer.attrs["group"]
        grouped = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])  # output channel o = group · C_out/g + o'
        factor = s.reshape(groups, 1, w.shape[1], *([1] * (w.ndim - 2)))
        return replace(layer, params={**layer.params, "W": (grouped * factor).reshape(w.shape)})

    def absorb_input_scale(self, layer: Layer, scale: np.ndarray, in_shape: tuple[int, ...]) -> Layer | None:
        s = channel_vector(scale, in_shape, 1)
        w = layer.params["W"]  # (C_in, C_out / g, k...): input channel c spreads through row c
        return None if s is None else replace(layer, params={**layer.params, "W": w * s.reshape((-1,) + (1,) * (w.ndim - 1))})


def _explicit_pads(a: dict, in_spatial: tuple[int, ...], kernel: tuple[int, ...], strides: list[int],
                   dilations: list[int], output_padding: list[int]) -> list[int]:
    """The pads onnxruntime uses: given ``pads``, or a total ``(in−1)·s + adj + (k−1)·d + 1 − out``
    for the target ``out`` (``output_shape``, or ``in·s`` under SAME_*), split with the odd unit at
    the end for SAME_UPPER and at the beginning otherwise (clamped at 0 under SAME_*)."""
    n = len(kernel)
    auto_pad = a["auto_pad"]
    if auto_pad not in ("", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise RefuseNode(f"unknown auto_pad {auto_pad!r}")
    if "output_shape" in a:
        targets = [int(t) for t in a["output_shape"][-n:]]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        targets = [size * s for size, s in zip(in_spatial, strides)]
    else:
        return [int(p) for p in a.get("pads", [0] * (2 * n))] if auto_pad in ("", "NOTSET") else [0] * (2 * n)
    totals = []
    for size, k, s, dil, adj, out in zip(in_spatial, kernel, strides, dilations, output_padding, targets):
        total = (size - 1) * s + adj + (k - 1) * dil + 1 - out
        if total < 0 and "output_shape" in a:
            raise RefuseNode(f"output_shape {out} is larger than the full transposed convolution ({out + total})")
        totals.append(max(total, 0))
    return split_pads(totals, odd_at_end=auto_pad == "SAME_UPPER")


@imports("ConvTranspose")
def import_conv_transpose(node, ctx: ImportContext) -> None:
    w = ctx.param(node, 1, "kernel", weight=True)
    x_shape, out_shape = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    a = ctx.attrs(node)
    kernel, n = tuple(w.shape[2:]), w.ndim - 2
    if len(x_shape) != n + 2:
        raise RefuseNode(f"input of rank {len(x_shape)} does not match a {n}-D kernel")
    if "kernel_shape" in a and tuple(a["kernel_shape"]) != kernel:
        raise RefuseNode(f"kernel_shape {list(a['kernel_shape'])} differs from the kernel's {list(kernel)}")
    strides = [int(s) for s in a.get("strides", [1] * n)]
    dilations = [int(d) for d in a.get("dilations", [1] * n)]
    output_padding = [int(p) for p in a.get("output_padding", [0] * n)]
    if any(p >= s for p, s in zip(output_padding, strides)):
        raise RefuseNode(f"output_padding {output_padding} is not below the strides {strides} (onnxruntime refuses it)")
    pads = _explicit_pads(a, x_shape[2:], kernel, strides, dilations, output_padding)
    if any(p < 0 for p in pads):
        raise RefuseNode("negative pads (cropping) are not supported")
    sizes = tuple((x_shape[2 + i] - 1) * strides[i] + output_padding[i] + (kernel[i] - 1) * dilations[i] + 1 - pads[i] - pads[n + i]
                  for i in range(n))
    if sizes != tuple(out_shape[2:]):
        raise RefuseNode(f"ONNX shape inference gives spatial size {tuple(out_shape[2:])}, onnxruntime computes {sizes}")
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "output_padding": output_padding, "group": int(a["group"])}
    add_kernel_layer(ctx, node, "deconv", w, attrs)


def deconv_macs(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """ConvTranspose: each input neuron scatters ``C_out/group · Π kernel`` products (``Π W.shape[1:]``)."""
    w = consts.get(node.input[1])
    return math.prod(shapes[node.input[0]]) * math.prod(w.shape[1:]) if w is not None else 0


@channel_rule("ConvTranspose", macs=deconv_macs, weight=True, bias=2)
def deconv_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """``group`` 1, kernel ``(C_in, C_out, k...)``: input channel ``c`` is a sink (``W[c]``, the weights
    it scatters with), output channel ``o`` a source (``W[:, o]``, bias ``b[o]`` sliced with it). A
    grouped one is not sliced (its groups would have to keep equal sizes through ``W``'s second axis
    holding ``C_out/group``): pinned with that reason."""
    x, w, bias = xs[0], node.input[1], optional_input(node, 2)
    weight, group = b.consts[w], int(b.attrs(node).get("group", 1))
    if x.axis != 1 or x.block != 1:
        return b.opaque(node)
    if group != 1:
        return b.opaque(node, f"{b.label(node)} has group {group}: only group 1 is sliced")
    out = b.new(node.output[0], weight.shape[1], 1)
    params = [w] + ([bias] if bias else [])
    if b.owned_or_pin(params, [x, out], node):
        b.entry(x, "sink", w, 0)
        b.entry(out, "source", w, 1)
        if bias:
            b.entry(out, "slice", bias, 0)
