"""ReLU. Lifted: identity (all lifted values are already ≥ 0, and a path's weight ignores activations)."""

from __future__ import annotations

from ..dag import Layer
from ..graph import GraphBuilder, LiftBuilder, Scaled
from .base import ImportContext, LayerOp, imports, layer_op


@layer_op
class Relu(LayerOp):
    op = "relu"
    kind = "activation"
    accepts_dirty = True

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return b.op("Relu", xs, "relu")

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        return xs[0]

    def bound(self, layer, bs, shapes, q):
        return bs[0]

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [g], {}

    def bound_is_exact(self, layer, bs, shapes) -> bool:
        return True


@imports("Relu")
def import_relu(node, ctx: ImportContext) -> None:
    ctx.add(node, "relu", [ctx.act(node.input[0])], ctx.shape(node.output[0]))
