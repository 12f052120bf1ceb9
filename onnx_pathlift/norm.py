"""Path-norms ‖Φ(θ)‖_q: one onnxruntime pass of the lifted network on all-ones inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from onnx import ModelProto

from .dag import Dag
from .emit import HEALTH, HEALTH_MIN_LOG2, LOG2_SUFFIX, lift_model
from .errors import PathliftError, UsageError
from .importer import import_model
from .load import ModelSource
from .runtime import make_session

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


class PathNormSession:
    """The lifted network of one DAG and q, with its onnxruntime session built once.

    ``scales="auto"`` (default) runs the static-scale graph (constant scales folded into the layers)
    and falls back to the run-time renormalised graph when its health output says a static bound was
    too loose for float32; ``"static"`` or ``"dynamic"`` force one of them.
    """

    def __init__(self, dag: Dag, q: float = 1.0, providers=None, scales: str = "auto"):
        if scales not in ("auto", "static", "dynamic"):
            raise UsageError(f"scales must be auto, static or dynamic (got {scales!r})")
        self.dag, self.q, self.providers, self.scales = dag, float(q), providers, scales
        self.model: ModelProto = lift_model(dag, self.q, static=scales != "dynamic")
        self.session = make_session(self.model, providers)
        self.feeds = {name: np.ones(dag.layer(name).shape, np.float32) for name in dag.inputs}
        self.names = list(dag.outputs)
        self.static = scales != "dynamic"
        self.fetch = [n for o in self.names for n in (o, o + LOG2_SUFFIX)]

    def run(self) -> PathNorm:
        """‖Φ‖_q summed over every analysed output."""
        return combine(self.q, self.run_outputs())

    def run_outputs(self) -> dict[str, tuple[np.ndarray, float]]:
        """One pass of the lifted network: ``{output: (T, k)}`` with lifted value ``T · 2**k``."""
        if self.static:
            *res, health = self.session.run(self.fetch + [HEALTH], self.feeds)
            if float(np.min(health)) < 2.0 ** -HEALTH_MIN_LOG2:
                if self.scales == "static":
                    raise PathliftError(f"static scales too loose for float32 (health {float(np.min(health)):.3g})")
                self.model, self.static = lift_model(self.dag, self.q, static=False), False
                self.session = make_session(self.model, self.providers)
                return self.run_outputs()
        else:
            res = self.session.run(self.fetch, self.feeds)
        return {o: (res[2 * i], float(res[2 * i + 1])) for i, o in enumerate(self.names)}


def path_norm(model: ModelSource | Dag, q: float = 1.0, input_shape=None, providers=None) -> PathNorm:
    """‖Φ(θ)‖_q of an ONNX ReLU network (path, bytes, ModelProto or an imported :class:`Dag`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return PathNormSession(dag, q, providers).run()


def lift(model: ModelSource | Dag, q: float = 1.0, input_shape=None) -> ModelProto:
    """The lifted network as a standalone ONNX model (see :func:`onnx_pathlift.emit.lift_model`)."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    return lift_model(dag, q)
