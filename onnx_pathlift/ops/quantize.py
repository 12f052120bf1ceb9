"""QuantizeLinear → DequantizeLinear on activations (QDQ models).

Quantized *weights* (DequantizeLinear of a constant) are folded to float parameters by the loader.
A Q→DQ pair on an activation rounds and clips it to ``[(q_min − zp)·s, (q_max − zp)·s]``; that is
not a weight change, so the theorem does not cover it. The pair is imported as the identity, or as a
ReLU when its range starts at exactly 0 (``zp = q_min``: quantizers fold a preceding ReLU into the
clipping this way), counted in ``Dag.activation_qdq`` and recorded in ``Dag.quantizers`` (scale, zero
point, range), from which :mod:`onnx_pathlift.analyses.quant_bound` bounds its effect on the outputs.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, helper

from ..errors import RefuseNode
from ..ir.dag import ActivationQuantizer
from .context import ImportContext
from .registry import folds, graph_role, head_role, imports


def clips_at_zero(zero_point: np.ndarray | None) -> bool:
    """Whether a QuantizeLinear with this zero point maps every negative value to 0 (a ReLU)."""
    if zero_point is None:  # default zero point: uint8 0
        return True
    return bool(np.all(zero_point == np.iinfo(zero_point.dtype).min)) if zero_point.dtype.kind in "iu" else False


head_role("carrier", "QuantizeLinear", "DequantizeLinear")  # Q→DQ after the final Softmax: onnxruntime's quantize_static
graph_role("quantize", "QuantizeLinear")
graph_role("dequantize", "DequantizeLinear")


@folds("DequantizeLinear")
def _dequantize(node: NodeProto, args: list, shapes: dict, opset: int) -> list[np.ndarray]:
    """DequantizeLinear ``(x − zero_point) · scale``, per tensor or along ``axis`` (quantized weights)."""
    x, scale = args[0].astype(np.float64), args[1].astype(np.float64)
    zero = args[2].astype(np.float64) if len(args) > 2 and args[2] is not None else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        axis = {a.name: helper.get_attribute_value(a) for a in node.attribute}.get("axis", 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return [((x - zero) * scale).astype(args[1].dtype)]


@imports("QuantizeLinear", "DequantizeLinear")
def import_qdq(node, ctx: ImportContext) -> None:
    if node.op_type == "QuantizeLinear":
        consumers = [n for n in ctx.prepared.nodes if node.output[0] in n.input]
        if not consumers or any(c.op_type != "DequantizeLinear" for c in consumers):
            raise RefuseNode("a quantized activation that is not dequantized right away (integer arithmetic)")
        ctx.dag.activation_qdq += 1
        if ctx.dag.activation_qdq == 1:
            ctx.dag.notes.append("QuantizeLinear→DequantizeLinear on activations imported as identity (or ReLU "
                                 "where the range starts at 0); compare bounds their effect separately (its activation term)")
        zero_point = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        source = ctx.act(node.input[0])
        out = source
        if clips_at_zero(zero_point):
            out = ctx.add(node, "relu", [source], ctx.shape(node.output[0]))
        ctx.dag.quantizers.append(_record(node, consumers, ctx, source, out))
        if out != source:
            return
    ctx.alias(node.output[0], ctx.act(node.input[0]))


def _qparams(node, ctx: ImportContext) -> tuple[np.ndarray | None, np.ndarray]:
    """Scale (None if not a constant) and zero point (default uint8 0) of a Q or DQ node."""
    scale = ctx.const(node.input[1]) if len(node.input) > 1 else None
    zp = ctx.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return scale, (np.zeros((), np.uint8) if zp is None else zp)


def _record(node, consumers, ctx: ImportContext, source: str, out: str) -> ActivationQuantizer:
    """The pair's parameters; ``undone`` when every DequantizeLinear reverses this QuantizeLinear (and
    the integer type is the zero point's: no ``output_dtype``, no blocked quantization)."""
    scale, zp = _qparams(node, ctx)
    a = ctx.attrs(node)
    plain = not a.get("output_dtype", 0) and not a.get("block_size", 0)  # opset 21; 0: none
    undone = plain and scale is not None and zp.dtype.kind in "iu" and all(
        np.array_equal(_qparams(c, ctx)[0], scale) and np.array_equal(_qparams(c, ctx)[1], zp)
        and ctx.attrs(c).get("axis", 1) == a.get("axis", 1) for c in consumers)  # axis: opset 13
    info = np.iinfo(zp.dtype) if zp.dtype.kind in "iu" else np.iinfo(np.int8)
    return ActivationQuantizer(node.name or node.output[0], source, out,
                               np.asarray(scale if scale is not None else np.nan, np.float64),
                               np.asarray(zp, np.float64), int(info.min), int(info.max),
                               int(a.get("axis", 1)), bool(undone))
