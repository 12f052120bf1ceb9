"""DAG → ONNX: the re-emitted network (signed weights, real activations) and the lifted network.

The lifted network of ``q`` has the source's inputs; fed with all-ones tensors, each analysed output
``o`` comes back as a tensor ``T_o`` and a scalar ``o__log2_scale`` = ``k_o`` such that the lifted
output is ``T_o · 2**k_o``, and ``‖Φ(θ)‖_q**q = Σ_o Σ T_o · 2**k_o`` (notes §2-3).
"""

from __future__ import annotations

import math

from onnx import ModelProto, NodeProto, helper

from .dag import Dag
from .errors import UsageError
from .graph import HEADROOM_LOG2, GraphBuilder, LiftBuilder, Scaled
from .ops import LAYER_OPS

#: the emitted models use at least this opset (Max/Min/Sum broadcasting, MaxPool ceil_mode)
MIN_OPSET = 13
LOG2_SUFFIX = "__log2_scale"


def _opset(dag: Dag) -> int:
    return max(dag.opset, MIN_OPSET)


def emit_model(dag: Dag) -> ModelProto:
    """The DAG as an ordinary ONNX model: original signed weights and real activations."""
    b = GraphBuilder(_opset(dag), taken=set(dag.inputs) | set(dag.outputs))
    value: dict[str, str] = {}
    for layer in dag.layers():
        if layer.op == "input":
            value[layer.name] = layer.name
        else:
            value[layer.name] = LAYER_OPS[layer.op].emit(b, layer, [value[i] for i in layer.inputs])
    for out, lname in dag.outputs.items():
        b.nodes.append(_identity(value[lname], out))
    return b.model(
        [(n, dag.layer(n).shape) for n in dag.inputs],
        [(o, dag.layer(l).shape) for o, l in dag.outputs.items()],
        "reemitted",
        "onnx-pathlift re-emission of the imported DAG (signed weights, real activations)",
    )


def lift_model(dag: Dag, q: float) -> ModelProto:
    """The lifted |W|**q network, kept in float32 range by exact power-of-two scales."""
    if not (math.isfinite(q) and q >= 1.0):
        raise UsageError(f"q must be a finite number ≥ 1 (got {q})")
    outs = set(dag.outputs) | {o + LOG2_SUFFIX for o in dag.outputs}
    b = LiftBuilder(_opset(dag), taken=set(dag.inputs) | outs)
    zero = b.scalar(0.0)
    value: dict[str, Scaled] = {}
    for layer in dag.layers():
        if layer.op == "input":
            value[layer.name] = Scaled(layer.name, zero, 0.0)
            continue
        y = LAYER_OPS[layer.op].lift(b, layer, [value[i] for i in layer.inputs], q)
        value[layer.name] = b.normalize(y) if y.bound > HEADROOM_LOG2 else y
    for out, lname in dag.outputs.items():
        b.nodes.append(_identity(value[lname].tensor, out))
        b.nodes.append(_identity(value[lname].log2, out + LOG2_SUFFIX))
    outputs: list[tuple[str, tuple[int, ...] | None]] = []
    for o, l in dag.outputs.items():
        outputs += [(o, dag.layer(l).shape), (o + LOG2_SUFFIX, None)]
    doc = (
        f"onnx-pathlift lifted network, q={q:g}. Feed all-ones inputs; then "
        f"||Phi||_q^q = sum over outputs o of sum(o) * 2**o{LOG2_SUFFIX}."
    )
    return b.model([(n, dag.layer(n).shape) for n in dag.inputs], outputs, f"lifted_q{q:g}", doc)


def _identity(src: str, dst: str) -> NodeProto:
    return helper.make_node("Identity", [src], [dst], name=dst)
