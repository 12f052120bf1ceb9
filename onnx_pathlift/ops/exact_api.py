"""The exact fallback's numerics, which each layer op's :meth:`~onnx_pathlift.ops.layer_op.LayerOp.exact`
declares its form on: ``log2 ‖Φ‖_q^q`` (``log2 ‖Φ‖_∞`` at q = ∞) by a float64 log-domain pass over the DAG
(:func:`onnx_pathlift.backend.exact.exact_log2`), for the norms float32 could not certify.

Each lifted tensor is held as ``log2`` of its neurons (``-inf`` for 0) with one error bound ``ε`` (in log2
units) on all its entries. A lifted neuron is ``y = Σ_i 2**t_i`` with ``t_i = a_i + x_i`` (``a_i = q·log2|w_i|``
the weight, ``x_i`` the input), ``y = s + log2 Σ_i 2**(t_i − s)``: every sum in units near its own largest
term, so nothing that matters can underflow, whatever the spread of magnitudes. A conv, pool or dense
layer takes the units ``s = A_o + X_r`` (its filter's largest ``a`` plus its window's largest ``x``) and
sums by a float64 matmul of ``2**(a − A_o)`` and ``2**(x − X_r)``; a factor below ``2**-1022`` (flushed or
subnormal) errs by at most ``2**-1021`` in those units, so a sum of ``k`` terms at least ``k·2**-900`` is
exact to ``2**-120`` relative, and a smaller one (the filter's large weights meet the window's small
inputs) is re-evaluated term by term with ``s = max_i t_i`` (then a term ``2**-1074`` below ``s`` is below
the sum's rounding). At q = ∞ every sum is a max, term by term (``‖Φ‖_∞`` is the largest path product:
the max-plus network with weights ``log2|w|``).

Error, per lifted layer, with ``u = 2**-53``, ``m`` a bound on the ``|t_i|``, the differences and ``|y|`` of
the layer and ``n`` the terms of one sum: the logs' additions and differences rounded (``≤ 3m·u``),
``exp2`` and ``log2`` (numpy's, taken at ``2**-50`` relative: 8 ulp), the sum of ``n`` non-negative terms
(``γ_n ≤ n·2**-52`` relative, plus the underflows above), the final additions (``2|y|·u``); a relative
error ``δ`` moves a log2 by ``≤ 1.5δ``. All of it is below ``ε_L = (m + n + log2(n + 1) + 4)·2**-50``. A
log-sum-exp is 1-Lipschitz in every ``t_i`` (in ∞-norm), so the inputs' and weights' errors pass through
unchanged: ``ε_out = max ε_in + ε_w + ε_L``, with ``ε_w = (max|a| + q)·2**-50`` for the weights' logs.
Moves (reshape, transpose, pad, selections) are exact. The result's interval is ``[L − ε, L + ε]``.
Cost: one float64 ``exp2`` per input window entry (im2col) at finite q, per multiply-add at q = ∞ (and
per term re-evaluated), counted (:meth:`~onnx_pathlift.ops.layer_op.LayerOp.exact_work`) and refused above
:data:`WORK_LIMIT`, as are layer ops without an exact form (then the caller reports ``value: null`` with
the reason).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PathliftError
from ..ir.dag import Layer

#: the most terms (lifted multiply-adds of one sample) the fallback evaluates: about a minute of numpy
WORK_LIMIT = 3 * 10**8
#: float64 terms per block of a layer's evaluation (64 MiB)
_BLOCK = 1 << 23
EPS = 2.0**-50


class FallbackRefused(PathliftError):
    """The exact fallback cannot evaluate this network (an op it does not know, or too much work)."""


def local_error(t_abs: float, n: int) -> float:
    """``ε_L`` of one layer (module docstring): ``t_abs`` the largest finite ``|t_i|`` or ``|y|``."""
    return (t_abs + n + math.log2(n + 1) + 4.0) * EPS


def max_abs(*arrays: np.ndarray) -> float:
    top = 0.0
    for a in arrays:
        finite = a[np.isfinite(a)]
        if finite.size:
            top = max(top, float(np.abs(finite).max()))
    return top


class LogPass:
    """The log-domain evaluation at one q (``inf``: max-plus)."""

    def __init__(self, q: float, limit: int):
        self.inf = math.isinf(q)
        self.p = 1.0 if self.inf else float(q)
        self.limit, self.spent = limit, 0

    def spend(self, work: int) -> None:
        """Count ``work`` terms; refuse past the limit."""
        self.spent += work
        if self.spent > self.limit:
            raise FallbackRefused(f"the exact float64 fallback would evaluate {self.spent:.3g} terms, above its limit "
                                  f"of {self.limit:.3g}")

    def weight(self, w: np.ndarray) -> tuple[np.ndarray, float]:
        """``p·log2|w|`` and its error."""
        with np.errstate(divide="ignore"):
            a = self.p * np.log2(np.abs(np.asarray(w, dtype=np.float64)))
        return a, (max_abs(a) + self.p) * EPS

    def reduce(self, t: np.ndarray, axis, bound: float | None = None, scratch: bool = False) -> tuple[np.ndarray, float]:
        """``log2 Σ 2**t`` (``max t`` at q = ∞) over ``axis`` (an int or a tuple), and ``ε_L``. ``bound``: an
        upper bound on every finite ``|t|`` (else computed); ``scratch``: ``t`` may be overwritten."""
        axes = axis if isinstance(axis, tuple) else (axis,)
        n = int(np.prod([t.shape[a] for a in axes]))
        top = t.max(axis=axis, keepdims=True, initial=-np.inf)
        m = max_abs(t) if bound is None else bound
        if self.inf:
            return top.squeeze(axis=axes), m * 4 * 2.0**-53
        safe = np.where(np.isfinite(top), top, 0.0)
        w = t if scratch else np.empty_like(t)
        with np.errstate(divide="ignore", under="ignore", invalid="ignore"):
            np.subtract(t, safe, out=w)
            np.exp2(w, out=w)
            y = np.log2(w.sum(axis=axis)) + safe.squeeze(axis=axes)
        return y, local_error(max(m, max_abs(y)), n)

    def add(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """``log2(2**x + 2**y)`` elementwise (``max`` at q = ∞), broadcast, and its ``ε_L``."""
        if self.inf:
            return np.maximum(x, y), 0.0
        with np.errstate(under="ignore", invalid="ignore"):
            z = np.logaddexp2(x, y)
        return z, local_error(max_abs(z, np.asarray(x), np.asarray(y)), 2)


Logs = tuple[np.ndarray, float]  # log2 of a lifted tensor's neurons, and the error bound of its entries


def biased(run: LogPass, layer: Layer, y: np.ndarray, err: float, key: str) -> Logs:
    """``y`` with the lifted bias ``|params[key]|**q`` added (broadcast), if the layer has one."""
    if key not in layer.params or not np.any(layer.params[key]):
        return np.broadcast_to(y, layer.shape), err
    b, eb = run.weight(layer.params[key])
    z, local = run.add(y, b)
    return np.broadcast_to(z, layer.shape), max(err, eb) + local


def contract(run: LogPass, patches: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, float]:
    """Per group ``g``: ``out[g, r, o] = reduce_k (patches[g, r, k] + a[g, o, k])``, a block of rows at a
    time. At finite q a float64 matmul of ``2**(patches − row max)`` and ``2**(a − filter max)``: each sum
    in the units of its own row's and filter's largest, so only a sum below ``k·2**-900`` of those units
    (where underflowed factors could matter) is re-evaluated term by term (:func:`terms`)."""
    if run.inf:
        return terms(run, patches, a)
    groups, rows, k = patches.shape
    with np.errstate(invalid="ignore"):
        top_a = a.max(axis=2, keepdims=True, initial=-np.inf)
        safe_a = np.where(np.isfinite(top_a), top_a, 0.0)
    with np.errstate(under="ignore", invalid="ignore"):
        wt = np.exp2(a - safe_a).transpose(0, 2, 1)  # (groups, k, outs)
    y = np.empty((groups, rows, a.shape[1]))
    step, local = max(1, _BLOCK // max(1, groups * max(k, a.shape[1]))), 0.0
    for i in range(0, rows, step):
        pb = patches[:, i:i + step]
        top = pb.max(axis=2, keepdims=True, initial=-np.inf)
        safe = np.where(np.isfinite(top), top, 0.0)
        with np.errstate(divide="ignore", under="ignore", invalid="ignore"):
            sums = np.matmul(np.exp2(pb - safe), wt)
            block = np.log2(sums) + safe + safe_a.transpose(0, 2, 1)
        small = (sums < k * 2.0**-900) & np.isfinite(top) & np.isfinite(top_a.transpose(0, 2, 1))
        if small.any():  # an exact zero (no finite term) is not small: it is exact
            g, r, o = np.nonzero(small)
            block[small], e = terms(run, pb[g, r][:, None, :], a[g, o][:, None, :], diagonal=True)
            local = max(local, e)
        y[:, i:i + step] = block
    bound = 2.0 * (max_abs(patches) + max_abs(a)) + 1.0  # every |difference| and |log| in the matmul route
    return y, max(local, local_error(max(bound, max_abs(y)), k))


def terms(run: LogPass, patches: np.ndarray, a: np.ndarray, diagonal: bool = False) -> tuple[np.ndarray, float]:
    """``reduce_k (patches[g, r, k] + a[g, o, k])`` term by term, a block of rows at a time (``diagonal``:
    row ``j`` with filter ``j`` only, both given as ``(n, 1, k)``; the result is then ``(n,)``)."""
    groups, rows, k = patches.shape
    if diagonal:
        patches, a = patches.transpose(1, 0, 2), a.transpose(1, 0, 2)  # one group of n rows, n filters
        groups, rows = 1, patches.shape[1]
        run.spend(rows * k)
    outs = 1 if diagonal else a.shape[1]
    y = np.empty((groups, rows, outs))
    step, local = max(1, _BLOCK // max(1, groups * outs * k)), 0.0
    buf = np.empty((groups, min(step, rows), outs, k))
    bound = (max_abs(patches) + max_abs(a)) * (1.0 + 2.0**-52)  # every |t| = |fl(x + a)|
    for i in range(0, rows, step):
        t = buf[:, :min(step, rows - i)]
        with np.errstate(invalid="ignore"):
            if diagonal:
                np.add(patches[:, i:i + step, None, :], a[:, i:i + step, None, :], out=t)
            else:
                np.add(patches[:, i:i + step, None, :], a[:, None, :, :], out=t)
        y[:, i:i + step], e = run.reduce(t, -1, bound, scratch=True)
        local = max(local, e)
    return (y.reshape(-1) if diagonal else y), local


def windowed(run: LogPass, layer: Layer, v: np.ndarray, a: np.ndarray, pads: list[int]) -> tuple[np.ndarray, float]:
    """The reductions of a windowed layer (a conv, a pool) over its input ``v`` padded with ``-inf``
    (``pads``), its windows gathered (im2col, a block of output rows at a time), against the kernel
    ``a = p·log2|w|`` of shape ``(groups, C_out/groups, C_in/groups, *k)``: the output (``layer.shape``)
    and ``ε_L``."""
    groups, rank = a.shape[0], len(layer.shape) - 2
    kernel, strides = a.shape[3:], layer.attrs["strides"]
    dil = layer.attrs.get("dilations") or [1] * rank
    padded = np.pad(v, [(0, 0), (0, 0)] + list(zip(pads[:rank], pads[rank:])), constant_values=-np.inf)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    win = np.lib.stride_tricks.sliding_window_view(padded, span, axis=tuple(range(2, 2 + rank)))
    out_sp = layer.shape[2:]
    win = win[(slice(None), slice(None)) + tuple(slice(0, o * s, s) for o, s in zip(out_sp, strides))
              + tuple(slice(None, None, d) for d in dil)]  # (n, c, *out, *k), a view
    filters, parts, local = a.reshape(groups, a.shape[1], -1), [], 0.0
    per_index = math.prod(win.shape[:2] + win.shape[3:])  # im2col entries per index of the first output axis
    step = max(1, _BLOCK // per_index)
    for i in range(0, out_sp[0], step):  # the im2col copy a block of output rows at a time
        block = win[:, :, i:i + step]
        n, c, sp = block.shape[0], block.shape[1], block.shape[2:2 + rank]
        patches = block.reshape(n, groups, c // groups, math.prod(sp), math.prod(kernel)).transpose(1, 0, 3, 2, 4)
        y, e = contract(run, patches.reshape(groups, n * math.prod(sp), -1), filters)
        parts.append(y.reshape(groups, n, *sp, a.shape[1]).transpose(1, 0, rank + 2, *range(2, rank + 2)).reshape(n, -1, *sp))
        local = max(local, e)
    return np.concatenate(parts, axis=2).reshape(layer.shape), local


def reduced(run: LogPass, layer: Layer, x: Logs, axes: tuple[int, ...], mean: bool, count: int) -> Logs:
    """A sum (max at q = ∞) over ``axes``, weights 1 or ``count**-q`` (a mean), kept as size-1 axes."""
    v, err = x
    y, local = run.reduce(v, axes)
    if mean:
        y = y - run.p * math.log2(count)
        local += (max_abs(y) + run.p * math.log2(count)) * EPS
    return np.expand_dims(y, axes).reshape(layer.shape), err + local
