"""The certificate checked against onnxruntime: sampled inputs of the box ``‖x‖_∞ ≤ R`` (half uniform, half at
corners) and a search for the largest change, compared with the certified bound (``compare --check``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..graph.numeric import log10_value
from ..ir.dag import Dag
from ..rewrite.transforms import with_params_of
from .metric import PathMetric, pair_layers


@dataclass(frozen=True)
class CheckReport:
    """Sampled and searched check of the certificate: the largest observed ‖R_θ(x) − R_θ'(x)‖_1 over
    ``samples`` random inputs and ``searched`` search steps in the box ‖x‖_∞ ≤ r, and its ratio to the
    certified bound (must be ≤ 1); for B as shipped (activation quantization), the same against the
    total certificate ``shipped_bound`` (weight term + activation term). ``unevaluated``: evaluations
    whose float32 outputs were not finite (overflow): they check nothing and are counted, never taken
    as "not violated"; ``max_observed`` is None when no evaluation was finite."""

    samples: int
    max_observed: float | None
    bound: float | None
    ratio: float | None
    violated: bool
    shipped_max_observed: float | None = None  # B as shipped, when it is not B's weights in A's architecture
    shipped_bound: float | None = None
    shipped_ratio: float | None = None
    searched: int = 0
    unevaluated: int = 0
    evaluations: int = 0

    @property
    def note(self) -> str | None:
        """Why the check says less than it seems to, when it does."""
        if not self.unevaluated:
            return None
        what = "every" if self.unevaluated == self.evaluations else f"{self.unevaluated} of {self.evaluations}"
        return (f"{what} evaluation overflowed float32 (non-finite outputs): "
                + ("the check is impossible" if self.max_observed is None else "those are not checked"))

    def to_dict(self) -> dict:
        return {**self.__dict__, "note": self.note}


Feeds = dict[str, np.ndarray]


def _change(run_a, run_b):
    """``x ↦ (‖A(x) − B(x)‖_1, noise)``: float32 evaluation noise is 1e-5 of the outputs' ℓ1 size;
    ``(nan, nan)`` when an output is not finite (float32 overflow: nothing can be said)."""
    def change(feeds: Feeds) -> tuple[float, float]:
        ya, yb = run_a(feeds), run_b(feeds)
        if not all(np.all(np.isfinite(y)) for y in (*ya, *yb)):
            return math.nan, math.nan
        diff = sum(float(np.abs(a - b).sum()) for a, b in zip(ya, yb))
        return diff, 1e-5 * max(sum(float(np.abs(a).sum()) for a in ya), sum(float(np.abs(b).sum()) for b in yb))
    return change


def search_box(change, start: Feeds, r: float, steps: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Random coordinate ascent on ``change`` over the box ‖x‖_∞ ≤ r from ``start``: each step moves a
    random block of coordinates (up to 10%) to random corners (or, one step in three, uniform values)
    and keeps the move when the change grows. Returns every evaluation ``(diff, noise)``."""
    best_x, best = start, change(start)
    seen = [best]
    for step in range(steps):
        x = {n: v.copy() for n, v in best_x.items()}
        for v in x.values():
            idx = rng.choice(v.size, size=max(1, int(v.size * rng.uniform(0.0, 0.1))), replace=False)
            v.flat[idx] = r * rng.choice([-1.0, 1.0], idx.size) if step % 3 else rng.uniform(-r, r, idx.size)
        got = change(x)
        seen.append(got)
        if got[0] > best[0]:
            best_x, best = x, got
    return seen


def _probe(change, inputs: dict[str, tuple[int, ...]], r: float, samples: int, search: int,
           rng: np.random.Generator) -> list[tuple[float, float]]:
    """``samples`` inputs (uniform, every other one at the box's corners), then ``search`` steps of
    :func:`search_box` from the worst of them; every evaluation ``(diff, noise)``."""
    seen, worst, start = [], -1.0, None
    for k in range(samples):
        feeds = {n: (rng.uniform(-r, r, shape) if k % 2 == 0 else r * rng.choice([-1.0, 1.0], shape)).astype(np.float32)
                 for n, shape in inputs.items()}
        seen.append(change(feeds))
        if start is None or seen[-1][0] > worst:  # a non-finite change (nan) is never the worst
            worst, start = (seen[-1][0] if not math.isnan(seen[-1][0]) else worst), feeds
    if search and samples:
        seen += search_box(lambda x: change({n: v.astype(np.float32) for n, v in x.items()}),
                           {n: v.astype(np.float64) for n, v in start.items()}, r, search, rng)
    return seen


def _verdict(seen: list[tuple[float, float]], bound: float | None) -> tuple[float | None, float | None, bool]:
    """Largest finite change (None when none is), its ratio to ``bound``, and whether some change
    exceeded bound + noise (non-finite ones are counted apart: :attr:`CheckReport.unevaluated`)."""
    finite = [(d, n) for d, n in seen if not math.isnan(d)]
    if seen and not finite:
        return None, None, False
    worst = max((d for d, _ in finite), default=0.0)
    violated = bound is not None and any(d > bound + n for d, n in finite)
    ratio = None if bound is None or (bound == 0 and worst > 0) else (worst / bound if bound else 0.0)
    return worst, ratio, violated


def check_bound(model_a, model_b, dag_a: Dag, dag_b: Dag, metric: PathMetric, r: float, samples: int,
                elem_types_a: dict[str, int] | None = None, elem_types_b: dict[str, int] | None = None,
                seed: int = 0, providers=None, search: int = 0, activation: float | None = None,
                pairs: dict[str, str] | None = None) -> CheckReport:
    """Run A and B on ``samples`` random inputs in the box ‖x‖_∞ ≤ r (uniform, half of them at the
    box's corners) then ``search`` steps of a coordinate-ascent search for the largest change, and
    compare their analysed outputs with ``max(r, 1) · upper``.

    Both run as re-emitted graphs of A's architecture (verified faithful by the re-emission check,
    and with identical float32 rounding for identical weights), B with B's weights: the weight
    certificate's subject. When B quantizes activations, B as shipped is also run against A and
    checked against the total certificate ``max(r, 1)·upper + activation`` (``activation``: the
    activation term of :mod:`onnx_pathlift.analyses.quant_bound`; None: not checked, only reported). The
    models run in float32, so a change counts as a violation only past the bound plus 1e-5 of the
    outputs' own ℓ1 size (evaluation noise, not a property of the models). ``pairs``: the layer
    pairing of the two DAGs (:func:`pair_layers`), computed here when None."""
    from ..backend.emit import emit_model
    from ..backend.runtime import make_session
    from ..backend.verify import ModelRunner

    pairs = pair_layers(dag_a, dag_b) if pairs is None else pairs
    names = list(dag_a.outputs)
    emitted_a = make_session(emit_model(dag_a), providers)  # same graph as B's below: same float32 rounding
    certified_b = make_session(emit_model(with_params_of(dag_a, dag_b, pairs)), providers)
    inputs = {name: dag_a.layer(name).shape for name in dag_a.inputs}
    bound = log10_value(metric.bound_log10(r))
    run = _change(lambda x: [np.asarray(v, np.float64) for v in emitted_a.run(names, x)],
                  lambda x: [np.asarray(v, np.float64) for v in certified_b.run(names, x)])
    seen = _probe(run, inputs, r, samples, search, np.random.default_rng(seed))
    worst, ratio, violated = _verdict(seen, bound)
    counts = [len(seen), sum(1 for d, _ in seen if math.isnan(d))]
    shipped: dict = {}
    if dag_b.activation_qdq or dag_a.activation_qdq:  # the shipped models differ from what is certified
        ra = ModelRunner(model_a, names, elem_types_a or {}, providers)
        rb = ModelRunner(model_b, list(dag_b.outputs), elem_types_b or {}, providers)
        run_shipped = _change(ra, lambda x: rb({nb: x[na] for na, nb in zip(dag_a.inputs, dag_b.inputs)}))
        total = None if activation is None or bound is None else bound + activation
        seen = _probe(run_shipped, inputs, r, samples, search, np.random.default_rng(seed + 1))
        top, top_ratio, top_violated = _verdict(seen, total)
        counts = [counts[0] + len(seen), counts[1] + sum(1 for d, _ in seen if math.isnan(d))]
        shipped = {"shipped_max_observed": top, "shipped_bound": total, "shipped_ratio": top_ratio}
        violated |= top_violated
    return CheckReport(samples, worst, bound, ratio, violated, searched=search if samples else 0, **shipped,
                       unevaluated=counts[1], evaluations=counts[0])
