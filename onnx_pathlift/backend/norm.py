"""Path-norms ‖Φ(θ)‖_q: one onnxruntime pass of the lifted network on all-ones inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from onnx import ModelProto

from ..errors import PathliftError, UsageError
from ..fileio.load import ModelSource
from ..frontend.importer import import_model
from ..graph.budget import Budget
from ..graph.numeric import json_float, log2_sum, log2_sum_scaled, log10_value
from ..ir.dag import Dag
from .emit import LOG2_SUFFIX, bundle_tag, lift_model, lifted_bundle
from .runtime import make_session
from .samples import one_sample

_LOG10_2 = math.log10(2.0)


@dataclass(frozen=True)
class PathNorm:
    """‖Φ(θ)‖_q as ``log10`` (always finite unless the norm is 0) and ``value`` (None past float64),
    with the certified interval ``[lower_log10, upper_log10]`` (see :mod:`onnx_pathlift.graph.budget`; None
    where no error budget applies) and ``certified``: whether the computed value is within float32
    rounding of the truth (no mass lost to underflow beyond ``2**-20`` of it). ``fallback``: "float64" when
    the exact fallback (:mod:`onnx_pathlift.backend.exact`) pinned it down; ``reason``: why an uncertified
    norm has no ``value`` (the fallback refused)."""

    q: float
    log10: float
    value: float | None
    per_output_log10: dict[str, float] = field(default_factory=dict)
    lower_log10: float | None = None
    upper_log10: float | None = None
    certified: bool = False
    fallback: str | None = None
    reason: str | None = None

    @property
    def upper(self) -> float | None:
        """The certified upper bound on ‖Φ‖_q (None past float64, or without a budget)."""
        return None if self.upper_log10 is None else log10_value(self.upper_log10)

    def to_dict(self) -> dict:
        return {"q": self.q if math.isfinite(self.q) else "inf", "value": self.value, "log10": json_float(self.log10),
                "lower_log10": json_float(self.lower_log10), "upper_log10": json_float(self.upper_log10),
                "upper": self.upper, "certified": self.certified, "fallback": self.fallback, "reason": self.reason,
                "per_output_log10": {k: json_float(v) for k, v in self.per_output_log10.items()}}


def _log2_total(t: np.ndarray, k) -> float:
    """log2 Σ T · 2**k for T ≥ 0 and an exponent (map) k broadcastable to T (-inf for 0)."""
    t = np.asarray(t, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    if not np.isfinite(t).all():
        return math.nan  # overflow or 0·inf: no estimate (the budget then gives the static bound alone)
    return log2_sum_scaled(k, t)


@dataclass
class JobRun:
    """One lifted network's outputs ``{name: (T, k)}`` (value ``T · 2**k``, ``k`` including ``log2 N``
    when one sample stands for ``N``), with the error budget of the graph that produced them."""

    outputs: dict[str, tuple[np.ndarray, np.ndarray | float]]
    budget: Budget
    copies_log2: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)  # analysed layer -> neurons (one sample)
    _totals: dict[str, float] = field(default_factory=dict, repr=False)

    def total_log2(self, name: str) -> float:
        """log2 Σ T·2**k of one output (computed once)."""
        if name not in self._totals:
            self._totals[name] = _log2_total(*self.outputs[name])
        return self._totals[name]

    def select(self, names: list[str]) -> JobRun:
        return JobRun({o: self.outputs[o] for o in names}, self.budget, self.copies_log2, self.sizes,
                      {o: v for o, v in self._totals.items() if o in names})

    def neuron_upper(self, name: str) -> np.ndarray:
        """A certified upper bound on every lifted neuron of output ``name`` (one sample): its computed
        value rounded outward plus the output's whole underflow term, and never above the static
        bound of the output's total."""
        t, k = self.outputs[name]
        g, factor = self.budget.gamma(), self.budget.underflow_factor_log2()
        total = self.budget.bound_log2[name] + math.log2(1.0 + g)
        lost = total + factor if factor is not None else total
        with np.errstate(over="ignore"):
            value = t.astype(np.float64) * np.exp2(np.asarray(k, dtype=np.float64) - self.copies_log2)
        return np.minimum(value / (1.0 - g) + 2.0**lost, 2.0**total)


def combine(q: float, outputs: dict[str, tuple[np.ndarray, np.ndarray | float]] | JobRun) -> PathNorm:
    """‖Φ‖_q from lifted outputs ``{name: (T, k)}`` (or a run's): (Σ_o ΣT_o·2**k_o)**(1/q), without an interval."""
    if isinstance(outputs, JobRun):
        logs = {o: outputs.total_log2(o) for o in outputs.outputs}
    else:
        logs = {o: _log2_total(t, k) for o, (t, k) in outputs.items()}
    log10 = math.nan if any(math.isnan(v) for v in logs.values()) else log2_sum(list(logs.values())) / q * _LOG10_2
    return PathNorm(q, log10, log10_value(log10), {o: v / q * _LOG10_2 for o, v in logs.items()})


#: q = ∞ (the largest path product) is the lifted network at this q: ‖Φ‖_Q ≥ ‖Φ‖_∞ ≥ ‖Φ‖_Q · P**(-1/Q)
#: for P paths, an interval narrower than 1e-9 relative for any P below 2**1000
Q_INF = 2.0**40


def lifted_q(q: float) -> float:
    """The q a lifted network is built at: q itself, or :data:`Q_INF` for q = ∞."""
    return Q_INF if math.isinf(q) and q > 0 else q


def combine_runs(q: float, runs: Sequence[JobRun]) -> PathNorm:
    """‖Φ‖_q of the same outputs computed by one or more lifted graphs (static scales, then the
    run-time renormalised fallback): the estimate of the last (moved into the interval when float32
    left it outside), the intersection of their certified intervals, certified when one of them is."""
    lowers, uppers, certified, norm, lq = [], [], False, None, lifted_q(q)
    for run in runs:
        candidate = combine(lq, run)
        norm = candidate if norm is None or not math.isnan(candidate.log10) else norm
        log2 = candidate.log10 * lq / _LOG10_2 - run.copies_log2
        lo, hi, ok = run.budget.interval(log2, list(run.outputs))
        lowers.append(lo + run.copies_log2)
        uppers.append(hi + run.copies_log2)
        certified |= ok
    if math.isnan(norm.log10):
        raise PathliftError("the lifted network produced non-finite values under every scale mode (please report it); "
                            f"the static bound alone gives log10 ‖Φ‖_q ≤ {min(uppers) * _LOG10_2 / lq:.9g}")
    scale = _LOG10_2 / lq
    lower = max(lowers)
    if lq != q:  # q = ∞: ‖Φ‖_∞ ≥ ‖Φ‖_Q / P**(1/Q)
        lower -= runs[0].budget.paths_log2(runs[0].sizes) + runs[0].copies_log2
    lower, upper = lower * scale, min(uppers) * scale
    log10 = min(max(norm.log10, lower), upper)  # the truth is in the interval: an estimate outside it is moved in
    return replace(norm, q=q, log10=log10, value=log10_value(log10), lower_log10=lower, upper_log10=upper, certified=certified)


#: the exact fallback certifies a norm when its interval on ``log2 ‖Φ‖_q^q`` is at most this wide (log2)
EXACT_WIDTH_LOG2 = -16.0


def pin(norm: PathNorm, dag: Dag, feeds: dict[str, np.ndarray] | None = None, outputs: list[str] | None = None,
        copies_log2: float = 0.0) -> PathNorm:
    """``norm`` as it is where float32 certified it; else pinned down by the exact float64 fallback on
    ``dag`` (:func:`onnx_pathlift.backend.exact.exact_log2`; ``feeds``: the lifted inputs that are not all
    ones, ``copies_log2``: ``log2 N`` when one sample stands for ``N``): the intersection of both certified
    intervals, the fallback's value inside it. Where the fallback refuses, ``value`` is None with the reason."""
    if norm.certified:
        return norm
    from .exact import FallbackRefused, exact_log2  # only where float32 did not certify (rare)

    try:
        with np.errstate(divide="ignore"):
            logs = {n: np.log2(np.asarray(v, dtype=np.float64)) for n, v in (feeds or {}).items()}
        total, err = exact_log2(dag, norm.q, logs, outputs)
    except FallbackRefused as e:
        return replace(norm, value=None, reason=f"float32 did not certify it, and {e}")
    inf = math.isinf(norm.q)
    scale = _LOG10_2 if inf else _LOG10_2 / norm.q
    if total == -math.inf:
        lo = hi = -math.inf
    else:
        total += 0.0 if inf else copies_log2
        pad = err + (abs(total) + 1.0) * 2.0**-50  # and the rounding of this line and the next
        lo, hi = (total - pad) * scale, (total + pad) * scale
    lower, upper = max(lo, norm.lower_log10), min(hi, norm.upper_log10)
    if lower > upper:
        raise PathliftError(f"the exact fallback's interval [{lo:.9g}, {hi:.9g}] misses float32's certified "
                            f"[{norm.lower_log10:.9g}, {norm.upper_log10:.9g}] (log10; please report it)")
    log10 = min(max(total * scale, lower), upper)
    return replace(norm, log10=log10, value=log10_value(log10), lower_log10=lower, upper_log10=upper,
                   certified=2 * err <= 2.0**EXACT_WIDTH_LOG2, fallback="float64")


#: the renormalised graph keeps its exponents in float32 (exact integers up to 2**24): beyond this q
#: they could leave that range, and only the static graph (float64 exponents) is run
DYNAMIC_MAX_Q = 2.0**14


class LiftedSession:
    """Lifted networks of ``(dag, q)`` jobs sharing their inputs, in one onnxruntime session, run
    together (one network at several q and its bias-free variant cost one session and one pass).

    ``scales="auto"`` (default) runs the static-scale graph (exponent maps folded into the layers)
    and, when its error budget does not certify an output (static bounds too loose for float32),
    also the run-time renormalised graph, and where neither certifies a norm, the exact float64 fallback
    (:meth:`pinned`); ``"static"`` or ``"dynamic"`` run only one of the float32 graphs.

    ``per_sample=True`` (default): a network that stacks ``N`` independent samples along a fixed
    batch axis is run for one sample, its lifted outputs counting ``N`` times
    (:func:`onnx_pathlift.backend.samples.one_sample`); ``self.model`` is then the one-sample lifted network.

    ``quick_build=True``: onnxruntime's basic graph rewrites only, for a session run once or twice
    (:func:`onnx_pathlift.backend.runtime.make_session`); the default suits repeated runs.
    """

    def __init__(self, jobs: Sequence[tuple[Dag, float]], providers=None, scales: str = "auto", per_sample: bool = True,
                 feeds: dict[str, np.ndarray] | None = None, quick_build: bool = False):
        if scales not in ("auto", "static", "dynamic"):
            raise UsageError(f"scales must be auto, static or dynamic (got {scales!r})")
        by_dag: dict[int, tuple[Dag, int]] = {}  # one proof per DAG, however many q it is lifted at
        for dag, _ in jobs:
            if id(dag) not in by_dag:
                by_dag[id(dag)] = one_sample(dag) if per_sample else (dag, 1)
        twins = [by_dag[id(dag)] for dag, _ in jobs]
        self.jobs = [(twin, float(q)) for (twin, _), (_, q) in zip(twins, jobs)]
        self.copies = [copies for _, copies in twins]
        self.providers, self.scales, self.static = providers, scales, scales != "dynamic"
        self.quick_build = quick_build  # for a session run once or twice: see runtime.make_session
        first = self.jobs[0][0]
        self.feeds = {name: np.ones(first.layer(name).shape, np.float32) for name in first.inputs}
        for name, v in (feeds or {}).items():
            self.feeds[name] = _one_sample_feed(name, np.asarray(v, np.float32), first.layer(name).shape)
        self.input_log2 = {name: _log2_max(v) for name, v in self.feeds.items() if not np.all(v == 1)}
        self._build()

    def _build(self) -> None:
        self.built, self.budgets = lifted_bundle([(dag, lifted_q(q)) for dag, q in self.jobs], static=self.static,
                                                 input_log2=self.input_log2)
        self.session = make_session(self.built, self.providers, "basic" if self.quick_build else "all")
        tags = [bundle_tag(i, len(self.jobs)) for i in range(len(self.jobs))]
        self._names = [[(o, tag + o, tag + o + LOG2_SUFFIX) for o in dag.outputs] for (dag, _), tag in zip(self.jobs, tags)]
        self._fetch = [n for job in self._names for _, t, k in job for n in (t, k)]

    @property
    def model(self) -> ModelProto:
        """The lifted network of the last graph run, as a standalone ONNX model."""
        return self.built.standalone()

    def _run(self) -> list[JobRun]:
        res = dict(zip(self._fetch, self.session.run(self._fetch, self.feeds)))
        return [JobRun({o: (res[t], np.asarray(res[k], dtype=np.float64) + math.log2(copies)) for o, t, k in job}, budget,
                       math.log2(copies), {lname: math.prod(dag.layer(lname).shape) for lname in dag.outputs.values()})
                for job, copies, budget, (dag, _) in zip(self._names, self.copies, self.budgets, self.jobs)]

    def runs(self) -> list[list[JobRun]]:
        """Per job, its run by the static-scale graph and, where that graph's budget leaves an output
        uncertified (``scales="auto"``), by the renormalised graph too."""
        first = self._run()
        if not self.static or self.scales == "static" or all(self._certified(run) for run in first) \
                or any(lifted_q(q) > DYNAMIC_MAX_Q for _, q in self.jobs) \
                or any(abs(v) > 2.0**22 for run in first for v in run.budget.bound_log2.values() if math.isfinite(v)):
            return [[run] for run in first]
        self.static = False
        self._build()
        return [[run, again] for run, again in zip(first, self._run())]

    @staticmethod
    def _certified(run: JobRun) -> bool:
        return all(run.budget.interval(run.total_log2(o) - run.copies_log2, [o])[2] for o in run.outputs)

    def norms(self) -> list[PathNorm]:
        """‖Φ‖_q of every job, summed over its analysed outputs, with its certified interval (pinned
        down by the exact fallback where float32 did not certify it: :meth:`pinned`)."""
        return [self.pinned(i, combine_runs(q, job)) for i, ((_, q), job) in enumerate(zip(self.jobs, self.runs()))]

    def pinned(self, i: int, norm: PathNorm, outputs: list[str] | None = None) -> PathNorm:
        """Job ``i``'s ``norm`` (over its analysed ``outputs``, default all) through :func:`pin` (with
        ``scales="auto"`` only: ``"static"`` and ``"dynamic"`` report that float32 graph alone)."""
        if norm.certified or self.scales != "auto":
            return norm
        feeds = {n: v for n, v in self.feeds.items() if not np.all(v == 1)}
        return pin(norm, self.jobs[i][0], feeds, outputs, math.log2(self.copies[i]))


def _one_sample_feed(name: str, v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A non-negative feed for an input of ``shape`` (the one-sample twin's: a feed given for the whole
    fixed batch must then be the same for every sample)."""
    if v.shape != tuple(shape):
        if v.shape[1:] != tuple(shape[1:]) or not np.all(v == v[:1]):
            raise UsageError(f"input {name!r}: a feed of shape {v.shape} for a network analysed with shape {tuple(shape)}")
        v = v[:shape[0]]
    if not np.all(v >= 0):
        raise UsageError(f"input {name!r}: a lifted network is fed non-negative values")
    return np.ascontiguousarray(v)


def _log2_max(v: np.ndarray) -> float:
    top = float(v.max(initial=0.0))
    return math.log2(top) if top > 0 else -math.inf


class PathNormSession(LiftedSession):
    """The lifted network of one DAG and q, with its onnxruntime session built once (see
    :class:`LiftedSession` for ``scales``, ``per_sample`` and ``quick_build``)."""

    def __init__(self, dag: Dag, q: float = 1.0, providers=None, scales: str = "auto", per_sample: bool = True,
                 feeds: dict[str, np.ndarray] | None = None, quick_build: bool = False):
        super().__init__([(dag, q)], providers, scales, per_sample, feeds, quick_build)
        self.dag, self.q = self.jobs[0]

    def run(self) -> PathNorm:
        """‖Φ‖_q summed over every analysed output."""
        return self.norms()[0]


def path_norm(model: ModelSource | Dag, q: float = 1.0, input_shape=None, providers=None) -> PathNorm:
    """‖Φ(θ)‖_q of an ONNX ReLU network (path, bytes, ModelProto or an imported :class:`Dag`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return PathNormSession(dag, q, providers, quick_build=True).run()  # run once


def lift(model: ModelSource | Dag, q: float = 1.0, input_shape=None) -> ModelProto:
    """The lifted network as a standalone ONNX model (see :func:`onnx_pathlift.backend.emit.lift_model`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return lift_model(dag, q)
