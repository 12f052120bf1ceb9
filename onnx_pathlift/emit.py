"""DAG → ONNX: the re-emitted network (signed weights, real activations) and the lifted network.

The lifted network of ``q`` has the source's inputs; fed with all-ones tensors, each analysed output
``o`` comes back as a tensor ``T_o`` and a scalar ``o__log2_scale`` = ``k_o`` such that the lifted
output is ``T_o · 2**k_o``, and ``‖Φ(θ)‖_q**q = Σ_o Σ T_o · 2**k_o`` (notes §2-3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from onnx import ModelProto, NodeProto, helper

from .dag import Dag, Layer
from .errors import UsageError
from .graph import HEADROOM_LOG2, GraphBuilder, LiftBuilder, Scaled
from .ops import LAYER_OPS

#: the emitted models use at least this opset (Max/Min/Sum broadcasting, MaxPool ceil_mode)
MIN_OPSET = 13
LOG2_SUFFIX = "__log2_scale"
HEALTH = "pathlift__health"
#: static scales are trusted when every checked tensor keeps max T ≥ 2**-HEALTH_MIN_LOG2
HEALTH_MIN_LOG2 = 40
_CHECKED = {"linear", "conv", "pool", "skip"}  # where a value can fall below its static bound
_CHECK_PASSES = {"affine", "activation", "reshape"}  # no loss against the bound: check after them


def emit_opset(dag: Dag) -> int:
    return max(dag.opset, MIN_OPSET)


def emit_model(dag: Dag) -> ModelProto:
    """The DAG as an ordinary ONNX model: original signed weights and real activations."""
    b = GraphBuilder(emit_opset(dag), taken=set(dag.inputs) | set(dag.outputs))
    value = emit_layers(dag, b)
    for out, lname in dag.outputs.items():
        b.nodes.append(identity_node(value[lname], out))
    return b.model(
        [(n, dag.layer(n).shape) for n in dag.inputs],
        [(o, dag.layer(name).shape) for o, name in dag.outputs.items()],
        "reemitted",
        "onnx-pathlift re-emission of the imported DAG (signed weights, real activations)",
    )


def emit_layers(dag: Dag, b: GraphBuilder) -> dict[str, str]:
    """Emit every layer as itself on ``b``; returns the tensor name of each layer's output."""
    value: dict[str, str] = {}
    for layer in dag.layers():
        if layer.op == "input":
            value[layer.name] = layer.name
        else:
            value[layer.name] = LAYER_OPS[layer.op].emit(b, layer, [value[i] for i in layer.inputs])
    return value


def lift_model(dag: Dag, q: float, static: bool = True) -> ModelProto:
    """The lifted |W|**q network, kept in float32 range by exact power-of-two scales.

    ``static=True``: constant scales from static upper bounds, folded by onnxruntime into the layers
    (as fast as a plain inference), plus the output ``pathlift__health`` (``max T`` of every checked
    tensor); if its minimum is below ``2**-HEALTH_MIN_LOG2`` use ``static=False``, the run-time
    renormalised graph, which is always in range.
    """
    return lift_bundle([(dag, q)], static)


def bundle_tag(i: int, n: int) -> str:
    """Prefix of job ``i``'s output names in a bundle of ``n`` lifted networks ("" for one)."""
    return "" if n == 1 else f"job{i}__"


def lift_bundle(jobs: Sequence[tuple[Dag, float]], static: bool = True) -> ModelProto:
    """Several lifted networks in one model (one session, one run): ``(dag, q)`` jobs whose DAGs share
    their inputs (names and shapes), e.g. one network at q = 1, 2, 4 and its bias-free variant. Job
    ``i``'s outputs are those of :func:`lift_model` prefixed with :func:`bundle_tag`."""
    for _, q in jobs:
        if not (math.isfinite(q) and q >= 1.0):
            raise UsageError(f"q must be a finite number ≥ 1 (got {q})")
    first = jobs[0][0]
    if any(dag.input_shapes() != first.input_shapes() for dag, _ in jobs):
        raise ValueError("the lifted networks of a bundle must share their inputs")
    tags = [bundle_tag(i, len(jobs)) for i in range(len(jobs))]
    outs = {HEALTH} | {t + HEALTH for t in tags}
    for (dag, _), tag in zip(jobs, tags):
        outs |= {tag + o for o in dag.outputs} | {tag + o + LOG2_SUFFIX for o in dag.outputs}
    b = LiftBuilder(emit_opset(first), taken=set(first.inputs) | outs, static=static)
    outputs: list[tuple[str, tuple[int, ...] | None]] = []
    for (dag, q), tag in zip(jobs, tags):
        b.health = []
        _, value = lift_forward(dag, q, b)
        for out, lname in dag.outputs.items():
            log2 = value[lname].log2
            b.nodes.append(identity_node(value[lname].tensor, tag + out))
            b.nodes.append(identity_node(b.exponent(log2) if isinstance(log2, int) else log2, tag + out + LOG2_SUFFIX))
            outputs += [(tag + out, dag.layer(lname).shape), (tag + out + LOG2_SUFFIX, None)]
        if static:
            health = b.op("Concat", b.health, "health", axis=0) if b.health else b.const(np.ones(1), "health")
            b.nodes.append(identity_node(health, tag + HEALTH))
            outputs.append((tag + HEALTH, (len(b.health) or 1,)))
    qs = ", ".join(f"{q:g}" for _, q in jobs)
    doc = (
        f"onnx-pathlift lifted network, q={qs}, {'static' if static else 'dynamic'} scales. Feed all-ones "
        f"inputs; then ||Phi||_q^q = sum over outputs o of sum(o) * 2**o{LOG2_SUFFIX}"
        + (f", valid when min({HEALTH}) >= 2**-{HEALTH_MIN_LOG2}." if static else ".")
    )
    return b.model([(n, first.layer(n).shape) for n in first.inputs], outputs, f"lifted_q{qs.replace(', ', '_')}", doc)


def lift_forward(dag: Dag, q: float, b: LiftBuilder) -> tuple[list[Layer], dict[str, Scaled]]:
    """Emit the lifted forward pass on ``b``; returns the (scale-folded) layers and every layer's
    lifted value. The analysed outputs are renormalised (dynamic) and health-checked (static)."""
    static = b.static
    value: dict[str, Scaled] = {}
    bounds: dict[str, np.ndarray] = {}
    exact: dict[str, bool] = {}  # whether bounds[name] is the exact lifted value (then no check)
    shapes = {layer.name: layer.shape for layer in dag.layers()}

    def clean(name: str) -> Scaled:
        """The lifted value of layer ``name``, renormalised if it is not yet (once, shared)."""
        if value[name].dirty:
            value[name] = b.normalize(value[name], len(shapes[name]))
        return value[name]

    pending: set[str] = set()  # static mode: tensors whose health check is still to be emitted

    def checked(name: str) -> Scaled:
        if name in pending:
            pending.discard(name)
            b.check(value[name], len(shapes[name]))
        return value[name]

    layers = _fold_scales(dag)
    for layer in layers:
        if layer.op == "input":
            value[layer.name] = Scaled(layer.name, 0 if static else b.scalar(0.0), 0.0)
            bounds[layer.name], exact[layer.name] = np.zeros(()), True  # fed with ones
            continue
        handler = LAYER_OPS[layer.op]
        passes_check_on = static and handler.kind in _CHECK_PASSES  # ratio to the bound cannot shrink here
        if static and not passes_check_on:
            for i in layer.inputs:
                checked(i)
        xs = [value[i] if handler.accepts_dirty or static else clean(i) for i in layer.inputs]
        target = None
        if static:
            bs, in_shapes = [bounds[i] for i in layer.inputs], [shapes[i] for i in layer.inputs]
            bounds[layer.name] = handler.bound(layer, bs, in_shapes, q)
            exact[layer.name] = all(exact[i] for i in layer.inputs) and handler.bound_is_exact(layer, bs, in_shapes)
            top = float(np.max(bounds[layer.name]))
            target = math.ceil(top) if math.isfinite(top) else 0
        b.begin(target)
        y = handler.lift(b, layer, xs, q)
        if static:
            y = b.settle(y, target)
            if (handler.kind in _CHECKED or (passes_check_on and pending & set(layer.inputs))) and not exact[layer.name]:
                pending.add(layer.name)  # checked where it is consumed, so that the producer's ops can fuse
        elif y.bound > HEADROOM_LOG2:
            y = b.normalize(y, len(layer.shape))
        value[layer.name] = y
    for lname in set(dag.outputs.values()):
        clean(lname)
        if static:
            checked(lname)
    return layers, value


def _fold_scales(dag: Dag) -> list[Layer]:
    """The layers in order, with each affine scale that directly follows a conv or dense layer (its
    only consumer) folded into that layer's weights, then each following bias into that layer, for
    the lifted network only (exact there: a scale multiplies |w|**q, a bias starts its own paths)."""
    layers = list(dag.layers())
    consumers: dict[str, int] = {}
    for layer in layers:
        for name in layer.inputs:
            consumers[name] = consumers.get(name, 0) + 1
    index = {layer.name: i for i, layer in enumerate(layers)}

    def fold(key: str) -> None:
        """Fold parameter ``key`` of each affine layer into the conv/dense layer feeding only it."""
        for i, layer in enumerate(layers):
            if layer.op != "affine" or key not in layer.params or (key == "bias" and "scale" in layer.params):
                continue
            src = layers[index[layer.inputs[0]]]
            if src.op not in LAYER_OPS or consumers.get(src.name) != 1 or src.name in dag.outputs.values():
                continue
            handler = LAYER_OPS[src.op]
            folded = (handler.absorb_scale if key == "scale" else handler.absorb_bias)(src, layer.params[key])
            if folded is not None:
                layers[index[src.name]] = folded
                layers[i] = replace(layer, params={k: v for k, v in layer.params.items() if k != key})

    fold("scale")
    fold("bias")  # after the scales: a bias right after them becomes the layer's own bias
    return layers


def identity_node(src: str, dst: str) -> NodeProto:
    return helper.make_node("Identity", [src], [dst], name=dst)


def describe_lifted(model: ModelProto, dag: Dag, q: float, static: bool, source_sha256: str | None = None) -> ModelProto:
    """Record in ``model.metadata_props`` what a lifted model is: q, its scales, the source file's
    sha256 when known, the analysed outputs with their exponent outputs, and how to read them."""
    import json

    from . import __version__

    read = (f"feed all-ones inputs; ||Phi||_q^q = sum over outputs o of sum(o * 2**o{LOG2_SUFFIX}) (the exponent "
            "broadcasts to o)")
    props = {"onnx_pathlift.version": __version__, "onnx_pathlift.q": f"{q:g}",
             "onnx_pathlift.scales": "static" if static else "dynamic", "onnx_pathlift.how_to_read": read,
             "onnx_pathlift.outputs": json.dumps([[o, o + LOG2_SUFFIX] for o in dag.outputs])}
    if source_sha256:
        props["onnx_pathlift.source_sha256"] = source_sha256
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})
    return model
