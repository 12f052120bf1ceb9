"""Reductions over any axes: ReduceSum, ReduceMean, ReduceMax, ReduceMin (axes as an attribute
before opset 13 for ReduceSum and 18 for the others, as an input from then on; keepdims;
noop_with_empty_axes).

Algebra (unrolled): an output neuron of ReduceSum has weight-1 edges from the ``N`` neurons it
reduces, one of ReduceMean weight-``1/N`` edges: lifted ``Σ x`` and ``N**-q · Σ x``. A ReduceMax
neuron is a max-pooling neuron over its ``N`` inputs (weight-1 edges; the path-norm counts every path
through it), and ``min(x) = −max(−x)`` is one with weight −1 edges in and out: both lift to ``Σ x``.
No bias. Empty axes reduce every axis, or, with ``noop_with_empty_axes=1``, make the identity.

The elementwise ``Max(x_1, ..., x_k)`` of activations of one shape is the same neuron over its ``k``
inputs: stacked on a new leading axis (each input reshaped to ``(1, *shape)``, concatenated) and reduced
by a ReduceMax over that axis, so every input's paths reach the output with weight 1, as through a
max-pool window (lifted ``Σ_i x_i``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import RefuseNode
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..graph.exponents import pow_scaled
from ..ir.dag import Layer
from .context import ImportContext
from .exact_api import reduced
from .layer_op import ParameterFree
from .registry import channel_rule, imports, layer_op
from .shape import spatial_channels

_OP_TYPES = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin"}


def _axes_are_input(op_type: str, opset: int) -> bool:
    """Whether ``axes`` is an input (ReduceSum from opset 13, the other reductions from 18)."""
    return opset >= (13 if op_type == "ReduceSum" else 18)


def _reduce(b: GraphBuilder, op_type: str, x: str, layer: Layer) -> str:
    """One reduction node over the layer's axes, in the form of the builder's opset."""
    axes, keepdims = layer.attrs["axes"], layer.attrs["keepdims"]
    if _axes_are_input(op_type, b.opset):
        return b.op(op_type, [x, b.ints(axes, "axes")], "reduce", keepdims=keepdims)
    return b.op(op_type, [x], "reduce", axes=axes, keepdims=keepdims)


@layer_op
class Reduce(ParameterFree):
    """Reduction over ``axes``; attrs mode (sum, mean, max, min), axes, keepdims and count (``N``)."""

    op = "reduce"
    keeps_sign = True
    kind = "pool"
    accepts_dirty = True
    rescale_role = "per_channel"  # sum, mean, max and min of λ·x are λ times those of x (λ > 0)

    def keeps_channel(self, layer: Layer, axis: int) -> bool:
        """When the channel axis is not reduced and stays in place (keepdims)."""
        return bool(layer.attrs["keepdims"]) and axis not in layer.attrs["axes"]

    def is_identity(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        """A reduction over one element that keeps the shape."""
        return layer.attrs["count"] == 1 and tuple(layer.shape) == tuple(in_shape)

    def map_axis(self, layer: Layer) -> int | None:
        """Static scales: one exponent per channel when the channel axis stays in place (every output
        neuron sums one channel's neurons, all at that channel's exponent), else one exponent. One for
        all channels would flush those whose bounds lie ``2**(q·Δ)`` below the largest (at q = ∞, ``Q =
        2**40``: any Δ), and the next layer's weights, scaled up to meet them, overflow float32."""
        return 1 if len(layer.shape) > 1 and self.keeps_channel(layer, 1) else None

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return _reduce(b, _OP_TYPES[layer.attrs["mode"]], xs[0], layer)

    def rounding_ops(self, layer, in_shapes) -> int:
        return int(layer.attrs["count"]) + 3

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        y = _reduce(b, "ReduceSum", xs[0].tensor, layer)
        growth = math.log2(layer.attrs["count"])
        if layer.attrs["mode"] != "mean":
            return replace(xs[0], tensor=y, bound=xs[0].bound + growth)
        m, e = pow_scaled(np.array(float(layer.attrs["count"])), -q)  # the weight N**-q = m · 2**e
        y = b.op("Mul", [y, b.scalar(float(m))], "reduce_q")
        return b.shift(replace(xs[0], tensor=y, bound=xs[0].bound + growth + 1.0), e)

    def bound(self, layer, bs, shapes, q):
        axes, rank = tuple(layer.attrs["axes"]), len(shapes[0])
        lu = np.asarray(bs[0], dtype=np.float64)
        out = lu.reshape((1,) * (rank - lu.ndim) + lu.shape).max(axis=axes, keepdims=True)
        if not layer.attrs["keepdims"]:
            out = out.reshape([d for i, d in enumerate(out.shape) if i not in axes])
        return out + (1.0 - q if layer.attrs["mode"] == "mean" else 1.0) * math.log2(layer.attrs["count"])

    def adjoint(self, b, layer, xs, g, in_shapes):
        """Every reduced neuron receives its output's backward mass (× 1/N for a mean)."""
        t, in_shape = g.tensor, in_shapes[0]
        if layer.attrs["mode"] == "mean":
            t = b.op("Mul", [t, b.scalar(1.0 / layer.attrs["count"])], "adj")
        if not layer.attrs["keepdims"]:
            kept = [1 if i in layer.attrs["axes"] else d for i, d in enumerate(in_shape)]
            t = b.op("Reshape", [t, b.ints(kept, "shape")], "adj")
        return [replace(g, tensor=b.op("Expand", [t, b.ints(in_shape, "shape")], "adj"))], {}

    def linf_gain(self, layer: Layer) -> float:
        return math.log2(layer.attrs["count"]) if layer.attrs["mode"] == "sum" else 0.0

    def exact(self, run, layer, xs, in_shapes, feeds):
        """A sum (max at q = ∞) over its axes, weights 1 or ``count**-q`` (a mean)."""
        axes = tuple(a % xs[0][0].ndim for a in layer.attrs["axes"])
        return reduced(run, layer, xs[0], axes, layer.attrs["mode"] == "mean", layer.attrs["count"])


channel_rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")(spatial_channels)  # over spatial axes: per channel


@imports("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin")
def import_reduce(node, ctx: ImportContext) -> None:
    a = ctx.attrs(node)
    x_shape = ctx.shape(node.input[0])
    if _axes_are_input(node.op_type, ctx.prepared.opset):
        given = ctx.param(node, 1, "axes") if len(node.input) > 1 and node.input[1] else []
    else:
        given = a.get("axes", [])
    if len(given) == 0 and int(a.get("noop_with_empty_axes", 0)):
        ctx.alias(node.output[0], ctx.act(node.input[0]))
        return
    axes = sorted({int(ax) % len(x_shape) for ax in given} or range(len(x_shape)))
    attrs = {"mode": node.op_type[len("Reduce"):].lower(), "axes": axes, "keepdims": int(a["keepdims"]),
             "count": math.prod(x_shape[ax] for ax in axes)}
    ctx.add(node, "reduce", [ctx.act(node.input[0])], ctx.shape(node.output[0]), attrs=attrs)


@imports("Max", note="a max over its stacked inputs (ReduceMax over a new axis): every path counts, as in a max-pool window")
def import_max(node, ctx: ImportContext) -> None:
    """``max(x_1, ..., x_k)``: Reshape each input to ``(1, *shape)``, Concat on axis 0, ReduceMax over it."""
    inputs = [t for t in node.input if t]
    shape = ctx.shape(node.output[0])
    if any(ctx.const(t) is not None for t in inputs):
        raise RefuseNode("Max with a constant operand is not imported yet (its exact form is c + relu(x − c))")
    if any(ctx.shape(t) != shape for t in inputs):
        raise RefuseNode(f"Max of inputs of shapes {[ctx.shape(t) for t in inputs]} broadcasts: only inputs of one shape are imported")
    if len(inputs) == 1:
        ctx.alias(node.output[0], ctx.act(inputs[0]))
        return
    stacked = [ctx.add(node, "reshape", [ctx.act(t)], (1, *shape), suffix=f"/stack{i}") for i, t in enumerate(inputs)]
    both = ctx.add(node, "concat", stacked, (len(inputs), *shape), attrs={"axis": 0}, suffix="/concat")
    ctx.add(node, "reduce", [both], shape, attrs={"mode": "max", "axes": [0], "keepdims": 0, "count": len(inputs)})
