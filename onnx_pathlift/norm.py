"""Path-norms ‖Φ(θ)‖_q: one onnxruntime pass of the lifted network on all-ones inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from .dag import Dag
from .emit import (
    HEALTH,
    HEALTH_MIN_LOG2,
    LOG2_SUFFIX,
    bundle_tag,
    lift_bundle,
    lift_model,
)
from .errors import PathliftError, UsageError
from .importer import import_model
from .load import ModelSource
from .runtime import make_session
from .samples import one_sample

_LOG10_2 = math.log10(2.0)
_LOG10_MAX = math.log10(np.finfo(np.float64).max)


@dataclass(frozen=True)
class PathNorm:
    """‖Φ(θ)‖_q as ``log10`` (always finite unless the norm is 0) and ``value`` (None past float64)."""

    q: float
    log10: float
    value: float | None
    per_output_log10: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"q": self.q, "value": self.value, "log10": _json_float(self.log10),
                "per_output_log10": {k: _json_float(v) for k, v in self.per_output_log10.items()}}


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _log2(s: float, k: float) -> float:
    """log2(s · 2**k) for s ≥ 0 (-inf for 0)."""
    return math.log2(s) + k if s > 0 else -math.inf


def _log2_sum(logs: list[float]) -> float:
    """log2 Σ 2**l_i without overflow (-inf when every term is 0)."""
    top = max(logs)
    if top == -math.inf or len(logs) == 1:
        return top
    return top + math.log2(math.fsum(math.exp2(v - top) for v in logs))


def combine(q: float, outputs: dict[str, tuple[np.ndarray, float]]) -> PathNorm:
    """‖Φ‖_q from the lifted outputs ``{name: (T, k)}``: (Σ_o ΣT_o·2**k_o)**(1/q)."""
    logs = {o: _log2(float(t.sum(dtype=np.float64)), k) for o, (t, k) in outputs.items()}
    log10 = _log2_sum(list(logs.values())) / q * _LOG10_2
    value = 0.0 if log10 == -math.inf else (10.0 ** log10 if log10 < _LOG10_MAX else None)
    return PathNorm(q, log10, value, {o: v / q * _LOG10_2 for o, v in logs.items()})


class LiftedSession:
    """Lifted networks of ``(dag, q)`` jobs sharing their inputs, in one onnxruntime session, run
    together (one network at several q and its bias-free variant cost one session and one pass).

    ``scales="auto"`` (default) runs the static-scale graph (constant scales folded into the layers)
    and falls back to the run-time renormalised graph when its health output says a static bound was
    too loose for float32; ``"static"`` or ``"dynamic"`` force one of them.

    ``per_sample=True`` (default): a network that stacks ``N`` independent samples along a fixed
    batch axis is run for one sample, its lifted outputs counting ``N`` times
    (:func:`onnx_pathlift.samples.one_sample`); ``self.model`` is then the one-sample lifted network.
    """

    def __init__(self, jobs: Sequence[tuple[Dag, float]], providers=None, scales: str = "auto", per_sample: bool = True):
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
        self._build()
        first = self.jobs[0][0]
        self.feeds = {name: np.ones(first.layer(name).shape, np.float32) for name in first.inputs}

    def _build(self) -> None:
        self.model: ModelProto = lift_bundle(self.jobs, static=self.static)
        self.session = make_session(self.model, self.providers)
        tags = [bundle_tag(i, len(self.jobs)) for i in range(len(self.jobs))]
        self._names = [[(o, tag + o, tag + o + LOG2_SUFFIX) for o in dag.outputs] for (dag, _), tag in zip(self.jobs, tags)]
        self._health = [tag + HEALTH for tag in tags] if self.static else []
        self._fetch = [n for job in self._names for _, t, k in job for n in (t, k)] + self._health

    def lifted_outputs(self) -> list[dict[str, tuple[np.ndarray, float]]]:
        """One pass: per job, ``{output: (T, k)}`` with lifted value ``T · 2**k`` (``k`` includes
        ``log2 N`` when one sample stands for ``N``)."""
        res = dict(zip(self._fetch, self.session.run(self._fetch, self.feeds)))
        if self._health:
            health = min(float(res[h].min()) for h in self._health)
            if health < 2.0 ** -HEALTH_MIN_LOG2:
                if self.scales == "static":
                    raise PathliftError(f"static scales too loose for float32 (health {health:.3g})")
                self.static = False
                self._build()
                return self.lifted_outputs()
        return [{o: (res[t], float(res[k]) + math.log2(copies)) for o, t, k in job} for job, copies in zip(self._names, self.copies)]

    def norms(self) -> list[PathNorm]:
        """‖Φ‖_q of every job, summed over its analysed outputs."""
        return [combine(q, outs) for (_, q), outs in zip(self.jobs, self.lifted_outputs())]


class PathNormSession(LiftedSession):
    """The lifted network of one DAG and q, with its onnxruntime session built once (see
    :class:`LiftedSession` for ``scales`` and ``per_sample``)."""

    def __init__(self, dag: Dag, q: float = 1.0, providers=None, scales: str = "auto", per_sample: bool = True):
        super().__init__([(dag, q)], providers, scales, per_sample)
        self.dag, self.q = self.jobs[0]

    def run(self) -> PathNorm:
        """‖Φ‖_q summed over every analysed output."""
        return self.norms()[0]

    def run_outputs(self) -> dict[str, tuple[np.ndarray, float]]:
        """One pass of the lifted network: ``{output: (T, k)}`` with lifted value ``T · 2**k``."""
        return self.lifted_outputs()[0]


def path_norm(model: ModelSource | Dag, q: float = 1.0, input_shape=None, providers=None) -> PathNorm:
    """‖Φ(θ)‖_q of an ONNX ReLU network (path, bytes, ModelProto or an imported :class:`Dag`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return PathNormSession(dag, q, providers).run()


def lift(model: ModelSource | Dag, q: float = 1.0, input_shape=None) -> ModelProto:
    """The lifted network as a standalone ONNX model (see :func:`onnx_pathlift.emit.lift_model`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return lift_model(dag, q)
