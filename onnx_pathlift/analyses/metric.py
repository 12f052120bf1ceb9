"""Path-metrics between two models of one architecture, and the certified output-change bound.

For same-sign parameters θ, θ' (θ_i·θ'_i ≥ 0), for every input x (Gonon et al., ICML 2025):
``‖R_θ(x) − R_θ'(x)‖_1 ≤ max(‖x‖_∞, 1) · ‖Φ(θ) − Φ(θ')‖_1``, and

``|‖Φ(θ)‖_1 − ‖Φ(θ')‖_1|  ≤  d(θ, θ')  ≤  ‖Φ(max(|θ|,|θ'|))‖_1 − ‖Φ(min(|θ|,|θ'|))‖_1``,

both sides equal when ``|θ'| ≤ |θ|`` (or ``≥``) coordinatewise. The upper bound is computed without
subtraction by a two-stream network: ``lo`` (weights ``min``) and ``Δ = hi − lo`` with
``Δ_out = f_hi_linear(Δ_in) + f_(hi−lo)(lo_in)``; it is built as an ordinary DAG (the per-op algebra is
each handler's ``split_params``) and lifted like any other, so it runs in one onnxruntime pass.

The bound may go through an intermediate θ'' same-signed with both (flipped coordinates 0):
``d(θ, θ') ≤ d(θ, θ'') + d(θ'', θ')`` and the theorem holds on each leg. With θ'' = sign·min(|θ|, |θ'|)
("via-min") both legs are exact and their sum is never above the direct two-stream bound
(docs/metrics.md), so it is computed for every non-exact pair; with sign changes it is the
certificate ("via-zero" is reported too). The upper bound of a same-sign leg splits exactly over
layers: ``Πhi − Πlo = Σ_k (Π_(j<k) lo_j)(hi_k − lo_k)(Π_(j>k) hi_j)`` along every path, layers in
topological order (:func:`layer_shares`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend.norm import LiftedSession, PathNorm, PathNormSession, combine_runs
from ..errors import UsageError
from ..fileio.load import ModelSource
from ..frontend.names import LayerNames, describe, named_dag
from ..graph.numeric import json_float, log10_sum, log10_value
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS, require
from ..rewrite.canonical import canonical_form
from ..rewrite.transforms import DELTA, two_stream_dag, with_params, without_biases
from .gauge import MIN_LOG, Alignment, align

_LOG10_2 = math.log10(2.0)
#: parameters one onnxruntime session of bundled two-stream networks may hold (a network per leg)
BUNDLE_PARAMS = 4_000_000


class MismatchError(UsageError):
    """The two models do not have the same architecture (layers, shapes, parameter shapes)."""


@dataclass(frozen=True)
class LayerSigns:
    """Coordinates of one layer's parameters with ``θ_i·θ'_i < 0``."""

    layer: str  # A's layer name, ``other`` B's (:mod:`onnx_pathlift.frontend.names`, after :func:`named_signs`)
    other: str
    violations: int
    size: int
    onnx_node: str = ""  # set by :func:`named_signs`, with ``initializer``
    initializer: str | None = None


@dataclass(frozen=True)
class LayerShare:
    """One parameterised layer's exact part of the certified upper bound (log10; ``-inf`` for 0)."""

    layer: str  # its layer name (:mod:`onnx_pathlift.frontend.names`, after :func:`named_shares`)
    op: str
    source: str
    log10: float
    onnx_node: str = ""
    initializer: str | None = None

    def to_dict(self, total_log10: float) -> dict:
        share = 10.0 ** (self.log10 - total_log10) if math.isfinite(total_log10) else 0.0
        return {"layer": self.layer, "onnx_node": self.onnx_node, "initializer": self.initializer, "op": self.op,
                "source": self.source, "value": log10_value(self.log10), "log10": json_float(self.log10), "fraction": share}


@dataclass
class PathMetric:
    """Bounds on ``d(θ, θ') = ‖Φ(θ) − Φ(θ')‖_1`` as log10 (``-inf`` for 0) and values (None past float64).

    ``upper`` is the certified one, the smallest route (``routes``: route name → log10 of its bound;
    ``route``: the one taken): ``direct`` (the two-stream bound, same signs only) or ``via-min`` /
    ``via-zero`` (two same-sign legs); ``shares``: each parameterised layer's exact part of it."""

    lower_log10: float
    upper_log10: float
    norm_a_log10: float
    norm_b_log10: float
    exact: bool
    sign_consistent: bool
    signs: list[LayerSigns] = field(default_factory=list)
    route: str = "direct"
    routes: dict[str, float] = field(default_factory=dict)
    shares: list[LayerShare] = field(default_factory=list)
    estimate_log10: float = math.nan  # the route's computed value (float32 accuracy), before outward rounding
    alignment: dict | None = None  # the gauge alignment of B (:mod:`onnx_pathlift.analyses.gauge`) and whether its routes won

    @property
    def lower(self) -> float | None:
        return log10_value(self.lower_log10)

    @property
    def upper(self) -> float | None:
        return log10_value(self.upper_log10)

    def bound_log10(self, r: float = 1.0) -> float:
        """log10 of the certified ``max(r, 1) · upper`` for inputs with ‖x‖_∞ ≤ r."""
        return math.log10(max(r, 1.0)) + self.upper_log10

    def to_dict(self, r: float = 1.0) -> dict:
        j = json_float
        return {
            "lower": self.lower, "upper": self.upper, "lower_log10": j(self.lower_log10), "upper_log10": j(self.upper_log10),
            "exact": self.exact, "sign_consistent": self.sign_consistent, "route": self.route,
            "routes": {k: log10_value(v) for k, v in self.routes.items()},
            "input_linf": r, "bound": log10_value(self.bound_log10(r)), "bound_log10": j(self.bound_log10(r)),
            "norm_a": log10_value(self.norm_a_log10), "norm_b": log10_value(self.norm_b_log10),
            "norm_a_log10": j(self.norm_a_log10), "norm_b_log10": j(self.norm_b_log10),
            "estimate": log10_value(self.estimate_log10) if not math.isnan(self.estimate_log10) else None,
            "sign_violations": [s.__dict__ for s in self.signs if s.violations],
            "flipped_per_layer": {s.layer: s.violations for s in self.signs},
            "layers": [sh.to_dict(self.estimate_log10) for sh in self.shares],  # parts of the computed value
            "alignment": self.alignment,
        }


#: the layer names of A and B (:func:`~onnx_pathlift.frontend.names.layer_names`; None: DAG names)
Names = tuple[LayerNames | None, LayerNames | None]


def pair_layers(a: Dag, b: Dag, names: Names = (None, None)) -> dict[str, str]:
    """Match the layers of ``b`` to those of ``a`` by graph position (from the outputs back, input
    slot by input slot). When a model quantizes activations, a ReLU present in only one of them is
    stepped over (quantizers fold ReLUs into the activation's clipping range; the certificate is then
    about B's weights in A's float architecture); everything else must match. Raises :class:`MismatchError`
    saying where the architectures differ (naming each model's layers by ``names``)."""
    if len(a.outputs) != len(b.outputs) or len(a.inputs) != len(b.inputs):
        raise MismatchError(f"A has {len(a.inputs)} input(s) and {len(a.outputs)} analysed output(s), "
                            f"B has {len(b.inputs)} and {len(b.outputs)}")
    pairs: dict[str, str] = {}
    quantized = bool(a.activation_qdq or b.activation_qdq)
    stack = list(zip(a.outputs.values(), b.outputs.values()))
    while stack:
        na, nb = stack.pop()
        la, lb = a.layer(na), b.layer(nb)
        while quantized and la.op != lb.op and (_folds(la) or _folds(lb)):
            if _folds(la):
                na, la = la.inputs[0], a.layer(la.inputs[0])
            else:
                nb, lb = lb.inputs[0], b.layer(lb.inputs[0])
        if na in pairs:
            if pairs[na] != nb:
                raise MismatchError(f"A's {describe(la, names[0])} feeds two places whose counterparts in B differ")
            continue
        problems = []
        if la.op != lb.op:
            problems.append(f"{la.op} vs {lb.op}")
        elif la.shape != lb.shape:
            problems.append(f"output shape {la.shape} vs {lb.shape}")
        elif len(la.inputs) != len(lb.inputs):
            problems.append(f"{len(la.inputs)} vs {len(lb.inputs)} inputs")
        elif la.attrs != lb.attrs:
            problems.append(f"attributes {la.attrs} vs {lb.attrs}")
        elif {k: v.shape for k, v in la.params.items()} != {k: v.shape for k, v in lb.params.items()}:
            problems.append(f"parameters {({k: v.shape for k, v in la.params.items()})} vs "
                            f"{({k: v.shape for k, v in lb.params.items()})}")
        if problems:
            raise MismatchError(f"A's {describe(la, names[0])} does not match B's {describe(lb, names[1])}: {problems[0]}")
        pairs[na] = nb
        stack.extend(zip(la.inputs, lb.inputs))
    if [pairs.get(i) for i in a.inputs] != b.inputs:
        raise MismatchError("the graph inputs of A and B are not used in the same positions")
    return pairs


def _folds(layer: Layer) -> bool:
    """Whether a QDQ activation quantizer may have folded ``layer`` into its clipping range (a ReLU)."""
    return LAYER_OPS[layer.op].folds_into_quantizer


def comparable(a: Dag, b: Dag, names: Names = (None, None)) -> tuple[Dag, Dag, dict[str, str], list[str], list[str]]:
    """The DAGs of A and B as compared, their layer pairing, and the rewrites applied to each: none
    when they pair as spelled, else both are brought to the canonical spelling
    (:mod:`onnx_pathlift.rewrite.canonical`: exact rewrites, the certificate is about the canonical parameters)
    and must pair then; the rewrites and a mismatch name the layers by ``names``. Refuses up front a layer
    op that cannot be split into two streams."""
    require(a, "metric")
    require(b, "metric")
    try:
        return a, b, pair_layers(a, b, names), [], []
    except MismatchError:
        (ca, applied_a), (cb, applied_b) = canonical_form(a, names[0]), canonical_form(b, names[1])
        return ca, cb, pair_layers(ca, cb, names), applied_a, applied_b


def sign_report(a: Dag, b: Dag, pairs: dict[str, str]) -> tuple[list[LayerSigns], bool]:
    """Per layer, the parameters of opposite signs; and whether ``|θ'| ≤ |θ|`` or ``≥`` everywhere."""
    signs, le, ge = [], True, True
    for na in (layer.name for layer in a.layers()):
        if na not in pairs:
            continue
        la, lb = a.layer(na), b.layer(pairs[na])
        if not la.params:
            continue
        bad = size = 0
        for k, va in la.params.items():
            vb = lb.params[k]
            bad += int(np.count_nonzero(va * vb < 0))
            size += va.size
            le &= bool(np.all(np.abs(vb) <= np.abs(va)))
            ge &= bool(np.all(np.abs(vb) >= np.abs(va)))
        signs.append(LayerSigns(na, pairs[na], bad, size))
    return signs, le or ge


def input_path_norm(dag: Dag, providers=None):
    """‖Φ_in(θ)‖_1: the L1 path-norm over paths that start at input neurons (biases removed)."""
    return PathNormSession(without_biases(dag), 1.0, providers).run()


def _log10_gap(a: float, b: float) -> float:
    """log10 (10**a − 10**b) when ``a > b``, else ``-inf``, without overflow."""
    if a <= b:
        return -math.inf
    return a + math.log10(-math.expm1((b - a) * math.log(10)))


Leg = tuple[Dag, Dag, dict[str, str]]  # a same-sign pair (θ, θ') and its layer pairing


def _signed(va: np.ndarray, vb: np.ndarray, pick) -> np.ndarray:
    """``s·pick(|θ|, |θ'|)`` with the pair's common sign ``s`` (that of θ, or of θ' where θ is 0)."""
    return np.where(va != 0, np.sign(va), np.sign(vb)) * pick(np.abs(va), np.abs(vb))


def between(a: Dag, b: Dag, pairs: dict[str, str], how: str) -> Dag:
    """An intermediate θ'' same-signed with θ (A) and θ' (B): flipped coordinates are 0, the others
    keep θ (``how="zero"``) or take ``sign·min(|θ|, |θ'|)`` (``how="min"``)."""
    def params(layer: Layer) -> dict[str, np.ndarray]:
        pb = b.layer(pairs[layer.name]).params
        out = {}
        for k, va in layer.params.items():
            keep = va if how == "zero" else _signed(va, pb[k], np.minimum)
            out[k] = np.where(va * pb[k] < 0, 0.0, keep)
        return out
    return with_params(a, params)


def delta_norms(legs: list[Leg], providers=None) -> list[PathNorm]:
    """The two-stream upper bound of each same-sign leg (DAGs of A's structure) as a norm with its
    certified interval (``upper_log10``: rounded outward), bundled a few per onnxruntime session
    (each bundled network holds three copies of the parameters)."""
    chunk = max(1, min(8, BUNDLE_PARAMS // max(1, legs[0][0].n_params))) if legs else 1
    out: list[PathNorm] = []
    for i in range(0, len(legs), chunk):
        dags = [two_stream_dag(a, b, pairs) for a, b, pairs in legs[i:i + chunk]]
        zeros = {n: np.zeros(dags[0].layer(n).shape, np.float32) for n in dags[0].inputs if n.endswith(DELTA)}
        session = LiftedSession([(dag, 1.0) for dag in dags], providers, feeds=zeros)
        for i, job in enumerate(session.runs()):  # pinned down by the exact fallback where float32 did not certify it
            deltas = [o for o in job[0].outputs if o.endswith(DELTA)]
            out.append(session.pinned(i, combine_runs(1.0, [run.select(deltas) for run in job]), deltas))
    return out


def _isolated(a: Dag, b: Dag, pairs: dict[str, str], k: int) -> Leg:
    """The pair of :func:`layer_shares` for the k-th parameterised layer: layers j < k both carry
    ``sign·min(|θ_j|, |θ'_j|)``, layers j > k both ``sign·max``, layer k its two own parameter sets."""
    order = {layer.name: i for i, layer in enumerate(x for x in a.layers() if x.params)}

    def side(own_b: bool):
        def params(layer: Layer) -> dict[str, np.ndarray]:
            pb, i = b.layer(pairs[layer.name]).params, order[layer.name]
            if i == k:
                return pb if own_b else layer.params
            pick = np.minimum if i < k else np.maximum
            return {n: _signed(v, pb[n], pick) for n, v in layer.params.items()}
        return params
    return with_params(a, side(False)), with_params(a, side(True)), {n: n for n in a.graph.nodes}


#: per-layer parts cost one lifted pass per parameterised layer and leg: skipped beyond this many
MAX_SHARE_PASSES = 64


def layer_shares(legs: list[Leg], providers=None) -> list[LayerShare]:
    """Each parameterised layer's part of the summed upper bounds of ``legs`` (same-sign pairs).

    Along a path, ``Πhi − Πlo = Σ_k (Π_(j<k) lo_j)(hi_k − lo_k)(Π_(j>k) hi_j)`` (layers in topological
    order): the two-stream bound of :func:`_isolated`'s k-th pair is the k-th sum over all paths, and
    these parts add up to the leg's bound exactly (up to float rounding). One pass per layer and leg,
    bundled a few at a time (built lazily: each pass holds copies of the parameters)."""
    todo = [(leg, k, layer) for leg in legs for k, layer in enumerate(x for x in leg[0].layers() if x.params)]
    chunk = max(1, min(8, BUNDLE_PARAMS // max(1, legs[0][0].n_params))) if legs else 1
    parts: dict[str, list[float]] = {}
    first: dict[str, Layer] = {}
    for i in range(0, len(todo), chunk):  # pairs built per chunk: each holds copies of the parameters
        batch = todo[i:i + chunk]
        for (_, _, layer), v in zip(batch, delta_norms([_isolated(*leg, k) for leg, k, _ in batch], providers)):
            parts.setdefault(layer.name, []).append(v.log10)  # parts of the computed value (they add up to it)
            first.setdefault(layer.name, layer)
    return [LayerShare(n, first[n].op, first[n].source, log10_sum(v)) for n, v in parts.items()]


def named_shares(shares: list[LayerShare], names: LayerNames | None) -> list[LayerShare]:
    """``shares`` by layer name (:mod:`onnx_pathlift.frontend.names`): the parts of the DAG layers one
    ONNX node became (a conv and its bias) add up, since parts add up to the bound; a DAG layer no node
    names keeps its own name (all of them without ``names``)."""
    if names is None:
        return shares
    parts: dict[str, list[float]] = {}
    first: dict[str, LayerShare] = {}
    for sh in shares:
        named = names.of_dag(sh.layer)
        key = named.layer if named else sh.layer
        parts.setdefault(key, []).append(sh.log10)
        first.setdefault(key, sh)
    out = []
    for key, logs in parts.items():
        named = names.of_dag(first[key].layer)
        out.append(LayerShare(key, first[key].op, first[key].source, log10_sum(logs), named.onnx_node if named else "",
                              named.initializer if named else None))
    return out


def named_signs(signs: list[LayerSigns], names: Names) -> list[LayerSigns]:
    """``signs`` by A's layer name (the DAG layers of one ONNX node add up; ``other``: the layer name in B of
    the first), ``names``: the layer names of A and B (None: DAG names kept)."""
    merged: dict[str, LayerSigns] = {}
    for s in signs:
        named = names[0].of_dag(s.layer) if names[0] is not None else None
        other = names[1].of_dag(s.other) if names[1] is not None else None
        key = named.layer if named else s.layer
        old = merged.get(key)
        merged[key] = LayerSigns(key, old.other if old else other.layer if other else s.other,
                                 s.violations + (old.violations if old else 0), s.size + (old.size if old else 0),
                                 named.onnx_node if named else "", named.initializer if named else None)
    return list(merged.values())


def _route_legs(a: Dag, b: Dag, pairs: dict[str, str], consistent: bool, exact: bool, prefix: str = "") -> dict[str, list[Leg]]:
    """The routes of one pair: ``direct`` (same signs), two same-sign legs through an intermediate point
    (docs/metrics.md, "Sign changes"): ``via-min`` (never above direct, equal to it when the pair is
    exact: then left out), ``via-zero`` (with sign changes)."""
    same = {n: n for n in a.graph.nodes}
    routes: dict[str, list[Leg]] = {prefix + "direct": [(a, b, pairs)]} if consistent else {}
    if not (consistent and exact):
        low = between(a, b, pairs, "min")
        routes[prefix + "via-min"] = [(a, low, same), (low, b, pairs)]
    if not consistent:
        zero = between(a, b, pairs, "zero")
        routes[prefix + "via-zero"] = [(a, zero, same), (zero, b, pairs)]
    return routes


#: prefix of the routes of the gauge-aligned pair (:mod:`onnx_pathlift.analyses.gauge`)
ALIGNED = "aligned-"


def _aligned(a: Dag, b: Dag, pairs: dict[str, str]) -> tuple[Alignment | None, Dag | None, bool]:
    """B in A's gauge as a DAG of A's architecture (None when not worth its passes) and whether that
    pair is exact (same signs, ``|B''| ≤ |A|`` or ``≥`` everywhere)."""
    gauge = align(a, b, pairs)
    if gauge is None or not gauge.worth_it:
        return gauge, None, False
    aligned = with_params(a, lambda layer: gauge.params[layer.name])
    signs, exact = sign_report(a, aligned, {n: n for n in a.graph.nodes})
    return gauge, aligned, exact and all(s.violations == 0 for s in signs)


def _alignment_report(gauge: Alignment | None, routes: dict[str, float], route: str, slack: float) -> dict:
    """The ``alignment`` entry of compare's JSON."""
    if gauge is None:
        return {"used": False, "reason": "an aligned coordinate would leave float64's normal range"}
    if not any(k.startswith(ALIGNED) for k in routes):
        return {"used": False, **gauge.to_dict(), "reason": f"B is in A's gauge already (every |ln λ| ≤ {MIN_LOG:g})"}
    best = min((k for k in routes if k.startswith(ALIGNED)), key=routes.__getitem__)
    return {"used": route.startswith(ALIGNED), "route": best, **gauge.to_dict(),
            "rounding": log10_value(slack), "rounding_log10": json_float(slack)}


def path_metric(model_a: ModelSource | Dag, model_b: ModelSource | Dag, input_shape=None, providers=None,
                breakdown: bool = False, pairs: dict[str, str] | None = None, names: Names = (None, None)) -> PathMetric:
    """Bounds on the path-metric between two same-architecture models, their sign consistency and
    the route of the certified upper bound (``breakdown``: also each layer's part of it, when that
    takes at most :data:`MAX_SHARE_PASSES` lifted passes). ``pairs``: the layer pairing of two DAGs
    already brought to comparable form (:func:`comparable`); None: they are paired here. Each route is
    also taken between A and B brought to A's rescaling gauge (:mod:`onnx_pathlift.analyses.gauge`: the same
    function and Φ, up to a float64 rounding added to those routes), and the smallest bound is kept.
    Layers (``shares``, ``signs``, a mismatch) are named as every command names them
    (:mod:`onnx_pathlift.frontend.names`): a model given as a file by its own layer names, one given as a
    DAG by ``names``, A's and B's :class:`~onnx_pathlift.frontend.names.LayerNames` (``layer_names(prepared,
    dag)``; None: by DAG name)."""
    (a, names_a), (b, names_b) = named_dag(model_a, input_shape, names[0]), named_dag(model_b, input_shape, names[1])
    a, b = a.float64_params(), b.float64_params()  # |a| − |b| and signs of products must not round
    if pairs is None:
        a, b, pairs, _, _ = comparable(a, b, (names_a, names_b))
    signs, exact = sign_report(a, b, pairs)
    na = PathNormSession(a, 1.0, providers).run()
    nb = PathNormSession(b, 1.0, providers).run()
    consistent = all(s.violations == 0 for s in signs)
    routes = _route_legs(a, b, pairs, consistent, exact)
    gauge, aligned, aligned_exact = _aligned(a, b, pairs)
    if aligned is not None:  # rescaling keeps signs: the aligned pair is as consistent as the pair
        routes.update(_route_legs(a, aligned, {n: n for n in a.graph.nodes}, consistent, aligned_exact, ALIGNED))
    legs = [leg for route in routes.values() for leg in route]
    each = iter(delta_norms(legs, providers))
    norms = {name: [next(each) for _ in route] for name, route in routes.items()}
    slack = gauge.slack_log10 + nb.upper_log10 if gauge is not None else -math.inf  # ‖Φ(B'') − Φ(B)‖_1 ≤ 10**slack
    bounds = {name: log10_sum([n.upper_log10 for n in ns] + ([slack] if name.startswith(ALIGNED) else []))
              for name, ns in norms.items()}  # certified: outward
    route = min(bounds, key=bounds.__getitem__)  # the first of equal ones: unaligned, direct
    upper = bounds[route]
    # |‖Φ_A‖ − ‖Φ_B‖| ≤ d, from the certified intervals (rounded inward)
    lower = max(_log10_gap(na.lower_log10, nb.upper_log10), _log10_gap(nb.lower_log10, na.upper_log10))
    exact = exact and consistent  # with a sign change, |θ'| ≤ |θ| no longer makes the sandwich tight
    if exact:  # then d equals the (cancellation-free) direct bound, computed within its certified interval
        lower = max(lower, norms["direct"][0].lower_log10)
    if aligned_exact and consistent:  # d(A, B'') likewise, and |d(A, B) − d(A, B'')| ≤ 10**slack
        lower = max(lower, _log10_gap(norms[ALIGNED + "direct"][0].lower_log10, slack))
    passes = sum(1 for leg in routes[route] for x in leg[0].layers() if x.params)
    shares = layer_shares(routes[route], providers) if breakdown and passes <= MAX_SHARE_PASSES else []
    estimate = log10_sum([n.log10 for n in norms[route]])
    return PathMetric(min(lower, upper), upper, na.log10, nb.log10, exact or (aligned_exact and consistent), consistent,
                      named_signs(signs, (names_a, names_b)), route, bounds, named_shares(shares, names_a), estimate,
                      _alignment_report(gauge, bounds, route, slack))
