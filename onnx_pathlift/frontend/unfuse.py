"""onnxruntime's fused contrib ops, written back as the standard ops they fuse, before anything else sees
the graph: each fused op declares its rule in ``ops/`` (``ops/fused.py``: ``com.microsoft`` ``FusedConv`` and
``FusedGemm``; :data:`~onnx_pathlift.ops.registry.UNFUSERS`), so shape inference, folding and the import
rules see ordinary ONNX.
"""

from __future__ import annotations

from onnx import NodeProto

from ..errors import InvalidModelError
from ..ops.registry import UNFUSERS


def standard_nodes(nodes: list[NodeProto], opset: int) -> list[NodeProto]:
    """The nodes with every fused op that declares an unfusing rule replaced by its standard ops."""
    out: list[NodeProto] = []
    for node in nodes:
        rule = UNFUSERS.get((node.domain, node.op_type))
        if rule is not None:
            if len(node.output) != 1:
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) has {len(node.output)} outputs, expected 1")
            try:
                out += rule(node, opset)
            except (TypeError, ValueError, IndexError) as exc:  # mistyped attributes (activation not a string, ...)
                raise InvalidModelError(f"node {node.name!r} ({node.op_type}) has invalid attributes: {exc}") from None
        else:
            out.append(node)
    return out
