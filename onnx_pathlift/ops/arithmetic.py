"""Element-wise arithmetic: constant scale/bias layers (affine) and sums of activations (skips).

Affine algebra: ``y = s ⊙ x + t`` with constants ``s``, ``t`` broadcast against ``x``: every output
neuron has one incoming edge (weight ``s``) and a bias ``t``; lifted: ``|s|**q ⊙ x + |t|**q``.
Import: ``x + c``, ``x - c`` (t = -c), ``c - x`` (s = -1, t = c), ``-x`` (Neg: s = -1, so ``|s|**q = 1``),
``x · c``, ``x / c`` (s = 1/c).

Sum algebra: ``y = Σ ±x_i`` (Add, Sub, Sum of activations): weight ±1 edges; lifted: ``Σ x_i``, the
inputs first brought to a common power-of-two scale.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import Refusal, RefuseNode, UnsupportedModelError
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..graph.exponents import Exponent, compact, exp_diff, lifted_log2, pow_scaled, scaled_power
from ..ir.dag import Layer
from .channel_api import ChannelBuilder, Layout
from .context import ImportContext, attributes, operand
from .exact_api import biased, max_abs
from .forms import unbroadcast
from .layer_op import ANY, LayerOp, OneLipschitz, ParameterFree
from .registry import channel_rule, imports, layer_op, spec_rule


@layer_op
class Affine(LayerOp):
    """``y = scale ⊙ x + bias``; either parameter may be absent."""

    op = "affine"
    kind = "affine"
    folds_into_previous = True
    accepts_dirty = True
    full_maps = False
    rescale_role = "per_channel"
    rescaled_params = ("bias", "mean")

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        y = xs[0]
        if "scale" in layer.params:
            y = b.op("Mul", [y, b.const(layer.params["scale"], "scale")], "scale")
        if "bias" in layer.params:
            y = b.op("Add", [y, b.const(layer.params["bias"], "bias")], "bias")
        return y

    def nonnegative(self, layer: Layer, inputs: bool) -> bool:
        return inputs and all(np.all(v >= 0) for v in layer.params.values())

    def compose(self, first: Layer, second: Layer) -> Layer | None:
        """``s₂·(s₁·x + t₁) + t₂ = (s₂s₁)·x + (s₂t₁ + t₂)``."""
        return None if first.op != self.op else \
            replace(second, inputs=list(first.inputs), params=_merged_affine(first, second), origins={})

    def split_scale(self, layer: Layer, scale_first: bool) -> tuple[np.ndarray, Layer | None] | None:
        """``s·x + t = (x ↦ x + t)(s·x)``, and ``= s·(x + t/s)`` for an ``s`` without zeros."""
        s = layer.params.get("scale")
        if s is None or not (scale_first or np.all(s != 0)):
            return None
        if scale_first:
            rest = {k: v for k, v in layer.params.items() if k != "scale"}
        else:
            rest = {"bias": layer.params["bias"] / s} if "bias" in layer.params else {}
        return s, replace(layer, params=rest, origins={}) if rest else None

    def row_params(self, layer: Layer, rows: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        """Row-wise when each parameter is constant along every axis but the last."""
        if not all(v.ndim <= len(layer.shape) and all(d == 1 for d in v.shape[:-1]) for v in layer.params.values()):
            return None
        return {k: v.reshape((1,) * len(rows) + (v.size,)) if v.size > 1 else v.reshape(()) for k, v in layer.params.items()}

    def full_rank(self, layer: Layer) -> Layer:
        """Parameters padded with leading axes of size 1 to the layer's rank (``(C,1,1)`` → ``(1,C,1,1)``)."""
        rank = len(layer.shape)
        params = {k: v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v for k, v in layer.params.items()}
        return replace(layer, params=params)

    def map_axis(self, layer: Layer) -> str:
        return ANY

    def lifts_to_identity(self, layer: Layer) -> bool:
        """No parameter left (both folded into the layer before it): ``|1|**q ⊙ x + 0``."""
        return not layer.params

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        x = xs[0]
        kept = self._kept_exponent(b, layer, x, q) if b.static else None
        if kept is not None:  # no multiplication: |s|**q = 2**j folded into the exponent, exactly
            x = Scaled(x.tensor, kept)
        elif b.static and "scale" in layer.params:  # |s|**q · 2**(k_x − k_out), entry by entry
            shift = compact(exp_diff(x.log2, b.target))
            x = Scaled(b.op("Mul", [x.tensor, b.const(scaled_power(layer.params["scale"], q, shift), "absScale")], "scale"), b.target)
        elif "scale" in layer.params:
            s, es = pow_scaled(layer.params["scale"], q)
            x = b.shift(replace(x, tensor=b.op("Mul", [x.tensor, b.const(s, "absScale")], "scale"), bound=x.bound + 1.0), es)
        if "bias" not in layer.params or not np.any(layer.params["bias"]):
            return x  # a zero bias starts no path (and must not drag the scale towards 2**0)
        return b.add_bias(x, lifted_log2(layer.params["bias"], q), len(layer.shape), kept)

    @staticmethod
    def _kept_exponent(b: LiftBuilder, layer: Layer, x: Scaled, q: float) -> Exponent | None:
        """Static scales: when every ``|s|**q`` is a power of two ``2**j`` (or 0, or there is no scale,
        as for the flips of an imported Clip: s = −1), the output's exponent map ``k_x + j`` holds the
        product exactly with no operation; kept where it stays near the layer's target, else None."""
        j = 0.0
        if "scale" in layer.params:
            j = lifted_log2(layer.params["scale"], q)
            finite = j[np.isfinite(j)]
            if not np.array_equal(finite, np.round(finite)):
                return None
        k = compact(np.add(np.asarray(x.log2, dtype=np.float64), j), layer.shape)
        return k if b.near_target(k) else None

    def bound(self, layer, bs, shapes, q):
        with np.errstate(divide="ignore"):
            lu = bs[0]
            if "scale" in layer.params:
                lu = lu + q * np.log2(np.abs(layer.params["scale"]))
            if "bias" in layer.params:
                lu = np.logaddexp2(lu, q * np.log2(np.abs(layer.params["bias"])))
        return lu

    def adjoint(self, b, layer, xs, g, in_shapes):
        y = g
        if "scale" in layer.params:
            sm, es = pow_scaled(layer.params["scale"], 1.0)
            y = b.shift(replace(g, tensor=b.op("Mul", [g.tensor, b.const(sm, "absScale")], "adj")), es)
        return [replace(y, tensor=unbroadcast(b, y.tensor, layer.shape, in_shapes[0]))], {}

    def split_params(self, a: Layer, b: Layer):
        """Missing parameters are the identity's: scale 1, bias 0."""
        lo, hi_linear, diff = {}, {}, {}
        if "scale" in a.params or "scale" in b.params:
            sa, sb = (np.abs(layer.params.get("scale", np.ones(()))) for layer in (a, b))
            lo["scale"], hi_linear["scale"] = np.minimum(sa, sb), np.maximum(sa, sb)
            diff["scale"] = hi_linear["scale"] - lo["scale"]
        else:
            diff["scale"] = np.zeros(())  # the diff layer acts on biases only
        if "bias" in a.params or "bias" in b.params:
            ta, tb = (np.abs(layer.params.get("bias", np.zeros(()))) for layer in (a, b))
            lo["bias"], diff["bias"] = np.minimum(ta, tb), np.abs(ta - tb)
        return lo, hi_linear, diff

    def without_bias(self, layer: Layer) -> Layer:
        return replace(layer, params={k: v for k, v in layer.params.items() if k != "bias"})

    def linf_gain(self, layer: Layer) -> float:
        if "scale" not in layer.params:
            return 0.0
        top = float(np.max(np.abs(layer.params["scale"])))
        return math.log2(top) if top > 0 else -math.inf

    def exact(self, run, layer, xs, in_shapes, feeds):
        """``x + q·log2|scale|`` (the scale's error and the addition's rounding added), then the bias."""
        y, err = xs[0]
        if "scale" in layer.params:
            s, es = run.weight(layer.params["scale"])
            with np.errstate(invalid="ignore"):
                y = y + s  # -inf + finite: -inf; a zero scale on a zero input: -inf + -inf
            err += es + max_abs(y) * 2.0**-52
        return biased(run, layer, y, err, "bias")


def _merged_affine(first: Layer, second: Layer) -> dict[str, np.ndarray]:
    """The parameters of ``second ∘ first`` (both affine)."""
    s1, s2 = first.params.get("scale"), second.params.get("scale")
    t1, t2 = first.params.get("bias"), second.params.get("bias")
    params = {}
    if s1 is not None or s2 is not None:
        params["scale"] = s1 * s2 if s1 is not None and s2 is not None else s1 if s1 is not None else s2
    if t1 is not None or t2 is not None:
        scaled = None if t1 is None else (t1 * s2 if s2 is not None else t1)
        params["bias"] = scaled + t2 if scaled is not None and t2 is not None else scaled if scaled is not None else t2
    return params


@layer_op
class Sum(ParameterFree, OneLipschitz):
    """``y = Σ sign_i · x_i`` over activations (residual connections)."""

    op = "sum"
    kind = "skip"
    full_maps = False

    def is_identity(self, layer: Layer, in_shape: tuple[int, ...]) -> bool:
        """A sum of one input of sign +1 (that broadcasts nothing)."""
        return len(layer.inputs) == 1 and layer.attrs["signs"][0] > 0 and tuple(layer.shape) == tuple(in_shape)

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        y = xs[0] if layer.attrs["signs"][0] > 0 else b.op("Neg", [xs[0]], "neg")
        for x, sign in zip(xs[1:], layer.attrs["signs"][1:]):
            y = b.op("Add" if sign > 0 else "Sub", [y, x], "sum")
        return y

    def nonnegative(self, layer: Layer, inputs: bool) -> bool:
        return inputs and all(s > 0 for s in layer.attrs.get("signs", [1] * len(layer.inputs)))

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        tensors, k = b.align(xs)
        y = tensors[0]
        for t in tensors[1:]:
            y = b.op("Add", [y, t], "sum")
        return Scaled(y, k, max(x.bound for x in xs) + math.log2(len(xs)))

    def bound(self, layer, bs, shapes, q):
        lu = bs[0]
        for other in bs[1:]:
            lu = np.logaddexp2(lu, other)
        return lu

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [replace(g, tensor=unbroadcast(b, g.tensor, layer.shape, shape)) for shape in in_shapes], {}

    def map_axis(self, layer: Layer) -> str:
        return ANY

    def rounding_ops(self, layer, in_shapes) -> int:
        return len(in_shapes) + 3

    def linf_combine(self, ins: list[float]) -> float:
        """``‖Σ ±x_i‖_∞ ≤ Σ ‖x_i‖_∞``: the branches' bounds add."""
        return float(np.logaddexp2.reduce(ins))

    def exact(self, run, layer, xs, in_shapes, feeds):
        """``log2 Σ_j 2**x_j`` (every input broadcast to the output), one ``logaddexp2`` per input."""
        err = max(e for _, e in xs)
        y, local = np.broadcast_to(xs[0][0], layer.shape), 0.0
        for v, _ in xs[1:]:
            y, e = run.add(y, v)
            local += e
        return np.broadcast_to(y, layer.shape), err + local


@channel_rule("Add", "Sum", operands="any", adds=True)
def elementwise_channels(b: ChannelBuilder, node, xs: list[Layout]) -> None:
    """Activations are joined channel by channel (a residual skip: channel ``c`` of every operand feeds
    channel ``c`` of the sum), also where one broadcasts over the others on every axis but the channel
    axis (a squeeze-excitation gate ``(N, C, 1, 1)`` scaling ``x (N, C, H, W)``: channel ``c`` of the
    gate scales channel ``c`` of ``x`` only, so the gate's convs are sliced with the channels they
    scale); a constant operand is sliced along the channel axis where it has one entry per channel,
    ignored where it broadcasts (size 1); one of another size pins the channels. Activations that
    broadcast on the channel axis are not sliced."""
    acts = [i for i in node.input if i and not b.is_const(i)]
    out_shape = b.shape(node.output[0])
    x = xs[0]
    if not all(_channelwise(b, i, x, out_shape) for i in acts):
        return b.opaque(node, f"{b.label(node)} broadcasts activations across channels")
    out = b.same(node, x)
    for layout in xs[1:]:
        b.join(b.slots(x), b.slots(layout))
    for name in (i for i in node.input if i and b.is_const(i)):
        value = b.consts[name]
        axis = x.axis - (len(out_shape) - value.ndim)
        if axis < 0 or value.shape[axis] == 1:
            continue
        if value.shape[axis] != x.n * x.block:
            return b.pin(out, f"{b.label(node)}: constant {name!r} does not broadcast per channel")
        if b.owned_or_pin([name], [out], node):
            b.entry(out, "slice", name, axis, x.block)


channel_rule("Sub", "Mul", "Div", "Max", "Min", operands="any")(elementwise_channels)


def _channelwise(b: ChannelBuilder, name: str, x: Layout, out_shape: tuple[int, ...]) -> bool:
    """Whether activation ``name`` has ``x``'s channels and the output's shape, or (unflattened) the
    output's rank and channel count with size 1 on every axis where it differs (broadcast per channel)."""
    layout, shape = b.layouts[name], b.shape(name)
    if (layout.axis, layout.block, layout.n) != (x.axis, x.block, x.n):
        return False
    return shape == out_shape or (x.block == 1 and len(shape) == len(out_shape) and shape[x.axis] == out_shape[x.axis]
                                  and all(d in (1, o) for d, o in zip(shape, out_shape)))
channel_rule("Pow", operands="first")(elementwise_channels)  # x ** constant (GELU's tanh form: x ** 3)


@spec_rule("Add", "Sub", "Mul", "Div")
def legacy_broadcast_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """Before opset 7: equal shapes, or ``broadcast=1`` with B laid along ``axis`` of A. Only the
    trailing alignment (numpy's, which the import uses) is accepted; another axis is refused."""
    a, b = operand(node, 0, shapes), operand(node, 1, shapes)
    if opset >= 7 or a is None or b is None or a == b:
        return None
    attrs = attributes(node, opset)
    if not attrs.get("broadcast"):
        return f"operands of shapes {a} and {b} differ and broadcast is not set (opset < 7)"
    if attrs.get("axis", len(a) - len(b)) % max(len(a), 1) != len(a) - len(b):
        raise UnsupportedModelError([Refusal(node.name or node.output[0], node.op_type, f"opset < 7 broadcast of {b} "
                                             f"along axis {attrs['axis']} of {a} (only trailing alignment is supported)")])
    return None


@imports("Add", "Sub", "Sum")
def import_add(node, ctx: ImportContext) -> None:
    sign = [1.0] + [(-1.0 if node.op_type == "Sub" else 1.0)] * (len(node.input) - 1)
    acts = [(n, s) for n, s in zip(node.input, sign) if n and ctx.const(n) is None]
    consts = [(k, s) for k, (n, s) in enumerate(zip(node.input, sign)) if n and ctx.const(n) is not None]
    bias = None
    for k, s in consts:
        bias = s * ctx.param(node, k, "constant term") + (0.0 if bias is None else bias)
    out = ctx.shape(node.output[0])
    if len(acts) == 1:
        x, s = acts[0]
        origins = {"bias": (node.input[consts[0][0]], False)} if len(consts) == 1 and s > 0 else {}
        ctx.add(node, "affine", [ctx.act(x)], out, _params(-1.0 if s < 0 else None, bias), origins=origins)
        return
    layers = [ctx.act(n) for n, _ in acts]
    if bias is None:
        ctx.add(node, "sum", layers, out, attrs={"signs": [s for _, s in acts]})
        return
    total = ctx.add(node, "sum", layers, out, attrs={"signs": [s for _, s in acts]}, suffix="/sum")
    ctx.add(node, "affine", [total], out, _params(None, bias))


@imports("Mul", "Div")
def import_mul(node, ctx: ImportContext) -> None:
    a, c = ctx.const(node.input[0]), ctx.const(node.input[1])
    if a is None and c is None:
        raise RefuseNode(f"{node.op_type} of two activations is not positively homogeneous of degree 1")
    if node.op_type == "Div" and c is None:
        raise RefuseNode("dividing a constant by an activation is not piecewise-linear")
    k, x = (1, node.input[0]) if c is not None else (0, node.input[1])
    value = ctx.param(node, k, "constant factor")
    if node.op_type == "Div":
        if np.any(value == 0):
            raise RefuseNode("division by a constant that contains zeros")
        value = 1.0 / value
    ctx.add(node, "affine", [ctx.act(x)], ctx.shape(node.output[0]), _params(value, None))


@imports("Neg")
def import_neg(node, ctx: ImportContext) -> None:
    """``-x``: an edge of weight -1 per neuron (tf2onnx writes Keras' PReLU as ``relu(x) - α·relu(-x)``)."""
    ctx.add(node, "affine", [ctx.act(node.input[0])], ctx.shape(node.output[0]), _params(-1.0, None))


def _params(scale, bias) -> dict[str, np.ndarray]:
    params = {}
    if scale is not None:
        params["scale"] = np.asarray(scale, dtype=np.float64)
    if bias is not None:
        params["bias"] = np.asarray(bias, dtype=np.float64)
    return params
