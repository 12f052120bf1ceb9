"""ReLU, and the piecewise-linear activations imported through their exact DAG-ReLU forms.

ReLU lifted: identity (lifted values are ≥ 0, and a path's weight ignores activations).

The others become small DAGs of ReLU, affine and sum layers (notes §2), so every analysis applies:

* LeakyRelu / PRelu with slope α: ``α·x + (1 − α)·relu(x)``; lifted ``(|α|^q + |1 − α|^q)·x``.
* Clip(a, b) (ReLU6 = Clip(0, 6)): ``b − relu((b − a) − relu(x − a))``, one chain (lifted
  ``x + |a|^q + |b − a|^q + |b|^q``). The other form, ``relu(x) − relu(x − c)``, doubles every
  path and gives 2^L blow-ups over L layers; a one-sided Clip is ``a + relu(x − a)`` or
  ``b − relu(b − x)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import RefuseNode
from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..ir.dag import Layer
from .arithmetic import elementwise_channels
from .channel_api import per_channel
from .context import ImportContext, attributes, broadcasts_to, operand
from .layer_op import ANY, OneLipschitz, ParameterFree
from .registry import channel_rule, graph_role, imports, layer_op, pass_range, spec_rule


@layer_op
class Relu(ParameterFree, OneLipschitz):
    op = "relu"
    kind = "activation"
    accepts_dirty = True
    adjoint_moves = True  # the lifted ReLU is the identity
    full_maps = False
    rescale_role = "per_channel"  # relu(λx) = λ·relu(x) for λ > 0
    folds_into_quantizer = True  # a quantizer whose range starts at 0 clips like a ReLU

    def row_params(self, layer: Layer, rows: tuple[int, ...]) -> dict[str, np.ndarray]:
        """Elementwise: it acts on every row alike."""
        return dict(layer.params)

    def nonnegative(self, layer: Layer, inputs: bool) -> bool:
        return True

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("Relu", xs, "relu")

    def lifts_to_identity(self, layer: Layer) -> bool:
        return True

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        return xs[0]

    def bound(self, layer, bs, shapes, q):
        return bs[0]

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [g], {}

    def map_axis(self, layer: Layer) -> str:
        return ANY

    def exact(self, run, layer, xs, in_shapes, feeds):
        """The identity on the lifted network."""
        return xs[0]


channel_rule("Relu", "LeakyRelu", "Clip")(per_channel)  # commute with slicing channels
graph_role("relu", "Relu")
#: elementwise unary ops (scalar attributes only): output channel c is f(input channel c), so slicing
#: channels commutes with them; not ReLU networks (path-norms refuse them), but a channel is still a channel
UNARY = ("Sigmoid", "HardSigmoid", "Tanh", "Erf", "HardSwish", "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish",
         "Gelu", "ThresholdedRelu", "Exp", "Log", "Neg", "Abs", "Sqrt", "Reciprocal", "Sign", "Floor", "Ceil", "Round",
         "Sin", "Cos")
channel_rule(*UNARY)(per_channel)


@pass_range("Relu")
def relu_range(node, consts: dict[str, np.ndarray], opset: int) -> tuple[float, float]:
    """ReLU passes ``z`` for ``0 < z``."""
    return 0.0, math.inf


@pass_range("Clip")
def clip_range(node, consts: dict[str, np.ndarray], opset: int) -> tuple[float, float]:
    """Clip passes ``z`` for ``min < z < max`` (attributes before opset 11, constant inputs 1 and 2
    after; absent: ∓∞)."""
    a = attributes(node, opset)
    lo, hi = a.get("min", -math.inf), a.get("max", math.inf)
    for k, default in ((1, -math.inf), (2, math.inf)):
        if len(node.input) > k:
            value = consts.get(node.input[k]) if node.input[k] else None
            bound = default if value is None else float(np.asarray(value).reshape(()))
            lo, hi = (bound, hi) if k == 1 else (lo, bound)
    return float(lo), float(hi)
channel_rule("PRelu", operands="first")(elementwise_channels)  # its per-channel slope is sliced with them


@imports("Relu")
def import_relu(node, ctx: ImportContext) -> None:
    ctx.add(node, "relu", [ctx.act(node.input[0])], ctx.shape(node.output[0]))


def _affine(ctx: ImportContext, node, x: str, scale: float | np.ndarray | None, bias: float | None, suffix: str) -> str:
    params = {}
    if scale is not None:
        params["scale"] = np.asarray(scale, dtype=np.float64)
    if bias is not None and bias != 0:
        params["bias"] = np.asarray(bias, dtype=np.float64)
    return ctx.add(node, "affine", [x], ctx.shape(node.output[0]), params, suffix=suffix)


@spec_rule("PRelu")
def prelu_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """The slope broadcasts to the input (one way)."""
    x, slope = operand(node, 0, shapes), operand(node, 1, shapes)
    if x is not None and slope is not None and not broadcasts_to(slope, x):
        return f"its slope of shape {slope} does not broadcast to its input {x}"
    return None


@imports("LeakyRelu", "PRelu")
def import_leaky(node, ctx: ImportContext) -> None:
    """``α·x + (1 − α)·relu(x)``: two paths per neuron, weights α and 1 − α."""
    if node.op_type == "LeakyRelu":
        alpha = np.asarray(float(ctx.attrs(node)["alpha"]))
    else:
        alpha = ctx.param(node, 1, "slope")
    x = ctx.act(node.input[0])
    shape = ctx.shape(node.output[0])
    r = ctx.add(node, "relu", [x], shape, suffix="/relu")
    linear = _affine(ctx, node, x, alpha, None, "/alpha_x")
    positive = _affine(ctx, node, r, 1.0 - alpha, None, "/relu_part")
    ctx.add(node, "sum", [linear, positive], shape, attrs={"signs": [1, 1]})


def _clip_bounds(node, ctx: ImportContext) -> tuple[float | None, float | None]:
    if ctx.prepared.opset < 11:
        a = ctx.attrs(node)
        lo, hi = a.get("min"), a.get("max")
    else:
        lo = float(ctx.param(node, 1, "minimum")) if len(node.input) > 1 and node.input[1] else None
        hi = float(ctx.param(node, 2, "maximum")) if len(node.input) > 2 and node.input[2] else None
    lo = None if lo is None or lo <= -3.0e38 else float(lo)
    hi = None if hi is None or hi >= 3.0e38 else float(hi)
    return lo, hi


@spec_rule("Clip")
def clip_spec(node, consts: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], opset: int) -> str | None:
    """``min`` and ``max`` inputs (opset ≥ 11) are scalars."""
    for i, what in ((1, "min"), (2, "max")):
        if operand(node, i, shapes) not in (None, ()):
            return f"its {what} {node.input[i]!r} has shape {shapes[node.input[i]]}, not a scalar"
    return None


@imports("Clip")
def import_clip(node, ctx: ImportContext) -> None:
    """``b − relu((b − a) − relu(x − a))`` (one chain); one-sided: ``a + relu(x − a)``, ``b − relu(b − x)``."""
    lo, hi = _clip_bounds(node, ctx)
    if lo is not None and hi is not None and hi < lo:
        raise RefuseNode(f"min {lo} > max {hi}")
    x = ctx.act(node.input[0])
    shape = ctx.shape(node.output[0])
    if lo is None and hi is None:
        ctx.alias(node.output[0], x)
        return
    if hi is None:  # a + relu(x − a)
        r = ctx.add(node, "relu", [_affine(ctx, node, x, None, -lo, "/shift")], shape, suffix="/relu")
        _affine(ctx, node, r, None, lo, "")
        return
    inner = x if lo is None else ctx.add(node, "relu", [_affine(ctx, node, x, None, -lo, "/shift")], shape, suffix="/relu_lo")
    span = hi if lo is None else hi - lo  # b − x  or  (b − a) − relu(x − a)
    r = ctx.add(node, "relu", [_affine(ctx, node, inner, -1.0, span, "/flip")], shape, suffix="/relu_hi")
    _affine(ctx, node, r, -1.0, hi, "")
