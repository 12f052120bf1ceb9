"""Numbers kept as logarithms: the one log-sum-exp, the plain value where float64 holds it, the JSON form.

Path-norms and bounds overflow float64 easily (a deep network's ‖Φ‖ reaches 10**400), so they are
computed and kept as log2 / log10; reports give both the log10 and, where it fits, the value.

Log-sum-exp, the one home: ``log_b Σ b**l_i = m + log_b Σ b**(l_i − m)`` with ``m = max_i l_i``. Every
shifted term lies in ``[0, 1]`` and the largest is exactly 1, so nothing overflows and the sum lies in
``[1, n]``; terms more than ~1074 (base 2) below ``m`` underflow to 0, which loses less than one unit in the
last place of the sum. ``l_i = -inf`` is a term 0: ``-inf − m = -inf`` and ``b**-inf = 0`` for finite ``m``;
when every term is 0 (or there is none) ``m = -inf`` and the result is ``-inf`` at once, never the
``-inf − (-inf) = nan`` that a naive shift would give (nor its RuntimeWarning).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

#: the largest log10 turned into a plain value: ``10**308.25 ≈ 1.78e308`` stays below float64's
#: maximum (``≈ 10**308.2547``) with room for the rounding of the power
LOG10_VALUE_MAX = 308.25


def log10_value(log10: float) -> float | None:
    """``10**log10``: 0 for ``-inf``, None for NaN and past :data:`LOG10_VALUE_MAX` (float64's range)."""
    if log10 == -math.inf:
        return 0.0
    return 10.0**log10 if log10 < LOG10_VALUE_MAX else None


def json_float(x: float | None) -> float | None:
    """``x`` for JSON: None for None, NaN and ±inf (JSON has no such numbers)."""
    return x if x is not None and math.isfinite(x) else None


def _log_sum(logs: Iterable[float], power: Callable[[float], float], log: Callable[[float], float]) -> float:
    """``m + log(Σ power(l_i − m))``, ``m = max l_i``; the sum by ``math.fsum`` (correctly rounded)."""
    logs = list(logs)
    top = max(logs, default=-math.inf)
    return top if top == -math.inf else top + log(math.fsum(power(v - top) for v in logs))


def log2_sum(logs: Iterable[float]) -> float:
    """``log2 Σ 2**l_i`` without overflow (``-inf`` when every term is 0 or there is none)."""
    return _log_sum(logs, math.exp2, math.log2)


def log10_sum(logs: Iterable[float]) -> float:
    """``log10 Σ 10**l_i`` without overflow (``-inf`` when every term is 0 or there is none)."""
    return _log_sum(logs, lambda x: 10.0**x, math.log10)


def log2_sum_scaled(k, t: np.ndarray | None = None, shape: tuple[int, ...] | None = None) -> float:
    """``log2 Σ_i t_i · 2**k_i`` over a tensor (``t ≥ 0`` finite, 1 where None; ``k`` broadcast to ``t``'s
    shape or ``shape``), the log-sum-exp above with weights: ``m`` is the largest ``k_i`` of a nonzero term
    (so every ``2**(k_i − m) ≤ 1`` is exact or underflows harmlessly) and the sum is numpy's (pairwise).
    A single exponent is factored out exactly: ``log2(Σ t) + k``. ``-inf`` when every term is 0."""
    k = np.asarray(k, dtype=np.float64)
    if t is None:
        return _log2_sum_broadcast(k, tuple(shape if shape is not None else k.shape))
    if k.size == 1:
        total = float(np.asarray(t, dtype=np.float64).sum())
        return math.log2(total) + float(k.reshape(-1)[0]) if total > 0 else -math.inf
    k = np.broadcast_to(k, np.shape(t))
    mask = (np.asarray(t) > 0) & (k > -np.inf)
    if not mask.any():
        return -math.inf
    top = float(k[mask].max())
    with np.errstate(under="ignore"):
        terms = np.exp2(np.where(mask, k - top, -np.inf))  # terms left out (t = 0 or k = -inf) are exactly 0
    return top + math.log2(float((np.asarray(t, dtype=np.float64) * terms).sum()))


def _log2_sum_broadcast(k: np.ndarray, shape: tuple[int, ...]) -> float:
    """``log2 Σ 2**k_i`` over ``k`` broadcast to ``shape``, never materialised there: broadcasting repeats
    every stored entry ``prod(shape) / k.size`` times, so the sum over the stored entries is scaled by that."""
    if np.broadcast_shapes(k.shape, shape) != shape:
        raise ValueError(f"exponents of shape {k.shape} for a tensor of shape {shape}")
    mask = k > -np.inf
    if not mask.any():
        return -math.inf
    top = float(k[mask].max())
    with np.errstate(under="ignore"):
        total = float(np.exp2(np.where(mask, k - top, -np.inf)).sum())
    return top + math.log2(total * (math.prod(shape) // k.size))


#: numpy sums runs of up to this many float64 terms with eight accumulators; longer runs are split in halves
PAIRWISE_BLOCK = 128


def column_sums(t: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[j] = Σ_i t[i, j]`` for ``t`` of ``n ≤`` :data:`PAIRWISE_BLOCK` rows, added in the order numpy's
    ``t.T.sum(axis=1)`` adds each row's terms (its pairwise summation: below 8 terms one after the other;
    else 8 running sums of every 8th term, combined as ``((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))``,
    then the remaining terms one by one): the same bits, each addition a whole row of ``t`` at once, where
    numpy's reduction along short rows runs its loop once per row."""
    n = t.shape[0]
    if n < 8:
        np.copyto(out, t[0])
        for row in t[1:]:
            out += row
        return out
    r = t[:8].copy()
    full = n - n % 8
    for i in range(8, full, 8):
        r += t[i:i + 8]
    r[0::2] += r[1::2]  # r0 + r1, r2 + r3, r4 + r5, r6 + r7
    r[0::4] += r[2::4]  # (r0 + r1) + (r2 + r3), (r4 + r5) + (r6 + r7)
    np.add(r[0], r[4], out=out)
    for row in t[full:]:
        out += row
    return out
