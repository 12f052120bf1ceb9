"""Path-metrics between two models of one architecture, and the certified output-change bound.

For same-sign parameters θ, θ' (θ_i·θ'_i ≥ 0), for every input x (Gonon et al., ICML 2025):
``‖R_θ(x) − R_θ'(x)‖_1 ≤ max(‖x‖_∞, 1) · ‖Φ(θ) − Φ(θ')‖_1``, and

``|‖Φ(θ)‖_1 − ‖Φ(θ')‖_1|  ≤  d(θ, θ')  ≤  ‖Φ(max(|θ|,|θ'|))‖_1 − ‖Φ(min(|θ|,|θ'|))‖_1``,

both sides equal when ``|θ'| ≤ |θ|`` (or ``≥``) coordinatewise. The upper bound is computed without
subtraction by a two-stream network: ``lo`` (weights ``min``) and ``Δ = hi − lo`` with
``Δ_out = f_hi_linear(Δ_in) + f_(hi−lo)(lo_in)``; it is built as an ordinary DAG (the per-op algebra is
each handler's ``split_params``) and lifted like any other, so it runs in one onnxruntime pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .canonical import canonical_form
from .dag import Dag, Layer
from .errors import UsageError
from .importer import import_model
from .load import ModelSource
from .norm import PathNormSession, combine_runs
from .ops import LAYER_OPS

_LOG10_2 = math.log10(2.0)
DELTA = "__delta"


class MismatchError(UsageError):
    """The two models do not have the same architecture (layers, shapes, parameter shapes)."""


@dataclass(frozen=True)
class LayerSigns:
    """Coordinates of one layer's parameters with ``θ_i·θ'_i < 0``."""

    layer: str
    other: str
    violations: int
    size: int


@dataclass
class PathMetric:
    """Bounds on ``d(θ, θ') = ‖Φ(θ) − Φ(θ')‖_1`` as log10 (``-inf`` for 0) and values (None past float64)."""

    lower_log10: float
    upper_log10: float
    norm_a_log10: float
    norm_b_log10: float
    exact: bool
    sign_consistent: bool
    signs: list[LayerSigns] = field(default_factory=list)
    estimate_log10: float = math.nan  # the computed upper-bound network's value (float32 accuracy), before outward rounding

    @property
    def lower(self) -> float | None:
        return _value(self.lower_log10)

    @property
    def upper(self) -> float | None:
        return _value(self.upper_log10)

    def bound_log10(self, r: float = 1.0) -> float:
        """log10 of the certified ``max(r, 1) · upper`` for inputs with ‖x‖_∞ ≤ r."""
        return math.log10(max(r, 1.0)) + self.upper_log10

    def to_dict(self, r: float = 1.0) -> dict:
        j = _json
        certified = self.sign_consistent
        return {
            "lower": self.lower, "upper": self.upper, "lower_log10": j(self.lower_log10), "upper_log10": j(self.upper_log10),
            "exact": self.exact, "sign_consistent": self.sign_consistent,
            "input_linf": r, "bound": _value(self.bound_log10(r)) if certified else None,
            "bound_log10": j(self.bound_log10(r)) if certified else None,
            "norm_a": _value(self.norm_a_log10), "norm_b": _value(self.norm_b_log10),
            "norm_a_log10": j(self.norm_a_log10), "norm_b_log10": j(self.norm_b_log10),
            "estimate": _value(self.estimate_log10) if not math.isnan(self.estimate_log10) else None,
            "sign_violations": [s.__dict__ for s in self.signs if s.violations],
        }


def _value(log10: float) -> float | None:
    if log10 == -math.inf:
        return 0.0
    return 10.0**log10 if log10 < 308.25 else None


def _json(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _describe(layer: Layer) -> str:
    return f"{layer.op} {layer.name!r} (from node {layer.source!r})"


def pair_layers(a: Dag, b: Dag) -> dict[str, str]:
    """Match the layers of ``b`` to those of ``a`` by graph position (from the outputs back, input
    slot by input slot). When a model quantizes activations, a ReLU present in only one of them is
    stepped over (quantizers fold ReLUs into the activation's clipping range; the certificate is then
    about B's weights in A's float architecture); everything else must match. Raises :class:`MismatchError`
    saying where the architectures differ."""
    if len(a.outputs) != len(b.outputs) or len(a.inputs) != len(b.inputs):
        raise MismatchError(f"A has {len(a.inputs)} input(s) and {len(a.outputs)} analysed output(s), "
                            f"B has {len(b.inputs)} and {len(b.outputs)}")
    pairs: dict[str, str] = {}
    quantized = bool(a.activation_qdq or b.activation_qdq)
    stack = list(zip(a.outputs.values(), b.outputs.values()))
    while stack:
        na, nb = stack.pop()
        la, lb = a.layer(na), b.layer(nb)
        while quantized and (la.op == "relu") != (lb.op == "relu"):  # a QDQ quantizer folds ReLUs into clips
            if la.op == "relu":
                na, la = la.inputs[0], a.layer(la.inputs[0])
            else:
                nb, lb = lb.inputs[0], b.layer(lb.inputs[0])
        if na in pairs:
            if pairs[na] != nb:
                raise MismatchError(f"layer {na!r} of A feeds two places whose counterparts in B differ")
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
            raise MismatchError(f"A's {_describe(la)} does not match B's {_describe(lb)}: {problems[0]}")
        pairs[na] = nb
        stack.extend(zip(la.inputs, lb.inputs))
    if [pairs.get(i) for i in a.inputs] != b.inputs:
        raise MismatchError("the graph inputs of A and B are not used in the same positions")
    return pairs


def comparable(a: Dag, b: Dag) -> tuple[Dag, Dag, dict[str, str], list[str], list[str]]:
    """The DAGs of A and B as compared, their layer pairing, and the rewrites applied to each: none
    when they pair as spelled, else both are brought to the canonical spelling
    (:mod:`onnx_pathlift.canonical`: exact rewrites, the certificate is about the canonical parameters)
    and must pair then."""
    try:
        return a, b, pair_layers(a, b), [], []
    except MismatchError:
        (ca, applied_a), (cb, applied_b) = canonical_form(a), canonical_form(b)
        return ca, cb, pair_layers(ca, cb), applied_a, applied_b


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


def two_stream_dag(a: Dag, b: Dag, pairs: dict[str, str]) -> Dag:
    """The DAG whose lifted network (q = 1) carries ``lo`` under the original names and ``Δ`` under
    ``name + DELTA``; the Δ inputs are extra graph inputs fed with zeros."""
    out = Dag(opset=a.opset)

    def add(layer: Layer) -> None:
        out.add(layer, LAYER_OPS[layer.op].kind if layer.op in LAYER_OPS else "input")

    for layer in a.layers():
        d = layer.name + DELTA
        if layer.op == "input":
            add(layer)
            add(replace(layer, name=d))
            out.inputs += [layer.name, d]
            continue
        handler = LAYER_OPS[layer.op]
        split = handler.split_params(layer, b.layer(pairs[layer.name])) if layer.params else None
        if split is None:
            add(layer)
            add(replace(layer, name=d, inputs=[i + DELTA for i in layer.inputs]))
            continue
        lo, hi_linear, diff = split
        add(replace(layer, params=lo))
        add(replace(layer, name=d + "_hi", params=hi_linear, inputs=[i + DELTA for i in layer.inputs]))
        add(replace(layer, name=d + "_diff", params=diff))
        add(Layer(d, "sum", [d + "_hi", d + "_diff"], layer.shape, attrs={"signs": [1, 1]}, source=layer.source))
    for o, lname in a.outputs.items():
        out.outputs[o] = lname
        out.outputs[o + DELTA] = lname + DELTA
    return out


def without_biases(dag: Dag) -> Dag:
    out = Dag(opset=dag.opset, inputs=list(dag.inputs), outputs=dict(dag.outputs))
    for layer in dag.layers():
        out.add(LAYER_OPS[layer.op].without_bias(layer) if layer.op in LAYER_OPS else layer,
                dag.graph.nodes[layer.name]["kind"])
    return out


def input_path_norm(dag: Dag, providers=None):
    """‖Φ_in(θ)‖_1: the L1 path-norm over paths that start at input neurons (biases removed)."""
    return PathNormSession(without_biases(dag), 1.0, providers).run()


def _log10_gap(a: float, b: float) -> float:
    """log10 (10**a − 10**b) when ``a > b``, else ``-inf``, without overflow."""
    if a <= b:
        return -math.inf
    return a + math.log10(-math.expm1((b - a) * math.log(10)))


def path_metric(model_a: ModelSource | Dag, model_b: ModelSource | Dag, input_shape=None, providers=None) -> PathMetric:
    """Bounds on the path-metric between two same-architecture models, and their sign consistency."""
    a = model_a if isinstance(model_a, Dag) else import_model(model_a, input_shape)
    b = model_b if isinstance(model_b, Dag) else import_model(model_b, input_shape)
    a, b, pairs, _, _ = comparable(a, b)
    signs, exact = sign_report(a, b, pairs)
    na = PathNormSession(a, 1.0, providers).run()
    nb = PathNormSession(b, 1.0, providers).run()
    two = two_stream_dag(a, b, pairs)
    runs = PathNormSession(two, 1.0, providers, zero_inputs=frozenset(n for n in two.inputs if n.endswith(DELTA))).runs()[0]
    delta = combine_runs(1.0, [run.select([o for o in run.outputs if o.endswith(DELTA)]) for run in runs])
    upper = delta.upper_log10  # rounded outward: the certificate's d
    # |‖Φ_A‖ − ‖Φ_B‖| ≤ d, from the certified intervals (rounded inward)
    lower = max(_log10_gap(na.lower_log10, nb.upper_log10), _log10_gap(nb.lower_log10, na.upper_log10))
    consistent = all(s.violations == 0 for s in signs)
    exact = exact and consistent  # with a sign change, |θ'| ≤ |θ| no longer makes the sandwich tight
    if exact:  # then d equals the (cancellation-free) upper bound, computed within its interval
        lower = max(lower, delta.lower_log10)
    return PathMetric(min(lower, upper), upper, na.log10, nb.log10, exact, consistent, signs, delta.log10)


@dataclass(frozen=True)
class CheckReport:
    """Sampled check of the certificate: the largest observed ‖R_θ(x) − R_θ'(x)‖_1 over ``samples``
    inputs with ‖x‖_∞ ≤ r, and its ratio to the certified bound (must be ≤ 1)."""

    samples: int
    max_observed: float
    bound: float | None
    ratio: float | None
    violated: bool
    shipped_max_observed: float | None = None  # B as shipped, when it is not B's weights in A's architecture

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def with_params_of(a: Dag, b: Dag, pairs: dict[str, str]) -> Dag:
    """A's architecture carrying B's parameters (what the certificate is about)."""
    out = Dag(opset=a.opset, inputs=list(a.inputs), outputs=dict(a.outputs))
    for layer in a.layers():
        params = b.layer(pairs[layer.name]).params if layer.params else layer.params
        out.add(replace(layer, params=params), a.graph.nodes[layer.name]["kind"])
    return out


def check_bound(model_a, model_b, dag_a: Dag, dag_b: Dag, metric: PathMetric, r: float, samples: int,
                elem_types_a: dict[str, int] | None = None, elem_types_b: dict[str, int] | None = None,
                seed: int = 0, providers=None) -> CheckReport:
    """Run A and B on ``samples`` random inputs in the box ‖x‖_∞ ≤ r (uniform, half of them at the
    box's corners) and compare their analysed outputs with ``max(r, 1) · upper``.

    Both run as re-emitted graphs of A's architecture (verified faithful by the re-emission check,
    and with identical float32 rounding for identical weights), B with B's weights: the
    certificate's subject. When that is not B as shipped (activation quantization), B as shipped is
    also run and its largest observed change reported as ``shipped_max_observed``, outside the
    certificate. The models run
    in float32, so a change counts as a violation only past the bound plus 1e-5 of the outputs'
    own ℓ1 size (evaluation noise, not a property of the models)."""
    from .emit import emit_model
    from .runtime import make_session
    from .verify import ModelRunner

    pairs = pair_layers(dag_a, dag_b)
    names = list(dag_a.outputs)
    emitted_a = make_session(emit_model(dag_a), providers)  # same graph as B's below: same float32 rounding
    certified_b = make_session(emit_model(with_params_of(dag_a, dag_b, pairs)), providers)
    shipped = None
    if dag_b.activation_qdq or dag_a.activation_qdq:  # the shipped models differ from what is certified
        shipped = (ModelRunner(model_a, names, elem_types_a or {}, providers),
                   ModelRunner(model_b, list(dag_b.outputs), elem_types_b or {}, providers))
    bound = _value(metric.bound_log10(r)) if metric.sign_consistent else None
    rng = np.random.default_rng(seed)
    worst = worst_shipped = 0.0
    violated = False
    for k in range(samples):
        feeds = {}
        for name in dag_a.inputs:
            shape = dag_a.layer(name).shape
            x = rng.uniform(-r, r, shape) if k % 2 == 0 else r * rng.choice([-1.0, 1.0], shape)
            feeds[name] = x.astype(np.float32)
        ya = [np.asarray(v, np.float64) for v in emitted_a.run(names, feeds)]
        yb = [np.asarray(v, np.float64) for v in certified_b.run(names, feeds)]
        diff = sum(float(np.abs(a - b).sum()) for a, b in zip(ya, yb))
        noise = 1e-5 * max(sum(float(np.abs(a).sum()) for a in ya), sum(float(np.abs(b).sum()) for b in yb))
        worst = max(worst, diff)
        violated |= bound is not None and diff > bound + noise
        if shipped is not None:
            ys_a, ys_b = shipped[0](feeds), shipped[1]({nb: feeds[na] for na, nb in zip(dag_a.inputs, dag_b.inputs)})
            worst_shipped = max(worst_shipped, sum(float(np.abs(a - b).sum()) for a, b in zip(ys_a, ys_b)))
    ratio = None if bound is None or (bound == 0 and worst > 0) else (worst / bound if bound else 0.0)
    return CheckReport(samples, worst, bound, ratio, violated, worst_shipped if shipped is not None else None)
