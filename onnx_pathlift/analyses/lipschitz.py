"""Input-space Lipschitz bounds: ``‖R(x) − R(x')‖_1 ≤ ‖Φ_in(θ)‖_1 · ‖x − x'‖_∞``.

``‖Φ_in‖_1`` is the L1 path-norm over the paths that start at input neurons (biases removed). For
comparison, the naive bound multiplies per-layer ℓ∞ → ℓ∞ operator norms along the DAG (sums add
their branches, concats take the largest) and converts ℓ∞ to ℓ1 at the outputs (× their size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..backend.norm import PathNorm
from ..fileio.load import ModelSource
from ..frontend.importer import import_model
from ..frontend.pipeline import load, model_name
from ..graph.numeric import json_float, log2_sum, log10_value
from ..ir.dag import Dag
from ..ops import LAYER_OPS, require
from . import Command, fmt, provider
from .metric import input_path_norm

if TYPE_CHECKING:
    from ..audit.record import InputShape  # one static shape, or one per input name; None: as declared

_LOG10_2 = math.log10(2.0)


@dataclass(frozen=True)
class LipschitzBound:
    """log10 of the path-norm bound and of the naive layer-wise bound (values: None past float64);
    ``interval``: ‖Φ_in‖_1 as a path-norm (its value, certified interval and whether it is certified)."""

    path_norm_log10: float  # the certified bound: the upper end of ‖Φ_in‖_1's interval
    naive_log10: float
    estimate_log10: float | None = None  # ‖Φ_in‖_1 as computed (float32 accuracy)
    interval: PathNorm | None = None

    def to_dict(self) -> dict:
        fields = self.interval.to_dict() if self.interval is not None else {}
        return {"bound": log10_value(self.path_norm_log10), "bound_log10": json_float(self.path_norm_log10),
                "naive": log10_value(self.naive_log10), "naive_log10": json_float(self.naive_log10),
                "naive_over_bound_log10": json_float(self.naive_log10 - self.path_norm_log10),
                "estimate_log10": json_float(self.estimate_log10),
                **{k: fields.get(k) for k in ("value", "log10", "lower_log10", "upper_log10", "upper", "certified")}}


def naive_log2(dag: Dag) -> float:
    """log2 of Σ_o size(o) · Π (ℓ∞ operator norms) along the DAG (the non-invariant bound): each
    layer's gain on the combination of its inputs' (:meth:`~onnx_pathlift.ops.LayerOp.linf_combine`)."""
    gain: dict[str, float] = {}
    for layer in dag.layers():
        handler = LAYER_OPS[layer.op]
        gain[layer.name] = handler.linf_combine([gain[i] for i in layer.inputs]) + handler.linf_gain(layer)
    terms = [gain[lname] + math.log2(math.prod(dag.layer(lname).shape)) for lname in dag.outputs.values()]
    return log2_sum(terms)


def lipschitz(model: ModelSource | Dag, input_shape=None, providers=None) -> LipschitzBound:
    """The input-space Lipschitz bound ``‖Φ_in‖_1`` (ℓ∞ → ℓ1) and the naive layer-wise one."""
    dag = model if isinstance(model, Dag) else import_model(model, input_shape)
    require(dag, "lipschitz")
    return bound_from(dag, input_path_norm(dag, providers))


def bound_from(dag: Dag, input_norm: PathNorm) -> LipschitzBound:
    """The bounds of ``dag`` given its ``‖Φ_in‖_1`` (computed elsewhere, e.g. in a bundle with its path-norms):
    the certified upper end of its interval (rounded outward, see :mod:`onnx_pathlift.graph.budget`)."""
    require(dag, "lipschitz")
    upper = input_norm.log10 if input_norm.upper_log10 is None else input_norm.upper_log10
    return LipschitzBound(upper, naive_log2(dag) * _LOG10_2, input_norm.log10, input_norm)


@dataclass
class LipschitzReport:
    """``onnx-pathlift lipschitz``: ``‖R(x) − R(x')‖_1 ≤ L·‖x − x'‖_∞`` with ``L = ‖Φ_in‖_1``."""

    model: str
    bound: LipschitzBound

    def to_dict(self) -> dict:
        return {"model": self.model, **self.bound.to_dict()}


def lipschitz_report(source: ModelSource, input_shape: InputShape = None, outputs: list[str] | None = None,
                     providers: str = "cpu") -> LipschitzReport:
    """The input-space Lipschitz bound (ℓ∞ → ℓ1) of ``source``: ``‖Φ_in‖_1``, the L1 path-norm of the
    paths that start at input neurons (certified: the upper end of its interval), beside the naive
    product of the layers' ℓ∞ operator norms."""
    return LipschitzReport(model_name(source), lipschitz(load(source, input_shape, outputs, whole=False).dag, providers=providers))


def _print(r: LipschitzReport, args) -> None:
    print(f"{r.model}: for all inputs x, x':  ‖R(x) − R(x')‖_1 ≤ L · ‖x − x'‖_∞")
    print(f"  L = ‖Φ_in‖_1 = {fmt(r.bound.path_norm_log10)}   (paths starting at input neurons)")
    print(f"  naive product of layer ℓ∞ norms × output size = {fmt(r.bound.naive_log10)}")


COMMAND = Command("lipschitz", provider, lambda args, common: lipschitz_report(args.model, providers=args.provider, **common),
                  _print, lipschitz_report)
