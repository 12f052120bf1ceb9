"""Static bounds of lifted tensors: ``lu`` is log2 of an elementwise upper bound of a lifted tensor
(what :meth:`~onnx_pathlift.ops.layer_op.LayerOp.bound` returns), computed in float64 and rounded outward."""

from __future__ import annotations

import math

import numpy as np

from .exponents import CACHE_BLOCK, abs_power_into, log2_range, pow_exponent, pow_row_reduce, power32
from .numeric import PAIRWISE_BLOCK, column_sums


def along_axis(lu: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Max of a bound (broadcastable to ``shape``) over every axis but ``axis``: a vector of ``shape[axis]``."""
    lu = np.asarray(lu, dtype=np.float64)
    lu = lu.reshape((1,) * (len(shape) - lu.ndim) + lu.shape)
    axis %= len(shape)
    others = tuple(i for i in range(lu.ndim) if i != axis and lu.shape[i] > 1)
    v = (lu.max(axis=others, keepdims=True) if others else lu).reshape(-1)
    return np.broadcast_to(v, (shape[axis],)) if v.size == 1 else v


def log2_weighted_sum(a: np.ndarray, rows: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray:
    """An upper bound on ``log2(|rows|**q @ 2**lu)`` for ``rows`` (outputs × inputs, a view of the
    parameter ``a``) whose powers lose no entry to underflow, without overflow (terms
    ``2**(lu − max lu)`` that underflow are bounded by :func:`log2_outward`); float64, a block of rows
    at a time (:func:`~onnx_pathlift.graph.exponents.pow_row_reduce`)."""
    top = float(np.max(lu, initial=-np.inf))
    if not np.isfinite(top):
        return np.full(rows.shape[0], -np.inf)
    fast = log2_power_matvec32(a, rows, q, lu)
    if fast is not None:
        return fast
    low = float(np.min(lu[np.isfinite(lu)]))  # -inf terms are exact zeros, not underflow
    weights = np.exp2(lu - top)
    sums, e = pow_row_reduce(a, rows, q, lambda m: m @ weights)
    return log2_outward(sums, rows.shape[1], 0.0, low - top) + top + e


def pow_row_sums(a: np.ndarray, rows: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    """``Σ_j |rows[i, j]|**q · 2**-e`` per row ``i`` and ``e`` (``rows``: a 2-D view of the parameter ``a``):
    the bits of ``pow_row_reduce(a, rows, q, lambda m: m.sum(axis=1), row_wise=True)``, a block at a time
    through one reused buffer holding the block transposed (each row's terms one column, summed by
    :func:`~onnx_pathlift.graph.numeric.column_sums` in numpy's order), and where :func:`_unscaled_exact`
    allows, the unscaled powers summed and the sums then scaled by ``2**-e`` (a pass fewer, the same bits)."""
    e, log_domain = pow_exponent(a, q)
    n = rows.shape[1]
    if log_domain or not rows.size or n > PAIRWISE_BLOCK:
        return pow_row_reduce(a, rows, q, lambda m: m.sum(axis=1), row_wise=True)
    step = max(1, CACHE_BLOCK // n)
    buf = np.empty((n, min(step, rows.shape[0])))
    unscaled = _unscaled_exact(a, q, n)
    sums = np.empty(rows.shape[0])
    with np.errstate(under="ignore"):
        for i in range(0, rows.shape[0], step):
            k = min(step, rows.shape[0] - i)
            # one term per row (a 1x1 kernel): the sums are the powers, written in place
            m = abs_power_into(rows[i:i + k].T, q, sums[None, i:i + k] if n == 1 else buf[:, :k])
            if not unscaled:
                m *= math.ldexp(1.0, -e)
            if n > 1:
                column_sums(m, sums[i:i + k])
    if unscaled:
        sums *= math.ldexp(1.0, -e)
    return sums, e


def _unscaled_exact(a: np.ndarray, q: float, n: int) -> bool:
    """Whether sums of ``n`` entries of ``|a|**q`` (float64), scaled by ``2**-e`` afterwards, equal the sums
    of the entries scaled first, bit for bit: so when every nonzero power, partial sum and their scaled
    values are normal float64 numbers (a power-of-two scaling is then exact, and commutes with each rounded
    addition). Outside the log domain of :func:`~onnx_pathlift.graph.exponents.pow_exponent` the scaled
    values lie in ``[2**-1001, 2n)``; the unscaled ones in ``[2**(q·low) / 2, 2**(q·top) · 2]`` (``**q``
    within an ulp)."""
    low, top = log2_range(a)
    return q * low >= -1020 and q * top + math.log2(max(n, 1)) <= 1020


def log2_max_row_sum(a: np.ndarray, rows: np.ndarray, q: float) -> float:
    """An upper bound on ``log2 max_o Σ_i |rows[o, i]|**q · 2**-e`` (``e`` of
    :func:`~onnx_pathlift.graph.exponents.pow_exponent`; ``rows`` a 2-D view of the parameter ``a``): the
    largest lifted output of ``|a|**q · 2**-e`` on an all-ones input (``-inf`` when ``a`` is 0)."""
    top = float(np.max(log2_weighted_sum(a, rows, q, np.zeros(rows.shape[1])), initial=-np.inf))
    return top - pow_exponent(a, q)[0] if np.isfinite(top) else -math.inf


#: float32 unit roundoff
_U32 = 2.0**-24


def log2_power_matvec32(a: np.ndarray, rows: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray | None:
    """An upper bound on ``log2(|rows|**q @ 2**lu)`` (``rows``: outputs × inputs, a view of the float32
    parameter ``a``; ``lu`` per input) computed in float32, a block of rows at a time, or None where
    this does not apply (then the float64 route is taken). For q = 1, 2 when every nonzero product
    ``|w|**q · 2**(lu − max lu)`` is a normal float32 and no sum can overflow, with fewer than 2^20
    inputs per output; a row of zero products gives ``-inf``, exactly.

    Error (Higham, nonnegative terms, no underflow): with ``v = fl32(2**(lu − top))`` (relative error
    ≤ u), ``|w|²`` rounded once (≤ u), and the float32 dot products of ``n`` terms (``ŝ ≥ s(1 − γ_n)``
    in any summation order, ``γ_n = nu/(1 − nu)``): ``s ≤ ŝ / ((1 − u)² (1 − γ_n))``, rounded up once
    more in float64 (``1 + 2**-48`` covers float64's ``exp2`` and this formula), and ``2**-40`` added to
    the log2 (its own rounding)."""
    n = rows.shape[1]
    top = float(np.max(lu, initial=-np.inf))
    if q not in (1.0, 2.0) or a.dtype != np.float32 or not 0 < n < 2**20 or not np.isfinite(top):
        return None
    low_w, top_w = log2_range(a)
    if top_w == -math.inf:
        return np.full(rows.shape[0], -np.inf)
    spread = float(lu[np.isfinite(lu)].min()) - top  # each factor 2**(lu − top) and each product: normal float32
    if q * top_w + math.log2(n) > 125 or spread < -125 or q * low_w + spread < -125:
        return None
    sums = _power_matvec(rows, q, np.exp2(lu - top).astype(np.float32))
    gamma = n * _U32 / (1.0 - n * _U32)
    with np.errstate(divide="ignore"):
        return np.log2(sums / ((1.0 - _U32) ** 2 * (1.0 - gamma)) * (1.0 + 2.0**-48)) + (top + 2.0**-40)


def _power_matvec(rows: np.ndarray, q: float, v: np.ndarray) -> np.ndarray:
    """``|rows|**q @ v`` in float32, returned in float64. Rows laid out contiguously (or their
    transpose) are powered whole, in memory order, and the powers kept for the lift of the same
    weights (:func:`~onnx_pathlift.graph.exponents.power32`); other layouts a block of rows at a time."""
    for src, transposed in ((rows, False), (rows.T, True)):
        if src.flags.c_contiguous:
            m = power32(src, q, keep=True)
            return np.asarray(v @ m if transposed else m @ v, dtype=np.float64)
    step = max(1, 2**22 // rows.shape[1])
    sums = np.empty(rows.shape[0])
    for i in range(0, rows.shape[0], step):
        sums[i:i + step] = power32(rows[i:i + step], q) @ v
    return sums


def log2_rows(w: np.ndarray, q: float, lu: np.ndarray) -> np.ndarray:
    """An upper bound on ``log2 Σ_c |w[o, c]|**q · 2**lu[o, c]`` per row ``o`` (``lu`` broadcast against
    ``w``), entry by entry in the log domain (each row scaled by its own largest term, so nothing that
    matters underflows), in chunks of rows to bound memory. For the ranges where one scale per
    tensor would lose entries (large q, extreme weights)."""
    out = np.empty(w.shape[0])
    n = w.shape[1] if w.ndim > 1 else 1
    step = max(1, 2**22 // max(n, 1))
    lu = np.broadcast_to(lu, w.shape)
    for i in range(0, w.shape[0], step):
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = q * np.log2(np.abs(w[i:i + step].astype(np.float64))) + lu[i:i + step]
        top = lg.max(axis=1, initial=-np.inf)
        safe = np.where(np.isfinite(top), top, 0.0)
        sums = np.exp2(lg - safe[:, None]).sum(axis=1)
        out[i:i + step] = np.where(np.isfinite(top), log2_outward(sums, n, 1.0, 0.0) + safe, -np.inf)
    return out


def log2_outward(sums: np.ndarray, n: int, lost: float, low: float) -> np.ndarray:
    """``log2`` of non-negative float64 sums of ``n`` products, rounded up: the sums' rounding
    (``n·2**-52`` relative) and, where a factor may have underflowed (``lost`` > 0, or input terms
    ``2**low`` below float64's range), ``n·2**-1070`` added."""
    slack = n * 2.0**-1070 if (lost > 0 or low < -1000) else 0.0
    with np.errstate(divide="ignore"):
        return np.log2(sums * (1.0 + (n + 2) * 2.0**-52) + slack)


def channel_vector(scale: np.ndarray, out_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """``scale`` as a vector along ``axis`` of ``out_shape`` if it broadcasts along that axis only."""
    s = np.asarray(scale)
    if s.ndim > len(out_shape):
        return None
    padded = (1,) * (len(out_shape) - s.ndim) + s.shape
    axis %= len(out_shape)
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, out_shape[axis]):
        return None  # it varies along other axes, or widens this one (broadcasting the layer's output)
    return np.broadcast_to(s.reshape(-1), (out_shape[axis],))
