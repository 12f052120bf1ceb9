"""The error budget of a lifted network: a certified interval around its float32 result.

The lifted network is a non-negative affine network run in float32, each value held as ``T · 2**k``
with a static exponent ``k`` per neuron (or channel). Let ``U_v = 2**bound_v`` be the static upper
bound of neuron ``v`` (each handler's ``bound``, computed in float64 and rounded up, satisfies
``U_out ≥ f(U_in)`` for the layer's lifted map ``f``). Non-negative float32 arithmetic has two error
sources:

* **rounding**, relative, at most ``u = 2**-24`` per operation. A neuron computed with ``c``
  (its handler's ``rounding_ops``: ``n + 3`` for a dot product of ``n`` terms, Higham's ``γ_n``) from
  inputs of relative error ``≤ γ_in`` has relative error ``≤ γ_in + c·u``; along the DAG, ``γ`` is the longest path of ``Σ c·u`` (plus the float64
  final sum).
* **underflow**, absolute, at most ``τ = 2**-126`` per operation in the units of the exponent it is
  computed at (flush-to-zero included): at a neuron ``v`` of layer ``L`` whose values are held with
  ``2**k ≤ 2**ρ_L · U_v``, at most ``2c_L · τ · 2**ρ_L · U_v`` (products and additions each).

An error vector ``e ≤ β·U`` at a layer's inputs stays ``≤ β·U`` at its outputs (the linear part of
the layer is monotone and ``U_out ≥ f(U_in)``), so the mass lost to underflow at an output ``o`` is
at most ``E_o = τ · Σ_L 2c_L 2**ρ_L · U_o``, however many paths vanished. With ``R`` the exact value
and ``R_c`` the computed one: ``R_c/(1+γ) ≤ R ≤ R_c/(1−γ) + (1+γ)·E``, and always ``R ≤ U``.
No neuron-level check is needed: the bound holds for every neuron at once, including neurons that
flushed to 0. When ``E`` is not small against ``R_c`` the static scales were too coarse for float32
and the caller falls back (see :class:`onnx_pathlift.backend.norm.LiftedSession`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .numeric import log2_sum

TAU_LOG2 = -126.0  # underflow: absolute error of one float32 operation, in the units of its exponent
U_LOG2 = -24.0  # float32 unit roundoff
#: the computed value is certified when the underflow term is below this fraction of it
CERTIFIED_LOG2 = -20.0


@dataclass
class Budget:
    """Per layer of a lifted network: its rounding operations per neuron and ``ρ`` (log2 of the
    largest ``2**k / U_v`` of its values; ``None`` in dynamic mode, where exponents are run-time
    values); per analysed output: ``log2`` of the static upper bound ``U_o`` (summed over its neurons)."""

    ops: dict[str, int] = field(default_factory=dict)
    rho: dict[str, float | None] = field(default_factory=dict)
    inputs: dict[str, list[str]] = field(default_factory=dict)
    bound_log2: dict[str, float] = field(default_factory=dict)  # analysed output name -> log2 U_o

    _cache: dict[str, float | None] = field(default_factory=dict, repr=False)  # gamma, the underflow factor, U per output set

    def add(self, name: str, inputs: list[str], ops: int, rho: float | None) -> None:
        self.ops[name], self.rho[name], self.inputs[name] = ops, rho, list(inputs)
        self._cache.clear()

    def gamma(self) -> float:
        """The relative rounding error bound: the longest path of ``Σ c·u`` through the layers."""
        if "gamma" not in self._cache:
            self._cache["gamma"] = self._gamma()
        return self._cache["gamma"]

    def _gamma(self) -> float:
        path: dict[str, float] = {}
        for name, ops in self.ops.items():  # insertion order is topological
            path[name] = ops + max((path.get(i, 0.0) for i in self.inputs[name]), default=0.0)
        return max(path.values(), default=0.0) * 2.0**U_LOG2 + 2.0**-40  # + the float64 final sums

    def paths_log2(self, outputs: dict[str, int]) -> float:
        """An upper bound on ``log2`` of the number of paths into the analysed outputs (``{layer:
        neurons}``): a neuron of layer ``L`` has at most ``c_L − 1`` predecessors (``rounding_ops``
        counts at least a product and an addition per incoming edge) plus one bias start, so
        ``N_L ≤ 1 + c_L · max N_pred``."""
        n: dict[str, float] = {}
        for name, ops in self.ops.items():
            n[name] = log2_sum([0.0, math.log2(ops) + max((n.get(i, 0.0) for i in self.inputs[name]), default=0.0)])
        return log2_sum([n.get(layer, 0.0) + math.log2(size) for layer, size in outputs.items()])

    def underflow_factor_log2(self) -> float | None:
        """``log2(τ Σ_L 2c_L 2**ρ_L)``: ``E_o`` is this times ``U_o`` (None in dynamic mode)."""
        if "factor" not in self._cache:
            self._cache["factor"] = self._underflow_factor_log2()
        return self._cache["factor"]

    def _underflow_factor_log2(self) -> float | None:
        if any(r is None for r in self.rho.values()):
            return None
        return TAU_LOG2 + 1.0 + log2_sum([math.log2(c) + r for c, r in zip(self.ops.values(), self.rho.values())])

    def interval(self, computed_log2: float, outputs: list[str]) -> tuple[float, float, bool]:
        """``(lower, upper, certified)`` on ``log2 R`` for ``R`` summed over ``outputs``, from the
        computed ``log2 R_c``. ``certified``: the underflow term is below ``2**CERTIFIED_LOG2 · R_c``."""
        g = self.gamma()
        key = "U " + "\0".join(outputs)
        if key not in self._cache:
            self._cache[key] = log2_sum([self.bound_log2[o] for o in outputs])
        total = self._cache[key]
        if total == -math.inf:
            return -math.inf, -math.inf, True  # every output neuron is bounded by 0
        u = total + math.log2(1.0 + g)  # U, rounded up once more
        lower = computed_log2 - math.log2(1.0 + g)
        factor = self.underflow_factor_log2()
        if math.isnan(computed_log2):  # no computed value: the static bound alone
            return -math.inf, u, False
        if factor is None:
            return min(lower, u), u, False
        e = factor + total + math.log2(1.0 + g)
        upper = min(u, log2_sum([computed_log2 - math.log2(1.0 - g), e]))
        return min(lower, upper), upper, e - computed_log2 <= CERTIFIED_LOG2
