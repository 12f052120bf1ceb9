"""A graph input as a layer: the neurons where paths start.

Re-emitted as the graph input itself. Lifted: the fed tensor at exponent 0 — all ones by default,
or non-negative values up to ``2**attrs["log2_max"]`` when the lifted network is fed otherwise (a
lifted network reads ``Σ_paths Π|w|**q · x_start``); ``log2_max = -inf`` means zeros, so the static
exponent is ``-inf`` and every path from it weighs 0. It has no parameters, passes no backward mass
further back, and its ℓ∞ gain is that of the network's input itself (1).
"""

from __future__ import annotations

import numpy as np

from ..graph.builder import GraphBuilder, LiftBuilder, Scaled
from ..ir.dag import Layer
from .exact_api import EPS, max_abs
from .layer_op import OneLipschitz, ParameterFree
from .registry import layer_op


@layer_op
class Input(ParameterFree, OneLipschitz):
    op = "input"
    kind = "input"

    def emit(self, b: GraphBuilder, layer: Layer, xs: list[str]) -> str:
        return layer.name

    def bound(self, layer, bs, shapes, q):
        return np.asarray(layer.attrs.get("log2_max", 0.0))

    def lift(self, b: LiftBuilder, layer: Layer, xs: list[Scaled], q: float) -> Scaled:
        if not b.static:
            return Scaled(layer.name, b.scalar(0.0), 0.0)
        zero = bool(np.isneginf(self.bound(layer, [], [], q)))
        return Scaled(layer.name, np.full((), -np.inf) if zero else 0, 0.0)

    def adjoint(self, b, layer, xs, g, in_shapes):
        return [], {}

    def linf_combine(self, ins: list[float]) -> float:
        return 0.0  # ‖x‖_∞ itself

    def exact(self, run, layer, xs, in_shapes, feeds):
        """The lifted input: its ``feeds`` logs (error ``(max|v| + 1)·2**-50``), else all ``log2_max``."""
        if layer.name in feeds and layer.attrs.get("log2_max", 0.0) > -np.inf:
            v = np.asarray(feeds[layer.name], dtype=np.float64)
            return np.broadcast_to(v, layer.shape), (max_abs(v) + 1.0) * EPS
        return np.full(layer.shape, float(layer.attrs.get("log2_max", 0.0))), 0.0
