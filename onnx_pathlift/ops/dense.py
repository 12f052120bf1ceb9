"""Dense layers: ``MatMul`` and ``Gemm`` with a constant weight.

Algebra: ``y = x @ W`` (weight on the right) or ``y = W @ x`` (on the left); every output neuron
sums ``w · x`` over the contracted axis, so the lifted layer is the same MatMul with ``|W|**q``.
Gemm ``alpha·A'·B' + beta·C`` becomes an optional transpose, a dense layer with ``alpha·W`` and an
affine bias layer with ``beta·C``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import PathliftError, RefuseNode
from ..graph.bounds import along_axis, channel_vector, log2_max_row_sum, log2_outward, log2_rows, log2_weighted_sum
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled, on_axis
from ..graph.exponents import compact, exp_diff, exp_max, exp_vector, lost_below, neg_exp, pow_scaled, scaled_rows
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout, optional_input
from .context import ImportContext, attributes, broadcasts_to, operand
from .exact_api import FallbackRefused, biased, contract
from .forms import bias_bound, channel_bias, lift_bias, product_exponent, split_weight
from .layer_op import LayerOp, RescaleAxes
from .registry import channel_rule, imports, layer_op, spec_rule


@layer_op
class Dense(LayerOp):
    """``x @ W`` (attrs side="right") or ``W @ x`` (side="left"), W constant."""

    op = "dense"
    kind = "linear"
    scored = True
    rescale_role = "weights"

    def rescale_axes(self, layer: Layer) -> RescaleAxes | None:
        """``x @ W`` with a 2-D ``W`` (in × out): features on the last axis, of any layout upstream
        (a flatten spreads one channel over consecutive rows)."""
        if layer.attrs["side"] != "right" or layer.params["W"].ndim != 2:
            return None
        return RescaleAxes(len(layer.shape) - 1, 1, 0, True)

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        w = b.const(layer.params["W"], "W")
        args = [xs[0], w] if layer.attrs["side"] == "right" else [w, xs[0]]
        return b.op("MatMul", args, "dense")

    def map_axis(self, layer: Layer) -> int | None:
        if layer.params["W"].ndim != 2:
            return None
        return -1 if layer.attrs["side"] == "right" else -2  # the contracted axis of the input

    def rounding_ops(self, layer, in_shapes) -> int:
        w = layer.params["W"]
        return int(w.shape[-2] if layer.attrs["side"] == "right" and w.ndim > 1 else w.shape[-1]) + 3

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        w, right, stored = layer.params["W"], layer.attrs["side"] == "right", _stored_transposed(layer)
        if b.static:
            c, k_out = self._static_weight(b, layer, xs[0], q, stored)
            bias = channel_bias(layer, q, k_out, 1) if right and len(layer.shape) == 2 and w.ndim == 2 else None
            y = Scaled(_product(b, layer, xs[0].tensor, c, stored, None if bias is None else b.const(bias, "absBias")), k_out)
            return y if bias is not None else lift_bias(b, layer, y, q, k_out)
        c, e = b.abs_power(w, q, "absW", transposed=stored)
        y = _product(b, layer, xs[0].tensor, c, stored)
        # largest output ≤ (max input) · largest sum of the weights feeding one output
        if w.ndim == 2:
            growth = max(log2_max_row_sum(w, w.T if right else w, q), 0.0)
        else:
            growth = math.log2(max(float(np.max(pow_scaled(w, q)[0].sum(axis=-2 if right and w.ndim > 1 else -1), initial=0.0)), 1.0))
        return lift_bias(b, layer, b.shift(Scaled(y, xs[0].log2, xs[0].bound + growth, dirty=True), e), q)

    def _static_weight(self, b: LiftBuilder, layer: Layer, x: Scaled, q: float, stored: bool):
        """``|W|**q · 2**(k_in − k_out)`` entry by entry (input exponents along the contracted axis,
        output exponents from the target along the output axis; ``Wᵀ`` as stored when ``stored``, see
        :func:`_stored_transposed`), and the output's exponent map."""
        w, right, rank = layer.params["W"], layer.attrs["side"] == "right", len(layer.shape)
        if w.ndim != 2:
            k_out = int(math.ceil(exp_max(b.target))) if math.isfinite(exp_max(b.target)) else 0
            return b.weight(w, q, "absW", np.asarray(float(exp_diff(x.log2, k_out))),
                            floor=lambda: b.floors(0, 1, None).reshape(())), k_out
        n_in, n_out = (w.shape[0], w.shape[1]) if right else (w.shape[1], w.shape[0])
        axis = (-1 if right else -2) % rank  # the contracted axis of x, and the output axis
        k_in = exp_vector(x.log2, n_in, axis)
        t_out = exp_vector(b.target, n_out, axis)
        k_out = compact(on_axis(t_out, rank, axis), layer.shape)

        def floor() -> np.ndarray:  # along the contracted axis of the constant's layout
            v = b.floors(0, n_in, axis)
            return v[:, None] if right and not stored else v[None, :]

        if stored:
            return b.weight(w.T, q, "absWT", k_in[None, :], neg_exp(t_out)[:, None], floor=floor), k_out
        shifts = (k_in[:, None], neg_exp(t_out)[None, :]) if right else (k_in[None, :], neg_exp(t_out)[:, None])
        return b.weight(w, q, "absW", *shifts, floor=floor), k_out

    def bound(self, layer, bs, shapes, q):
        w = layer.params["W"]
        right, rank = layer.attrs["side"] == "right", len(layer.shape)
        lost = float(lost_below(w, q))
        if w.ndim != 2:  # batched or vector weight: one scalar bound
            m, e = pow_scaled(w, q)
            sums = m.sum(axis=-2 if right and m.ndim > 1 else -1)
            n = w.shape[-2] if right and w.ndim > 1 else w.shape[-1]
            top = float(np.max(bs[0]))
            return bias_bound(layer, log2_outward(np.asarray(float(sums.max(initial=0.0))), n, lost, 0.0) + top + e, q)
        v = along_axis(bs[0], shapes[0], -1 if right else -2)
        finite = v[np.isfinite(v)]
        spread = float(np.ptp(finite)) if finite.size else 0.0
        if lost or spread > 1000:
            out = log2_rows(w.T if right else w, q, v[None, :])  # one scale per output neuron
        else:
            out = log2_weighted_sum(w, w.T if right else w, q, v)
        return bias_bound(layer, on_axis(out, rank, -1 if right else -2), q)

    def split_params(self, a: Layer, b: Layer):
        return split_weight(a, b)

    def adjoint(self, b, layer, xs, g, in_shapes):
        w = layer.params["W"]
        if w.ndim != 2:
            raise PathliftError(f"layer {layer.name!r}: scores of a batched constant MatMul are not supported")
        right, stored = layer.attrs["side"] == "right", _stored_transposed(layer)
        c, e = b.abs_power(w, 1.0, "absW", transposed=stored)  # the forward pass's constant
        gx = b.shift(Scaled(self._transposed_product(b, layer, g.tensor, c, stored), g.log2), e)
        # y = x W: Σ over rows of x_k g_n;  y = W x: Σ over columns of g_m x_k
        lead = -1 if right else -2  # the axes before these are summed over (batch, rows)
        x3 = b.op("Reshape", [xs[0].tensor, b.ints([-1, *in_shapes[0][lead:]], "shape")], "x3")
        g3 = b.op("Reshape", [g.tensor, b.ints([-1, *layer.shape[lead:]], "shape")], "g3")
        # c = |W|ᵀ as stored: the score in that layout too ("W^T"), so no 2-D array is transposed; a
        # Gemm, not an Einsum (onnxruntime's Einsum transposes its result slowly: 3.9 s on VGG's fc6)
        if right:
            corr = b.op("Gemm", [g3, x3] if stored else [x3, g3], "corr", transA=1)
        else:
            corr = b.op("Einsum", [x3, g3], "corr", equation="bkn,bmn->mk")
        s = b.op("Mul", [corr, c], "score")
        return [gx], {"W^T" if stored else "W": Scaled(s, product_exponent(b, xs[0], g, e))}

    @staticmethod
    def _transposed_product(b: LiftBuilder, layer: Layer, g: str, c: str, stored: bool) -> str:
        """The backward masses ``g @ |W|ᵀ`` (``x @ W``) or ``|W|ᵀ @ g`` (``W @ x``) with ``c`` = ``|W|``, or
        ``|W|ᵀ`` as stored: a Gemm with ``transA``/``transB`` where the operands are 2-D, so that no
        transposed copy of the constant is made."""
        right = layer.attrs["side"] == "right"
        if stored:
            return b.op("MatMul", [g, c], "adj")
        if len(layer.shape) == 2:
            return b.op("Gemm", [g, c], "adj", transB=1) if right else b.op("Gemm", [c, g], "adj", transA=1)
        wt = b.op("Transpose", [c], "absWT", perm=[1, 0])
        return b.op("MatMul", [g, wt] if right else [wt, g], "adj")

    def linf_gain(self, layer: Layer) -> float:
        w = np.abs(layer.params["W"])
        sums = w.sum(axis=-2 if layer.attrs["side"] == "right" and w.ndim > 1 else -1, dtype=np.float64)
        return _log2(float(np.max(sums, initial=0.0)))

    def absorb_bias(self, layer: Layer, bias: np.ndarray) -> Layer | None:
        if layer.params["W"].ndim != 2:
            return None
        right = layer.attrs["side"] == "right"
        s = channel_vector(bias, layer.shape, -1 if right else -2)
        return None if s is None else replace(layer, params={**layer.params, "B": on_axis(s, len(layer.shape), -1 if right else -2)})

    def absorb_scale(self, layer: Layer, scale: np.ndarray) -> Layer | None:
        w = layer.params["W"]
        if w.ndim != 2:
            return None
        right = layer.attrs["side"] == "right"
        s = channel_vector(scale, layer.shape, -1 if right else -2)
        if s is None:
            return None
        return replace(layer, params={**layer.params, "W": scaled_rows(w, s[None, :] if right else s[:, None])})

    def row_params(self, layer: Layer, rows: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """``x @ W`` with a 2-D ``W`` acts on each row of ``x``'s last axis alike."""
        return dict(layer.params) if layer.attrs["side"] == "right" and layer.params["W"].ndim == 2 else None

    def absorb_input_scale(self, layer: Layer, scale: np.ndarray, in_shape: tuple[int, ...]) -> Layer | None:
        w = layer.params["W"]
        if w.ndim != 2:
            return None
        right = layer.attrs["side"] == "right"  # x @ W reads x's last axis, W @ x its second to last
        s = channel_vector(scale, in_shape, -1 if right else -2)
        if s is None:
            return None
        return replace(layer, params={**layer.params, "W": w * (s[:, None] if right else s[None, :])})

    def exact(self, run, layer, xs, in_shapes, feeds):
        """``x @ |W|**q`` (side right) or ``|W|**q @ x`` (side left) in the log domain, 2-D ``W``, then the bias."""
        w, (v, err) = layer.params["W"], xs[0]
        if w.ndim != 2:
            raise FallbackRefused(f"the exact float64 fallback evaluates 2-D dense weights only (layer {layer.name!r})")
        a, ea = run.weight(w)
        right = layer.attrs["side"] == "right"
        if not right:  # W @ x = (xᵀ @ Wᵀ)ᵀ over the last two axes
            v, a = np.swapaxes(v, -1, -2), a.T
        rows = v.reshape(-1, v.shape[-1])
        y, local = contract(run, rows[None], a.T[None])
        y = y[0].reshape(*v.shape[:-1], a.shape[1])
        y = y if right else np.swapaxes(y, -1, -2)
        return biased(run, layer, y, err + ea + local, "B")

    def exact_work(self, layer, in_shapes, inf):
        """Its input entries at finite q (the multiply-adds go to a float64 matmul), its multiply-adds at q = ∞."""
        x = in_shapes[0]
        return math.prod(layer.shape) * x[-1] if inf else math.prod(x)


def _product(b: LiftBuilder, layer: Layer, x: str, c: str, stored: bool, bias: str | None = None) -> str:
    """The lifted layer's product of ``x`` with its constant ``c``: ``x @ c`` or ``c @ x``, or, for ``c``
    holding ``|W|ᵀ`` as stored, a Gemm ``transB`` (onnxruntime reads that layout, no transposing copy);
    with a ``bias`` (a 2-D ``x @ c`` only), the Gemm ``x @ c + bias``."""
    if stored or bias is not None:
        return b.op("Gemm", [x, c] + ([] if bias is None else [bias]), "dense", transB=int(stored))
    return b.op("MatMul", [x, c] if layer.attrs["side"] == "right" else [c, x], "dense")


def _stored_transposed(layer: Layer) -> bool:
    """Whether ``W`` of ``x @ W`` (2-D ``x``) is a transposed view of an ``(out, in)`` array (a Gemm
    ``transB`` weight): lifted weights keep that layout, read by Gemm ``transB`` (no transposing copy)."""
    w = layer.params["W"]
    return layer.attrs["side"] == "right" and len(layer.shape) == 2 and w.ndim == 2 and w.T.flags.c_contiguous and not w.flags.c_contiguous


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else -math.inf


def dense_macs(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> int:
    """Gemm / MatMul: each output entry takes the contracted length of ``A`` products."""
    transa = any(a.name == "transA" and a.i for a in node.attribute)
    return math.prod(shapes[node.output[0]]) * shapes[node.input[0]][-2 if transa else -1]


@channel_rule("MatMul", macs=dense_macs, weight=True, refit="dense")
def matmul_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """MatMul ``x @ W``: see :func:`dense_channels` (no bias)."""
    dense_channels(b, node, xs, gemm=False)


@channel_rule("Gemm", macs=dense_macs, weight=True, refit="dense", bias=2)
def gemm_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Gemm ``x @ W(ᵀ) + c``: see :func:`dense_channels`."""
    dense_channels(b, node, xs, gemm=True)


def dense_channels(b: ChannelBuilder, node, xs: list[Layout], gemm: bool) -> None:
    """Gemm (``transA`` 0) or MatMul with a constant 2-D right operand ``W``, on the last axis: input
    feature ``c`` (a block of ``x.block`` rows after a flatten) is a sink (its rows of ``W``, or columns
    under ``transB``), output feature ``o`` a source (its column, or row), a per-feature bias sliced
    with it. A computed ``W``, ``transA`` or a batched weight is not sliced."""
    x, w = xs[0], node.input[1]
    if not b.is_const(w):
        return b.opaque(node)
    a, weight = b.attrs(node), b.consts[w]
    trans = int(a.get("transB", 0))
    rank = len(b.shape(node.input[0]))
    if weight.ndim != 2 or int(a.get("transA", 0)) or x.axis != rank - 1:
        return b.opaque(node)
    out = b.new(node.output[0], weight.shape[0 if trans else 1], rank - 1)
    bias = optional_input(node, 2) if gemm else None
    bias_sliced = bias is not None and b.consts[bias].ndim >= 1 and b.consts[bias].shape[-1] == out.n > 1
    if b.owned_or_pin([w] + ([bias] if bias_sliced else []), [x, out], node):
        b.entry(x, "sink", w, 1 if trans else 0, x.block)
        b.entry(out, "source", w, 0 if trans else 1)
        if bias_sliced:
            b.entry(out, "slice", bias, b.consts[bias].ndim - 1)


@imports("MatMul")
def import_matmul(node, ctx: ImportContext) -> None:
    a, w = ctx.const(node.input[0]), ctx.const(node.input[1])
    if a is None and w is None:
        raise RefuseNode("both operands are activations: a product of activations is not a ReLU network layer")
    side, x, wi = ("right", node.input[0], 1) if w is not None else ("left", node.input[1], 0)
    ctx.add(node, "dense", [ctx.act(x)], ctx.shape(node.output[0]), {"W": ctx.param(node, wi, "weight", weight=True)}, {"side": side},
            origins={"W": (node.input[wi], False)})


@spec_rule("Gemm")
def gemm_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """``A'`` (m×k) and ``B'`` (k×n) chain after ``transA``/``transB``; ``C`` broadcasts to (m, n)."""
    a, b = operand(node, 0, shapes), operand(node, 1, shapes)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return None  # shape inference refuses other ranks
    attrs = attributes(node, opset)
    (m, k), (k2, n) = a[::-1] if attrs.get("transA") else a, b[::-1] if attrs.get("transB") else b
    if k != k2:
        return f"its operands {a} and {b} (transA={attrs.get('transA', 0)}, transB={attrs.get('transB', 0)}) do not chain"
    c = operand(node, 2, shapes)
    if c is not None and not broadcasts_to(c, (m, n)):
        return f"its bias of shape {c} does not broadcast to the output ({m}, {n})"
    return None


@imports("Gemm")
def import_gemm(node, ctx: ImportContext) -> None:
    a = ctx.attrs(node)
    alpha, beta = float(a["alpha"]), float(a["beta"])
    trans_a, trans_b = int(a["transA"]), int(a["transB"])
    out_shape = ctx.shape(node.output[0])
    if ctx.const(node.input[0]) is None and ctx.const(node.input[1]) is None:
        raise RefuseNode("both operands are activations: a product of activations is not a ReLU network layer")
    if ctx.const(node.input[1]) is not None:  # y = A' @ (alpha·B')
        x, side, trans_x, trans_w, wi = node.input[0], "right", trans_a, trans_b, 1
    else:  # y = (alpha·A') @ B'
        x, side, trans_x, trans_w, wi = node.input[1], "left", trans_b, trans_a, 0
    w = ctx.param(node, wi, "weight", weight=True)
    w = w.T if trans_w else w  # a view: no copy of the weight
    if alpha != 1.0:
        w = alpha * w.astype(np.float64)
    origins = {"W": (node.input[wi], bool(trans_w))}
    src = ctx.act(x)
    if trans_x:
        shape = ctx.shape(x)
        src = ctx.add(node, "transpose", [src], (shape[1], shape[0]), attrs={"perm": [1, 0]}, suffix="/transpose")
    has_bias = len(node.input) > 2 and node.input[2] and beta != 0.0
    if not has_bias:
        ctx.add(node, "dense", [src], out_shape, {"W": w}, {"side": side}, origins=origins)
        return
    dense = ctx.add(node, "dense", [src], out_shape, {"W": w}, {"side": side}, suffix="/dense", origins=origins)
    bias = beta * ctx.param(node, 2, "bias")
    ctx.add(node, "affine", [dense], out_shape, {"bias": np.asarray(bias)}, origins={"bias": (node.input[2], False)})
