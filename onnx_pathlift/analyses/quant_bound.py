"""Certified effect of activation quantization (QuantizeLinear→DequantizeLinear on activations).

For a model with quantizers at points k = 1..K (topological order) and its float twin F (the same
network, each quantizer replaced by what the float architecture has there: the identity, or the ReLU
a quantizer folded in), for every input with ‖x‖_∞ ≤ R (proof in docs/metrics.md):

    ‖B(x) − F(x)‖_1 ≤ Σ_v b(v)·ε(v),

v over the quantized neurons, b(v) the backward mass of v in F's bias-free lifted network (Σ over
paths from v to the outputs of Π|w|) and ε(v) a bound on |Q(u_v) − g(u_v)| over the box: s/2 inside
the quantizer's range, the distance to the range past it, with |u_v| bounded by the lifted forward
mass of v in F cut after every quantizer (inputs fed R, each cut fed its range's largest magnitude)
and u_v ≥ 0 where a sign analysis proves it. ``Σ_v b(v)·ε(v)`` is the lifted output of the bias-free
F with input mass 0 and bias ε(v) added at v: two lifted passes in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend.norm import LiftedSession, combine_runs
from ..frontend.names import LayerNames, describe
from ..graph.numeric import log10_sum, log10_value
from ..ir.dag import ActivationQuantizer, Dag
from ..ops import LAYER_OPS
from ..rewrite.transforms import CUT, MASS, bypassed, cut_at, injected, with_params_of, without_biases
from .metric import Names, pair_layers

#: relative margin on lifted float32 masses (sums of non-negative terms, rounded to nearest)
MARGIN = 1e-3


@dataclass
class ActivationBound:
    """``Σ_v b(v)·ε(v)`` as log10 (None when refused, with ``reason``), per quantization point."""

    term_log10: float | None
    reason: str | None = None
    points: list[dict] = field(default_factory=list)

    @property
    def term(self) -> float | None:
        return None if self.term_log10 is None else log10_value(self.term_log10)


@dataclass(frozen=True)
class _Point:
    layer: str  # the float network's layer whose output the quantizer replaces
    relu: bool  # the float network has relu(u) there (the quantizer folded a ReLU), else u
    q: ActivationQuantizer


def _points(quantized: Dag, ref: Dag, pairs: dict[str, str], names: LayerNames | None) -> list[_Point] | str:
    """Where each quantizer of ``quantized`` sits in the float network of ``ref``'s architecture
    (``pairs``: ref layer → quantized layer), or why it cannot be placed (``names``: ref's layer names)."""
    inv = {b: a for a, b in pairs.items()}
    points: list[_Point] = []
    for q in quantized.quantizers:
        if not q.undone or not np.all(np.isfinite(q.scale)) or np.any(q.scale <= 0):
            return f"quantizer {q.node!r} is not undone by its DequantizeLinear (or has a non-positive scale)"
        shape = quantized.layer(q.input_layer).shape
        if any(v.size > 1 and (v.ndim != 1 or not -len(shape) <= q.axis < len(shape) or v.size != shape[q.axis])
               for v in (q.scale, q.zero_point)):
            return f"quantizer {q.node!r} has a scale or zero point that does not fit its tensor"
        if q.output_layer != q.input_layer and q.output_layer in inv:
            point = _Point(inv[q.output_layer], True, q)
            if not LAYER_OPS[ref.layer(point.layer).op].folds_into_quantizer:
                return f"quantizer {q.node!r} folds a ReLU the float architecture does not have there"
        elif q.input_layer in inv:
            point = _Point(inv[q.input_layer], False, q)
        else:
            return f"quantizer {q.node!r} has no counterpart in the float architecture"
        if any(p.layer == point.layer for p in points):
            return f"two quantizers act on {describe(ref.layer(point.layer), names)}"
        points.append(point)
    return points


def _magnitudes(float_net: Dag, points: list[_Point], r: float, providers) -> dict[str, np.ndarray]:
    """Per point, a bound M on |u| over the box in the quantized network: the lifted forward mass of
    u when the graph is cut after every quantizer (a quantized value satisfies |Q(u)| ≤ max(|lo|, |hi|)
    of its range, fed as the mass of a new input) and the inputs are fed r."""
    limit = {}
    for p in points:
        shape = float_net.layer(p.layer).shape
        s, zp = _on_layer(p.q.scale, p.q, shape), _on_layer(p.q.zero_point, p.q, shape)
        limit[p.layer] = np.maximum(np.abs((p.q.q_min - zp) * s), np.abs((p.q.q_max - zp) * s))
    out = {p.layer: np.full(float_net.layer(p.layer).shape, float(r)) for p in points
           if not float_net.layer(p.layer).inputs}  # graph inputs
    cut = cut_at(float_net, set(limit))
    if not cut.outputs:
        return out
    feeds = {n: (limit[n[:-len(CUT)]] if n.endswith(CUT) else np.full(cut.layer(n).shape, float(r))).astype(np.float32)
             for n in cut.inputs}
    runs = LiftedSession([(cut, 1.0)], providers, per_sample=False, feeds=feeds).runs()[0]
    for o in runs[0].outputs:  # each run's bound is certified (norm.JobRun.neuron_upper): keep the smallest
        out[o[len(MASS):]] = np.minimum.reduce([run.neuron_upper(o) for run in runs]) * (1 + MARGIN)
    return out


def _on_layer(v: np.ndarray, q: ActivationQuantizer, shape: tuple[int, ...]) -> np.ndarray:
    """A per-tensor or per-axis quantizer parameter, broadcast to the layer's shape."""
    if v.ndim == 0 or v.size == 1:
        return np.full(shape, float(v.reshape(-1)[0]))
    view = [1] * len(shape)
    view[q.axis % len(shape)] = v.size
    return np.broadcast_to(v.reshape(view), shape).astype(np.float64)


def _nonnegative(dag: Dag, points: list[_Point]) -> set[str]:
    """Layers whose output is ≥ 0 for every input, in the float network and in the quantized one
    (a quantizer is monotone with Q(0) = 0, so it keeps u ≥ 0; a folded ReLU makes it so)."""
    pos: set[str] = {p.layer for p in points if p.relu}
    for layer in dag.layers():
        if LAYER_OPS[layer.op].nonnegative(layer, all(i in pos for i in layer.inputs) and bool(layer.inputs)):
            pos.add(layer.name)
    return pos


def epsilon(point: _Point, mass: np.ndarray, nonneg: bool, shape: tuple[int, ...]) -> np.ndarray:
    """Bound on |Q(u) − g(u)| for |u| ≤ mass (and u ≥ 0 when ``nonneg``); g = relu or the identity."""
    q = point.q
    s = _on_layer(q.scale, q, shape)
    zp = _on_layer(q.zero_point, q, shape)
    lo, hi = (q.q_min - zp) * s, (q.q_max - zp) * s
    low = np.zeros(shape) if nonneg or point.relu else -mass
    eps = np.maximum(s / 2, mass - hi)
    if not point.relu:
        eps = np.maximum(eps, lo - low)
    # float32: u/s rounded before round(), (q − z)·s rounded after
    return eps * (1 + 2.0**-16) + 2.0**-20 * (mass + np.abs(lo) + np.abs(hi))


def activation_bound(quantized: Dag, ref: Dag, pairs: dict[str, str], float_net: Dag, r: float,
                     providers=None, names: LayerNames | None = None) -> ActivationBound:
    """``Σ_v b(v)·ε(v)`` bounding ‖quantized(x) − float_net(x)‖_1 on ‖x‖_∞ ≤ r, where ``float_net``
    has ``ref``'s architecture (``pairs``: ref layer → quantized layer); each point's ``layer``: the
    layer of ``ref`` whose output it quantizes, by ``names`` (ref's layer names; None: DAG names)."""
    if not quantized.quantizers:
        return ActivationBound(-math.inf)
    points = _points(quantized, ref, pairs, names)
    if isinstance(points, str):
        return ActivationBound(None, points)
    masses = _magnitudes(float_net, points, r, providers)
    nonneg = _nonnegative(float_net, points)
    eps, rows = {}, []
    for p in points:
        layer = float_net.layer(p.layer)
        eps[p.layer] = epsilon(p, masses[p.layer], p.layer in nonneg, layer.shape)
        named = names.of_dag(p.layer) if names is not None else None
        rows.append({"node": p.q.node, "layer": named.layer if named else p.layer, "folded_relu": p.relu,
                     "nonnegative": p.layer in nonneg, "scale_max": float(np.max(p.q.scale)), "epsilon_max": float(eps[p.layer].max()),
                     "clipping": bool(np.any(eps[p.layer] > _on_layer(p.q.scale, p.q, layer.shape) * 0.51))})
    margin = math.log10(1 + MARGIN)
    logs = backward_sums(float_net, [eps] + [{p.layer: eps[p.layer]} for p in points], providers)
    for row, v in zip(rows, logs[1:]):  # each point's part Σ_(v∈k) b(v)·ε(v); they add up to the total
        row["term"] = log10_value(v + margin)
    return ActivationBound(logs[0] + margin, None, rows)


def backward_sum(dag: Dag, eps: dict[str, np.ndarray], providers=None) -> float:
    """log10 of ``Σ_v b(v)·eps(v)`` over the neurons of the layers in ``eps`` (arrays ≥ 0 of their
    shapes), b(v) the backward mass of v in ``dag``'s bias-free lifted network: the lifted output of
    that network with input mass 0 and ``eps`` added as biases after those layers."""
    return backward_sums(dag, [eps], providers)[0]


def backward_sums(dag: Dag, eps_list: list[dict[str, np.ndarray]], providers=None) -> list[float]:
    """:func:`backward_sum` of several injections, one bundled pass."""
    bare = without_biases(dag)
    zeros = {n: np.zeros(bare.layer(n).shape, np.float32) for n in bare.inputs}  # paths start at the injections only
    session = LiftedSession([(injected(bare, eps), 1.0) for eps in eps_list], providers, per_sample=False, feeds=zeros)
    return [combine_runs(1.0, job).upper_log10 for job in session.runs()]  # certified: rounded outward


@dataclass
class Certificate:
    """The total certificate ``‖A(x) − B(x)‖_1 ≤ weight term + activation term`` on ‖x‖_∞ ≤ r, for
    the models as shipped: weight term ``max(r, 1)·d`` (B's weights in A's float architecture), activation
    term the sum of both models' :func:`activation_bound` (0 without activation quantization)."""

    weight_log10: float
    activation: ActivationBound
    r: float
    quantized_points: int

    @property
    def total(self) -> float | None:
        weight, act = log10_value(self.weight_log10), self.activation.term
        return None if weight is None or act is None else weight + act

    def to_dict(self) -> dict:
        return {"bound": self.total, "weight_term": log10_value(self.weight_log10), "activation_term": self.activation.term,
                "input_linf": self.r, "activation": {"quantized_points": self.quantized_points,
                                                     "certified": self.activation.term is not None,
                                                     "reason": self.activation.reason, "points": self.activation.points}}


def _stepped_over(dag: Dag, paired: set[str], names: LayerNames | None) -> tuple[set[str], str | None]:
    """The ReLUs of ``dag`` that pairing stepped over, and why that is not sound when one of them is
    not a quantizer's folded ReLU (then the two architectures really differ; ``names``: dag's layer names)."""
    stepped = {layer.name for layer in dag.layers() if LAYER_OPS[layer.op].folds_into_quantizer and layer.name not in paired}
    folding = [q for q in dag.quantizers if q.output_layer != q.input_layer]
    # a ReLU the quantizer folds, or a ReLU right before it (relu then a clip at 0: one ReLU)
    folded = {q.output_layer for q in folding} | {q.input_layer for q in folding if LAYER_OPS[dag.layer(q.input_layer).op].folds_into_quantizer}
    extra = sorted(stepped - folded)
    return stepped, (f"{describe(dag.layer(extra[0]), names)} is in one model only and is not a quantizer's ReLU"
                     if extra else None)


def certify(dag_a: Dag, dag_b: Dag, weight_log10: float, r: float, providers=None,
            pairs: dict[str, str] | None = None, names: Names = (None, None)) -> Certificate:
    """Weight term ``weight_log10`` (log10 of ``max(r, 1)·d``) plus both models' activation terms.

    The float architecture F is A's without the ReLUs that only A's quantizers fold in (the lifted
    networks, hence d, do not see ReLUs); each model as shipped is F with its weights and its
    quantizers in place of F's identity or ReLU at those points. ``pairs``: the layer pairing of the
    two DAGs (:func:`~onnx_pathlift.analyses.metric.pair_layers`), computed here when None; ``names``: the
    layer names of A and B (:mod:`onnx_pathlift.frontend.names`) its points and reasons name layers by."""
    pairs = pair_layers(dag_a, dag_b, names) if pairs is None else pairs
    stepped_a, why_a = _stepped_over(dag_a, set(pairs), names[0])
    _, why_b = _stepped_over(dag_b, set(pairs.values()), names[1])
    n = len(dag_a.quantizers) + len(dag_b.quantizers)
    if why_a or why_b:
        return Certificate(weight_log10, ActivationBound(None, why_a or why_b), r, n)
    ref = bypassed(dag_a, stepped_a)
    on_ref = {k: v for k, v in pairs.items() if k not in stepped_a}
    same = {k: k for k in on_ref}
    parts = [activation_bound(dag_b, ref, on_ref, with_params_of(ref, dag_b, on_ref), r, providers, names[0]),
             activation_bound(dag_a, ref, same, with_params_of(ref, dag_a, same), r, providers, names[0])]
    reason = next((p.reason for p in parts if p.term_log10 is None), None)
    if reason is not None:
        return Certificate(weight_log10, ActivationBound(None, reason), r, n)
    total = log10_sum([p.term_log10 for p in parts])
    return Certificate(weight_log10, ActivationBound(total, None, parts[0].points + parts[1].points), r, n)
