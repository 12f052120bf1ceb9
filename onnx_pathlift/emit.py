"""DAG → ONNX: the re-emitted network (signed weights, real activations) and the lifted network.

The lifted network of ``q`` has the source's inputs; fed with all-ones tensors, each analysed output
``o`` comes back as a tensor ``T_o`` and a scalar ``o__log2_scale`` = ``k_o`` such that the lifted
output is ``T_o · 2**k_o``, and ``‖Φ(θ)‖_q**q = Σ_o Σ T_o · 2**k_o`` (notes §2-3).
"""

from __future__ import annotations

import math
from dataclasses import replace

from onnx import ModelProto, NodeProto, helper

from .dag import Dag, Layer
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

    def clean(name: str) -> Scaled:
        """The lifted value of layer ``name``, renormalised if it is not yet (once, shared)."""
        if value[name].dirty:
            value[name] = b.normalize(value[name], len(dag.layer(name).shape))
        return value[name]

    for layer in _fold_scales(dag):
        if layer.op == "input":
            value[layer.name] = Scaled(layer.name, zero, 0.0)
            continue
        handler = LAYER_OPS[layer.op]
        xs = [value[i] if handler.accepts_dirty else clean(i) for i in layer.inputs]
        y = handler.lift(b, layer, xs, q)
        value[layer.name] = b.normalize(y, len(layer.shape)) if y.bound > HEADROOM_LOG2 else y
    for lname in set(dag.outputs.values()):
        clean(lname)
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


def _fold_scales(dag: Dag) -> list[Layer]:
    """The layers in order, with each affine scale that directly follows a conv or dense layer (its
    only consumer) folded into that layer's weights, for the lifted network only (exact there)."""
    layers = list(dag.layers())
    consumers: dict[str, int] = {}
    for layer in layers:
        for name in layer.inputs:
            consumers[name] = consumers.get(name, 0) + 1
    index = {layer.name: i for i, layer in enumerate(layers)}
    for i, layer in enumerate(layers):
        if layer.op != "affine" or "scale" not in layer.params:
            continue
        src = layers[index[layer.inputs[0]]]
        if src.op not in LAYER_OPS or consumers.get(src.name) != 1 or src.name in dag.outputs.values():
            continue
        folded = LAYER_OPS[src.op].absorb_scale(src, layer.params["scale"])
        if folded is not None:
            layers[index[src.name]] = folded
            layers[i] = replace(layer, params={k: v for k, v in layer.params.items() if k != "scale"})
    return layers


def _identity(src: str, dst: str) -> NodeProto:
    return helper.make_node("Identity", [src], [dst], name=dst)
