"""DAG → ONNX: the re-emitted network (signed weights, real activations) and the lifted network.

The lifted network of ``q`` has the source's inputs; fed with all-ones tensors, each analysed output
``o`` comes back as a tensor ``T_o`` and a scalar ``o__log2_scale`` = ``k_o`` such that the lifted
output is ``T_o · 2**k_o``, and ``‖Φ(θ)‖_q**q = Σ_o Σ T_o · 2**k_o`` (notes §2-3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from onnx import ModelProto, NodeProto, helper

from ..errors import UsageError
from ..graph.budget import Budget
from ..graph.builder import HEADROOM_LOG2, SETTLE_LOG2, BuiltModel, GraphBuilder, LiftBuilder, Scaled
from ..graph.exponents import compact, lift_run
from ..graph.numeric import log2_sum_scaled
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require
from ..ops.layer_op import ANY

#: the emitted models use at least this opset (Max/Min/Sum broadcasting, MaxPool ceil_mode)
MIN_OPSET = 13
LOG2_SUFFIX = "__log2_scale"


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
        value[layer.name] = LAYER_OPS[layer.op].emit(b, layer, [value[i] for i in layer.inputs])
    return value


def lift_model(dag: Dag, q: float, static: bool = True) -> ModelProto:
    """The lifted |W|**q network, kept in float32 range by exact power-of-two scales.

    ``static=True``: exponents fixed at build time from static upper bounds, one per output channel
    or neuron where a layer's weights can absorb them (as fast as a plain inference); the exponent
    outputs are then constants, possibly maps broadcastable to their outputs. ``static=False``: the
    run-time renormalised graph, one scalar exponent per tensor.
    """
    return lifted_bundle([(dag, q)], static)[0].standalone()


def bundle_tag(i: int, n: int) -> str:
    """Prefix of job ``i``'s output names in a bundle of ``n`` lifted networks ("" for one)."""
    return "" if n == 1 else f"job{i}__"


def lifted_bundle(jobs: Sequence[tuple[Dag, float]], static: bool = True,
                  input_log2: dict[str, float] | None = None) -> tuple[BuiltModel, list[Budget]]:
    """Several lifted networks in one model (one session, one run): ``(dag, q)`` jobs whose DAGs share
    their inputs (names and shapes), e.g. one network at q = 1, 2, 4 and its bias-free variant. Job
    ``i``'s outputs are those of :func:`lift_model` prefixed with :func:`bundle_tag`; each job's
    error :class:`~onnx_pathlift.graph.budget.Budget` comes with the model. ``input_log2``: ``log2`` of the
    largest value fed to an input, where that is not all ones (``-inf``: zeros, the input starts no path)."""
    for dag, q in jobs:
        require(dag, "norm")
        if not (math.isfinite(q) and q >= 1.0):
            raise UsageError(f"q must be a finite number ≥ 1 (got {q})")
    first = jobs[0][0]
    if any(dag.input_shapes() != first.input_shapes() for dag, _ in jobs):
        raise ValueError("the lifted networks of a bundle must share their inputs")
    tags = [bundle_tag(i, len(jobs)) for i in range(len(jobs))]
    outs: set[str] = set()
    for (dag, _), tag in zip(jobs, tags):
        outs |= {tag + o for o in dag.outputs} | {tag + o + LOG2_SUFFIX for o in dag.outputs}
    b = LiftBuilder(emit_opset(first), taken=set(first.inputs) | outs, static=static)
    outputs: list[tuple[str, tuple[int, ...] | None]] = []
    budgets: list[Budget] = []
    folded: dict[int, list[Layer]] = {}  # per DAG, its scale-folded layers: one fold, one set of weights for every q
    for (dag, q), tag in zip(jobs, tags):
        if id(dag) not in folded:
            folded[id(dag)] = _fold_scales(dag)
        lifted = lift_forward(dag, q, b, input_log2, folded=folded[id(dag)])
        budgets.append(lifted.budget)
        for out, lname in dag.outputs.items():
            log2 = lifted.value[lname].log2
            b.nodes.append(identity_node(lifted.value[lname].tensor, tag + out))
            if static:
                k = np.asarray(log2, dtype=np.float64)
                b.nodes.append(identity_node(b.const(k, "k", dtype=np.float64), tag + out + LOG2_SUFFIX))
                outputs += [(tag + out, dag.layer(lname).shape), (tag + out + LOG2_SUFFIX, k.shape)]
            else:
                b.nodes.append(identity_node(log2, tag + out + LOG2_SUFFIX))
                outputs += [(tag + out, dag.layer(lname).shape), (tag + out + LOG2_SUFFIX, None)]
    qs = ", ".join(f"{q:g}" for _, q in jobs)
    doc = (f"onnx-pathlift lifted network, q={qs}, {'static' if static else 'dynamic'} scales. Feed all-ones "
           f"inputs; then ||Phi||_q^q = sum over outputs o of sum(o * 2**o{LOG2_SUFFIX}) (the exponent broadcasts against o).")
    model = b.build([(n, first.layer(n).shape) for n in first.inputs], outputs, f"lifted_q{qs.replace(', ', '_')}", doc,
                    double_outputs={name for name, _ in outputs if name.endswith(LOG2_SUFFIX)} if static else set())
    return model, budgets


@dataclass
class Lifted:
    """The lifted forward pass on a builder: the (scale-folded) layers, every layer's lifted value,
    and the error budget of the static scales."""

    layers: list[Layer]
    value: dict[str, Scaled]
    budget: Budget


def settled(b: LiftBuilder, value: dict[str, Scaled], name: str, rank: int) -> Scaled:
    """The lifted value of layer ``name``, renormalised in ``value`` if it is not yet (once, shared by
    every consumer)."""
    if value[name].dirty:
        value[name] = b.normalize(value[name], rank)
    return value[name]


def lift_forward(dag: Dag, q: float, b: LiftBuilder, input_log2: dict[str, float] | None = None,
                 output_bounds: bool = True, folded: list[Layer] | None = None) -> Lifted:
    """Emit the lifted forward pass on ``b``, one lift run (:func:`~onnx_pathlift.graph.exponents.lift_run`:
    the powers memo it owns). Static mode: each layer's exponent map comes from its static bound
    (:func:`_lift_static`); dynamic mode: tensors are renormalised where needed, and the analysed
    outputs at the end. ``output_bounds=False`` (dynamic mode only): the budget gets no static bound
    on the outputs (``bound_log2``), whose every layer's bound costs a pass over its weights. ``folded``:
    :func:`_fold_scales` of ``dag`` when the caller has it already (a bundle folds each DAG once, whatever
    its q: the folded weights, and the ranges memoised on them, then serve every q)."""
    with lift_run():
        return _lift_forward(dag, q, b, input_log2, output_bounds or b.static, folded)


def _lift_forward(dag: Dag, q: float, b: LiftBuilder, input_log2: dict[str, float] | None,
                  output_bounds: bool, folded: list[Layer] | None) -> Lifted:
    value: dict[str, Scaled] = {}
    bounds: dict[str, np.ndarray] = {}
    rho: dict[str, float] = {}
    budget = Budget()
    layers = [replace(layer, attrs={**layer.attrs, "log2_max": input_log2[layer.name]})  # fed with ones, unless told
              if layer.name in (input_log2 or {}) else layer for layer in (_fold_scales(dag) if folded is None else folded)]
    shapes = {layer.name: layer.shape for layer in layers}  # folding keeps every layer's shape

    def clean(name: str) -> Scaled:
        return settled(b, value, name, len(shapes[name]))

    for layer in layers:
        handler = LAYER_OPS[layer.op]
        in_shapes = [shapes[i] for i in layer.inputs]
        if not layer.inputs:  # a graph input: fed, so exact (nothing rounded, no scale to settle)
            bounds[layer.name] = handler.bound(layer, [], [], q)
            value[layer.name], rho[layer.name] = handler.lift(b, layer, [], q), 0.0
            continue
        if b.static:
            value[layer.name], bounds[layer.name], rho[layer.name] = _lift_static(b, layer, value, bounds, rho, in_shapes, q)
            budget.add(layer.name, layer.inputs, handler.rounding_ops(layer, in_shapes), rho[layer.name])
            continue
        b.begin(None)
        y = handler.lift(b, layer, [value[i] if handler.accepts_dirty else clean(i) for i in layer.inputs], q)
        value[layer.name] = b.normalize(y, len(layer.shape)) if y.bound > HEADROOM_LOG2 else y
        budget.add(layer.name, layer.inputs, handler.rounding_ops(layer, in_shapes) + 4, None)  # + renormalisation
    if not b.static and output_bounds:
        bounds = static_bounds(layers, shapes, q)
    for out, lname in dag.outputs.items():
        if not b.static:
            clean(lname)
        if output_bounds:
            budget.bound_log2[out] = log2_sum_scaled(bounds[lname], shape=shapes[lname])  # log2 Σ 2**bound over the output
    return Lifted(layers, value, budget)


def _lift_static(b: LiftBuilder, layer: Layer, value: dict[str, Scaled], bounds: dict[str, np.ndarray],
                 rho: dict[str, float], in_shapes: list[tuple[int, ...]], q: float) -> tuple[Scaled, np.ndarray, float]:
    """One layer with static exponent maps: its inputs' maps collapsed to what its handler accepts,
    its target ``ceil(bound)``, its lifted value; returns ``(value, bound, ρ)`` (see
    :mod:`onnx_pathlift.graph.budget`: ``ρ`` bounds ``log2(2**k / U)`` over every value the layer computes)."""
    handler = LAYER_OPS[layer.op]
    if handler.lifts_to_identity(layer) and (same := _carried(layer, value, bounds, rho, in_shapes)) is not None:
        return same
    axis = handler.map_axis(layer)
    xs = [value[i] for i in layer.inputs]
    b.begin(None)
    if axis == ANY:
        if handler.full_maps and any(isinstance(x.log2, np.ndarray) for x in xs):  # maps at the inputs' full shapes
            xs = [Scaled(x.tensor, np.broadcast_to(np.asarray(x.log2, dtype=np.float64), s), x.bound, x.dirty)
                  for x, s in zip(xs, in_shapes)]
    else:
        xs = [b.collapse(x, s, axis) for x, s in zip(xs, in_shapes)]
    spread = b.spread
    bound = handler.bound(layer, [bounds[i] for i in layer.inputs], in_shapes, q)
    target = compact(np.ceil(np.asarray(bound, dtype=np.float64)), layer.shape)
    b.begin(target, [(bounds[i], x.log2) for i, x in zip(layer.inputs, xs)])
    y = handler.lift(b, layer, xs, q)
    if (k := compact(y.log2, layer.shape)) is not y.log2:
        y = Scaled(y.tensor, k, y.bound, y.dirty)
    lo, hi = _gap(y.log2, bound)
    r = max(hi, max(rho[i] for i in layer.inputs) + spread)
    if hi > SETTLE_LOG2 or lo < -SETTLE_LOG2:
        y, r = b.settle(y, target), max(r, 1.0)
    return y, bound, r


def _carried(layer: Layer, value: dict[str, Scaled], bounds: dict[str, np.ndarray], rho: dict[str, float],
             in_shapes: list[tuple[int, ...]]) -> tuple[Scaled, np.ndarray, float] | None:
    """A layer whose lifted form is ``y = x`` (:meth:`~onnx_pathlift.ops.LayerOp.lifts_to_identity`), of its
    input's shape: its input's value and bound taken over, and ``ρ = max(hi, ρ_x)`` for the gap ``hi`` of
    ``k − bound``: what the full path of :func:`_lift_static` computes (its bound is the input's; every
    stored exponent map is already compact at that shape; no collapse, so no spread), with no operation
    and no new constant. None where that path runs instead: where it would settle (a gap past
    :data:`SETTLE_LOG2`: only after a clipped settle upstream), and where the map holds a ``-0.0`` (the
    ceiling of a bound in (-1, 0); an affine layer's full path writes it ``+0.0``: the same scale, and
    the lifted model's bytes stay those of the full path)."""
    x, bound = value[layer.inputs[0]], bounds[layer.inputs[0]]
    if tuple(layer.shape) != tuple(in_shapes[0]) or (isinstance(x.log2, np.ndarray) and bool(np.any(np.signbit(x.log2) & (x.log2 == 0)))):
        return None
    lo, hi = _gap(x.log2, bound)
    if hi > SETTLE_LOG2 or lo < -SETTLE_LOG2:
        return None
    return x, bound, max(hi, rho[layer.inputs[0]])


def _gap(k, bound: np.ndarray) -> tuple[float, float]:
    """The least and largest ``k − bound`` over neurons where both are finite (0, 0 if none)."""
    k, bound = np.asarray(k, dtype=np.float64), np.asarray(bound, dtype=np.float64)
    ok = np.isfinite(k) & np.isfinite(bound)  # broadcast to both shapes
    if ok.size and ok.all():  # the common case: no mask, nothing to silence
        d = np.subtract(k, bound)
        return float(d.min()), float(d.max())
    if not ok.any():
        return 0.0, 0.0
    with np.errstate(invalid="ignore"):  # inf − inf where not ok: never read
        d = np.subtract(k, bound)[ok]
    return float(d.min()), float(d.max())


def static_bounds(layers: list[Layer], shapes: dict[str, tuple[int, ...]], q: float) -> dict[str, np.ndarray]:
    """Every layer's static upper bound on ``log2`` of its lifted values (inputs: all ones, or as their
    ``log2_max`` attribute tells)."""
    bounds: dict[str, np.ndarray] = {}
    for layer in layers:
        bounds[layer.name] = LAYER_OPS[layer.op].bound(layer, [bounds[i] for i in layer.inputs],
                                                       [shapes[i] for i in layer.inputs], q)
    return bounds


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
            if not LAYER_OPS[layer.op].folds_into_previous or key not in layer.params or (key == "bias" and "scale" in layer.params):
                continue
            src = layers[index[layer.inputs[0]]]
            if consumers.get(src.name) != 1 or src.name in dag.outputs.values():
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

    from .. import __version__

    read = (f"feed all-ones inputs; ||Phi||_q^q = sum over outputs o of sum(o * 2**o{LOG2_SUFFIX}) (the exponent "
            "broadcasts to o)")
    if math.isinf(q):
        read = (f"feed all-ones inputs; lifted at q = Q = 2**40, ||Phi||_inf = max over outputs o of max((o * "
                f"2**o{LOG2_SUFFIX}) ** (1/Q)) to a relative 1e-9 (compute it in logs: 2**o{LOG2_SUFFIX} overflows)")
    props = {"onnx_pathlift.version": __version__, "onnx_pathlift.q": f"{q:g}",
             "onnx_pathlift.scales": "static" if static else "dynamic", "onnx_pathlift.how_to_read": read,
             "onnx_pathlift.outputs": json.dumps([[o, o + LOG2_SUFFIX] for o in dag.outputs])}
    if source_sha256:
        props["onnx_pathlift.source_sha256"] = source_sha256
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **props})
    return model
