"""QuantizeLinear → DequantizeLinear on activations (QDQ models): treated as identity.

Quantized *weights* (DequantizeLinear of a constant) are folded to float parameters by the loader.
A Q→DQ pair on an activation rounds and clips it; that is not a weight change, so the theorem does
not cover it: the pair is imported as the identity, counted in ``Dag.activation_qdq``, and the
reports say the activation quantization is not certified.
"""

from __future__ import annotations

from ..errors import RefuseNode
from .base import ImportContext, imports


@imports("QuantizeLinear", "DequantizeLinear")
def import_qdq(node, ctx: ImportContext) -> None:
    if node.op_type == "QuantizeLinear":
        consumers = [n for n in ctx.prepared.nodes if node.output[0] in n.input]
        if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers):
            raise RefuseNode("a quantized activation that is not dequantized right away (integer arithmetic)")
        ctx.dag.activation_qdq += 1
        if ctx.dag.activation_qdq == 1:
            ctx.dag.notes.append("QuantizeLinear→DequantizeLinear on activations imported as identity: "
                                 "activation quantization is not covered by the theory (not certified)")
    ctx.alias(node.output[0], ctx.act(node.input[0]))
