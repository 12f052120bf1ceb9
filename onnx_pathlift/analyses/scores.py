"""Path-magnitude scores: ``score_i = |θ_i| · ∂‖Φ‖_1/∂|θ_i| = ‖Φ(θ)‖_1 − ‖Φ(θ with θ_i = 0)‖_1``.

``‖Φ‖_1`` is multilinear in ``|θ|`` (a path uses a parameter at most once), so every score comes from
one forward pass of the lifted network (forward masses ``a``) and one backward pass of its transpose
(backward masses ``g``: sums over paths from a neuron to the outputs): for an edge ``u → v``,
``|w|·a_u·g_v``, summed over the positions that share a conv kernel weight. Both passes are one
emitted ONNX graph (each op's ``adjoint``), run by onnxruntime, with the run-time power-of-two scales
of the lifted network; scores come back as fractions of ``‖Φ‖_1`` in float64, whatever the size of
``‖Φ‖_1``. Limit: masses are float32 with one scale per tensor, so a score below about ``2**-126``
of the largest score of its tensor is rounded, or flushed to 0 (it then ties with zero weights).
Scores are rescaling-invariant; magnitudes are not.

A weight tensor used by several layers is not scored: ``‖Φ‖_1`` is not multilinear in a shared
parameter (a path may use it twice), so the sum of per-use scores is not its drop when zeroed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend.emit import LOG2_SUFFIX, emit_opset, identity_node, lift_forward, settled
from ..backend.norm import combine
from ..backend.runtime import make_session
from ..backend.samples import one_sample
from ..fileio.load import ModelSource
from ..frontend.names import LayerNames, named_dag
from ..graph.builder import BuiltModel, LiftBuilder, Scaled
from ..graph.exponents import lift_run
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require


@dataclass
class Scores:
    """Per weight tensor (keyed by its ONNX initializer name, in the initializer's layout):
    ``fraction`` = score / ‖Φ‖_1, float64; ``log10_norm`` = log10 ‖Φ‖_1."""

    fraction: dict[str, np.ndarray]
    log10_norm: float
    layers: dict[str, str]  # initializer -> its layer (:mod:`onnx_pathlift.frontend.names`; a DAG's own: its DAG layer)
    skipped: dict[str, str] = field(default_factory=dict)  # initializer -> why it has no score

    def summary(self) -> list[dict]:
        """Per weight tensor: its share of ‖Φ‖_1 and quantiles of the per-weight fractions (min and max
        exact, the others from the fractions rounded to float32: :func:`_quantiles`)."""
        rows = []
        for name, f in self.fraction.items():
            q = [float(f.min()), *_quantiles(f, (0.5, 0.9, 0.99)), float(f.max())] if f.size else [0.0] * 5
            rows.append({"initializer": name, "layer": self.layers[name], "size": int(f.size),
                         "share": float(f.sum()), "zeros": int(np.count_nonzero(f == 0)),
                         "quantiles": dict(zip(["min", "median", "p90", "p99", "max"], map(float, q)))})
        return rows


def _quantiles(f: np.ndarray, ps: tuple[float, ...]) -> list[float]:
    """numpy's linear quantiles of ``f`` rounded to float32, from one float32 copy sorted in place
    (``np.quantile`` would flatten a float64 copy and partition it at several ranks, which numpy does
    without SIMD: on 10⁸ weights a float32 sort costs a third of that partition, 0.5 s against 1.4 s)."""
    x = (f.T if f.flags.f_contiguous else f).astype(np.float32).reshape(-1)  # the one copy, in memory order
    x.sort()
    out = []
    for p in ps:
        h = (x.size - 1) * p
        lo = math.floor(h)
        a, b = float(x[lo]), float(x[min(lo + 1, x.size - 1)])
        out.append(a + (h - lo) * (b - a))
    return out


def scores_model(dag: Dag) -> tuple[BuiltModel, list[tuple[str, str, bool]]]:
    """The forward + adjoint graph. Outputs: each analysed output (and its exponent) and, per scored
    layer ``(layer, output, transposed)``, ``<layer>__score`` (in the layout of the layer's W, or of
    Wᵀ when ``transposed``) with ``<layer>__score__log2_scale``."""
    require(dag, "scores")
    with lift_run():  # the forward lift and the adjoint share one powers memo
        return _scores_model(dag)


def _scores_model(dag: Dag) -> tuple[BuiltModel, list[tuple[str, str, bool]]]:
    b = LiftBuilder(emit_opset(dag), taken=set(dag.inputs) | set(dag.outputs) | {o + LOG2_SUFFIX for o in dag.outputs})
    lifted = lift_forward(dag, 1.0, b)
    layers, value = lifted.layers, lifted.value
    shapes = {layer.name: layer.shape for layer in layers}

    def clean(name: str) -> Scaled:
        return settled(b, value, name, len(shapes[name]))

    grads: dict[str, list[Scaled]] = {}
    for lname in dag.outputs.values():  # the output neurons' backward mass is 1
        grads.setdefault(lname, []).append(Scaled(b.const(np.ones(shapes[lname]), "ones"), b.scalar(0.0)))
    scored: list[tuple[str, str, bool]] = []
    outputs: list[tuple[str, tuple[int, ...] | None]] = []
    for layer in reversed(layers):
        if layer.name not in grads:
            continue
        tensors, k = b.align(grads.pop(layer.name))
        g = tensors[0]
        for t in tensors[1:]:
            g = b.op("Add", [g, t], "grad")
        g = Scaled(g, k) if LAYER_OPS[layer.op].adjoint_moves else b.normalize(Scaled(g, k), len(layer.shape))
        xs = [clean(i) for i in layer.inputs]
        g_in, scores = LAYER_OPS[layer.op].adjoint(b, layer, xs, g, [shapes[i] for i in layer.inputs])
        for name, gi in zip(layer.inputs, g_in):
            if dag.layer(name).inputs:  # a graph input passes no mass further back
                grads.setdefault(name, []).append(gi)
        if LAYER_OPS[layer.op].scored:
            transposed = "W" not in scores  # "W^T": the score of W in the layout of Wᵀ
            s = scores["W^T" if transposed else "W"]
            out = b.fresh(layer.name + "__score")
            b.nodes.append(identity_node(s.tensor, out))
            b.nodes.append(identity_node(s.log2, out + LOG2_SUFFIX))
            shape = layer.params["W"].shape
            outputs += [(out, shape[::-1] if transposed else shape), (out + LOG2_SUFFIX, None)]
            scored.append((layer.name, out, transposed))
    for out, lname in dag.outputs.items():
        b.nodes.append(identity_node(value[lname].tensor, out))
        b.nodes.append(identity_node(value[lname].log2, out + LOG2_SUFFIX))
        outputs = [(out, dag.layer(lname).shape), (out + LOG2_SUFFIX, None)] + outputs
    return b.build([(n, dag.layer(n).shape) for n in dag.inputs], outputs, "path_magnitude_scores",
                   "onnx-pathlift forward + adjoint graph of the lifted network (q = 1): path-magnitude scores"), scored


def _to_initializer_layout(layer: Layer, score: np.ndarray) -> tuple[str, np.ndarray]:
    name, transposed = layer.origins.get("W", (layer.name, False))
    return name, (score.T if transposed else score)


def path_magnitude(model: ModelSource | Dag, input_shape=None, providers=None, names: LayerNames | None = None) -> Scores:
    """Path-magnitude scores of every Conv/Gemm/MatMul weight, as fractions of ‖Φ‖_1; ``layers`` names each
    tensor's layer as every command does (:mod:`onnx_pathlift.frontend.names`): a file's by its layer names,
    a DAG's by ``names`` (None: by DAG name)."""
    dag, naming = named_dag(model, input_shape, names)
    # N independent samples: every path, and so every score, counts N times; fractions are unchanged
    dag, copies = one_sample(dag)
    proto, scored = scores_model(dag)
    session = make_session(proto, providers, rewrites="none")
    feeds = {n: np.ones(dag.layer(n).shape, np.float32) for n in dag.inputs}
    names = [o.name for o in session.get_outputs()]
    res = dict(zip(names, session.run(None, feeds)))
    norm = combine(1.0, {o: (res[o], float(res[o + LOG2_SUFFIX])) for o in dag.outputs})
    log2_norm = norm.log10 / math.log10(2.0)
    fraction: dict[str, np.ndarray] = {}
    layers: dict[str, str] = {}
    uses: dict[str, int] = {}
    for lname, _, _ in scored:
        name = dag.layer(lname).origins.get("W", (lname, False))[0]
        uses[name] = uses.get(name, 0) + 1
    skipped = {n: f"used by {k} layers: a shared parameter's score is not the sum of its uses' scores"
               for n, k in uses.items() if k > 1}
    for lname, out, transposed in scored:
        shift = float(res[out + LOG2_SUFFIX]) - log2_norm
        t = res.pop(out)  # the float32 scores, freed as their fractions are made
        if math.isfinite(shift):
            f = t.astype(np.float64)
            f *= np.exp2(shift)  # in place: the same rounding as one float64 product, without a mixed-type loop
        else:
            f = np.zeros(t.shape)
        name, f = _to_initializer_layout(dag.layer(lname), f.T if transposed else f)
        if name not in skipped:
            named = naming.of_dag(lname) if naming is not None else None
            fraction[name], layers[name] = f, named.layer if named else lname
    return Scores(fraction, norm.log10 + math.log10(copies), layers, skipped)


def magnitude(dag: Dag) -> dict[str, np.ndarray]:
    """Plain magnitude scores ``|θ_i|`` of the same weights (not rescaling-invariant), as the DAG
    holds them (a Gemm's ``alpha`` included)."""
    out: dict[str, np.ndarray] = {}
    for layer in dag.layers():
        if LAYER_OPS[layer.op].scored:
            name, w = _to_initializer_layout(layer, np.abs(layer.params["W"]))
            out[name] = w
    return out
