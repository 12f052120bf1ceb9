"""QuantizeLinear → DequantizeLinear on activations (QDQ models).

Quantized *weights* (DequantizeLinear of a constant) are folded to float parameters by the loader.
A Q→DQ pair on an activation rounds and clips it to ``[(q_min − zp)·s, (q_max − zp)·s]``; that is
not a weight change, so the theorem does not cover it. The pair is imported as the identity, or as a
ReLU when its range starts at exactly 0 (``zp = q_min``: quantizers fold a preceding ReLU into the
clipping this way), counted in ``Dag.activation_qdq``, and reports say it is not certified.
"""

from __future__ import annotations

import numpy as np

from ..errors import RefuseNode
from .base import ImportContext, imports


def clips_at_zero(zero_point: np.ndarray | None) -> bool:
    """Whether a QuantizeLinear with this zero point maps every negative value to 0 (a ReLU)."""
    if zero_point is None:  # default zero point: uint8 0
        return True
    return bool(np.all(zero_point == np.iinfo(zero_point.dtype).min)) if zero_point.dtype.kind in "iu" else False


@imports("QuantizeLinear", "DequantizeLinear")
def import_qdq(node, ctx: ImportContext) -> None:
    if node.op_type == "QuantizeLinear":
        consumers = [n for n in ctx.prepared.nodes if node.output[0] in n.input]
        if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers):
            raise RefuseNode("a quantized activation that is not dequantized right away (integer arithmetic)")
        ctx.dag.activation_qdq += 1
        if ctx.dag.activation_qdq == 1:
            ctx.dag.notes.append("QuantizeLinear→DequantizeLinear on activations imported as identity (or ReLU "
                                 "where the range starts at 0): activation quantization is not certified")
        zero_point = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if clips_at_zero(zero_point):
            ctx.add(node, "relu", [ctx.act(node.input[0])], ctx.shape(node.output[0]))
            return
    ctx.alias(node.output[0], ctx.act(node.input[0]))
