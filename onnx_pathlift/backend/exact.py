"""The exact fallback: ``log2 ‖Φ‖_q^q`` (``log2 ‖Φ‖_∞`` at q = ∞) by a float64 log-domain pass over the
DAG, for the norms float32 could not certify.

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
per term re-evaluated), counted and refused above :data:`WORK_LIMIT`, as are layer ops it does not know
(then the caller reports ``value: null`` with the reason).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PathliftError
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS
from ..ops.layer_op import MovesNeurons
from ..ops.pool import _divisors_log2, _sum_pool_pads

#: the most terms (lifted multiply-adds of one sample) the fallback evaluates: about a minute of numpy
WORK_LIMIT = 3 * 10**8
#: float64 terms per block of a layer's evaluation (64 MiB)
_BLOCK = 1 << 23
_EPS = 2.0**-50


class FallbackRefused(PathliftError):
    """The exact fallback cannot evaluate this network (an op it does not know, or too much work)."""


def _local_error(t_abs: float, n: int) -> float:
    """``ε_L`` of one layer (module docstring): ``t_abs`` the largest finite ``|t_i|`` or ``|y|``."""
    return (t_abs + n + math.log2(n + 1) + 4.0) * _EPS


def _max_abs(*arrays: np.ndarray) -> float:
    top = 0.0
    for a in arrays:
        finite = a[np.isfinite(a)]
        if finite.size:
            top = max(top, float(np.abs(finite).max()))
    return top


class _Pass:
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
        return a, (_max_abs(a) + self.p) * _EPS

    def reduce(self, t: np.ndarray, axis, bound: float | None = None, scratch: bool = False) -> tuple[np.ndarray, float]:
        """``log2 Σ 2**t`` (``max t`` at q = ∞) over ``axis`` (an int or a tuple), and ``ε_L``. ``bound``: an
        upper bound on every finite ``|t|`` (else computed); ``scratch``: ``t`` may be overwritten."""
        axes = axis if isinstance(axis, tuple) else (axis,)
        n = int(np.prod([t.shape[a] for a in axes]))
        top = t.max(axis=axis, keepdims=True, initial=-np.inf)
        m = _max_abs(t) if bound is None else bound
        if self.inf:
            return top.squeeze(axis=axes), m * 4 * 2.0**-53
        safe = np.where(np.isfinite(top), top, 0.0)
        w = t if scratch else np.empty_like(t)
        with np.errstate(divide="ignore", under="ignore", invalid="ignore"):
            np.subtract(t, safe, out=w)
            np.exp2(w, out=w)
            y = np.log2(w.sum(axis=axis)) + safe.squeeze(axis=axes)
        return y, _local_error(max(m, _max_abs(y)), n)

    def add(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """``log2(2**x + 2**y)`` elementwise (``max`` at q = ∞), broadcast, and its ``ε_L``."""
        if self.inf:
            return np.maximum(x, y), 0.0
        with np.errstate(under="ignore", invalid="ignore"):
            z = np.logaddexp2(x, y)
        return z, _local_error(_max_abs(z, np.asarray(x), np.asarray(y)), 2)


def _work(layer: Layer, dag: Dag, inf: bool) -> int:
    """``exp2`` (at q = ∞: max-plus terms) the pass evaluates for ``layer`` up front: at finite q a conv,
    pool or dense layer costs its input windows (im2col), its multiply-adds going to a float64 matmul."""
    size = math.prod(layer.shape)
    x = dag.layer(layer.inputs[0]).shape if layer.inputs else layer.shape
    if layer.op in ("conv", "maxpool", "avgpool"):
        if inf and layer.op == "conv":
            return size * math.prod(layer.params["W"].shape[1:])  # its multiply-adds
        taps = math.prod(layer.params["W"].shape[2:] if layer.op == "conv" else layer.attrs["kernel_shape"])
        return math.prod(layer.shape[:1] + layer.shape[2:]) * x[1] * taps  # its windows
    if layer.op == "dense":
        return size * x[-1] if inf else math.prod(x)
    return max(size, *(math.prod(dag.layer(i).shape) for i in layer.inputs)) if layer.inputs else size


def exact_log2(dag: Dag, q: float, feeds_log2: dict[str, np.ndarray] | None = None,
               outputs: list[str] | None = None, limit: int | None = None) -> tuple[float, float]:
    """``(L, ε)``: ``log2`` of ``‖Φ‖_q^q`` summed over the analysed ``outputs`` (default all; ONNX names),
    ``log2 ‖Φ‖_∞`` at q = ∞, with ``|L − exact| ≤ ε`` (module docstring). ``feeds_log2``: log2 of the
    lifted inputs (default all ones, or 0 for an input the DAG marks as such). ``limit``: the most terms
    (default :data:`WORK_LIMIT`). Raises :class:`FallbackRefused` with the reason when it does not apply."""
    run, values = _Pass(q, WORK_LIMIT if limit is None else limit), {}
    unknown = [x for x in dag.layers() if x.op not in _OPS and not isinstance(LAYER_OPS.get(x.op), MovesNeurons)]
    if unknown:
        raise FallbackRefused(f"the exact float64 fallback does not evaluate {unknown[0].op!r} layers (layer {unknown[0].name!r})")
    run.spend(sum(_work(layer, dag, run.inf) for layer in dag.layers()))
    outs = [dag.outputs[o] for o in (outputs if outputs is not None else list(dag.outputs))]
    readers = {name: dag.graph.out_degree(name) + (name in outs) for name in dag.graph.nodes}
    for layer in dag.layers():
        values[layer.name] = _layer(run, layer, [values[i] for i in layer.inputs], dag, feeds_log2 or {})
        for i in set(layer.inputs):  # a tensor no later layer reads is dropped
            readers[i] -= dag.graph.number_of_edges(i, layer.name)
            if readers[i] <= 0:
                del values[i]
    flat = np.concatenate([values[name][0].reshape(-1) for name in outs])
    total, local = run.reduce(flat, 0)
    return float(total), max(values[name][1] for name in outs) + local


#: the layer ops the pass evaluates (and every op that only moves neurons)
_OPS = frozenset({"input", "relu", "sum", "concat", "affine", "conv", "maxpool", "avgpool", "dense", "globalpool", "reduce"})
Logs = tuple[np.ndarray, float]  # log2 of a lifted tensor's neurons, and the error bound of its entries


def _layer(run: _Pass, layer: Layer, xs: list[Logs], dag: Dag, feeds: dict[str, np.ndarray]) -> Logs:
    """One lifted layer in the log domain."""
    op, err = layer.op, max((e for _, e in xs), default=0.0)
    if op == "input":
        if layer.name in feeds and layer.attrs.get("log2_max", 0.0) > -np.inf:
            v = np.asarray(feeds[layer.name], dtype=np.float64)
            return np.broadcast_to(v, layer.shape), (_max_abs(v) + 1.0) * _EPS
        return np.full(layer.shape, float(layer.attrs.get("log2_max", 0.0))), 0.0
    if op == "relu":
        return xs[0]
    if isinstance(LAYER_OPS.get(op), MovesNeurons):
        return np.ascontiguousarray(LAYER_OPS[op].move(layer, xs[0][0])).reshape(layer.shape), err
    if op in ("sum", "concat"):
        return _joined(run, layer, xs, err)
    if op == "affine":
        return _affine(run, layer, xs[0])
    if op in ("conv", "maxpool", "avgpool"):
        return _windowed(run, layer, xs[0], dag.layer(layer.inputs[0]).shape)
    if op == "dense":
        return _dense(run, layer, xs[0])
    return _reduced(run, layer, xs[0])  # globalpool, reduce


def _joined(run: _Pass, layer: Layer, xs: list[Logs], err: float) -> Logs:
    """A sum (every input broadcast to the output) or a concatenation."""
    if layer.op == "concat":
        return np.concatenate([v for v, _ in xs], axis=layer.attrs["axis"]), err
    y, local = np.broadcast_to(xs[0][0], layer.shape), 0.0
    for v, _ in xs[1:]:
        y, e = run.add(y, v)
        local += e
    return np.broadcast_to(y, layer.shape), err + local


def _biased(run: _Pass, layer: Layer, y: np.ndarray, err: float, key: str) -> Logs:
    """``y`` with the lifted bias ``|params[key]|**q`` added (broadcast), if the layer has one."""
    if key not in layer.params or not np.any(layer.params[key]):
        return np.broadcast_to(y, layer.shape), err
    b, eb = run.weight(layer.params[key])
    z, local = run.add(y, b)
    return np.broadcast_to(z, layer.shape), max(err, eb) + local


def _affine(run: _Pass, layer: Layer, x: Logs) -> Logs:
    y, err = x
    if "scale" in layer.params:
        s, es = run.weight(layer.params["scale"])
        with np.errstate(invalid="ignore"):
            y = y + s  # -inf + finite: -inf; a zero scale on a zero input: -inf + -inf
        err += es + _max_abs(y) * 2.0**-52
    return _biased(run, layer, y, err, "bias")


def _dense(run: _Pass, layer: Layer, x: Logs) -> Logs:
    """``x @ |W|**q`` (side right) or ``|W|**q @ x`` (side left), 2-D ``W``."""
    w, (v, err) = layer.params["W"], x
    if w.ndim != 2:
        raise FallbackRefused(f"the exact float64 fallback evaluates 2-D dense weights only (layer {layer.name!r})")
    a, ea = run.weight(w)
    right = layer.attrs["side"] == "right"
    if not right:  # W @ x = (xᵀ @ Wᵀ)ᵀ over the last two axes
        v, a = np.swapaxes(v, -1, -2), a.T
    rows = v.reshape(-1, v.shape[-1])
    y, local = _contract(run, rows[None], a.T[None])
    y = y[0].reshape(*v.shape[:-1], a.shape[1])
    y = y if right else np.swapaxes(y, -1, -2)
    return _biased(run, layer, y, err + ea + local, "B")


def _contract(run: _Pass, patches: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, float]:
    """Per group ``g``: ``out[g, r, o] = reduce_k (patches[g, r, k] + a[g, o, k])``, a block of rows at a
    time. At finite q a float64 matmul of ``2**(patches − row max)`` and ``2**(a − filter max)``: each sum
    in the units of its own row's and filter's largest, so only a sum below ``k·2**-900`` of those units
    (where underflowed factors could matter) is re-evaluated term by term (:func:`_terms`)."""
    if run.inf:
        return _terms(run, patches, a)
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
            block[small], e = _terms(run, pb[g, r][:, None, :], a[g, o][:, None, :], diagonal=True)
            local = max(local, e)
        y[:, i:i + step] = block
    bound = 2.0 * (_max_abs(patches) + _max_abs(a)) + 1.0  # every |difference| and |log| in the matmul route
    return y, max(local, _local_error(max(bound, _max_abs(y)), k))


def _terms(run: _Pass, patches: np.ndarray, a: np.ndarray, diagonal: bool = False) -> tuple[np.ndarray, float]:
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
    bound = (_max_abs(patches) + _max_abs(a)) * (1.0 + 2.0**-52)  # every |t| = |fl(x + a)|
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


def _windowed(run: _Pass, layer: Layer, x: Logs, in_shape: tuple[int, ...]) -> Logs:
    """A convolution (``|W|**q``), a sum-pool (max-pool: weights 1) or an average pool (weights
    ``div(p)**-q``): the input padded with ``-inf``, its windows gathered, each output a reduction."""
    v, err = x
    a, ea = _kernel(run, layer, in_shape)
    groups, rank = a.shape[0], len(layer.shape) - 2
    pads = _sum_pool_pads(layer) if layer.op != "conv" else layer.attrs["pads"]
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
        y, e = _contract(run, patches.reshape(groups, n * math.prod(sp), -1), filters)
        parts.append(y.reshape(groups, n, *sp, a.shape[1]).transpose(1, 0, rank + 2, *range(2, rank + 2)).reshape(n, -1, *sp))
        local = max(local, e)
    y = np.concatenate(parts, axis=2).reshape(layer.shape)
    if layer.op == "avgpool":
        div = _divisors_log2(layer.attrs, tuple(out_sp))
        if div is None:
            raise FallbackRefused(f"the exact float64 fallback needs average-pool divisors in closed form (layer {layer.name!r})")
        y = y - run.p * div  # weight div(p)**-q at each output position
        local += (_max_abs(y) + run.p * float(np.max(div, initial=0.0))) * _EPS
    return _biased(run, layer, y, err + ea + local, "B")


def _kernel(run: _Pass, layer: Layer, in_shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """``p·log2|W|`` as ``(groups, C_out/groups, C_in/groups, *k)``: a conv's own, or a pool's
    depthwise weight-1 kernel (log 0)."""
    if layer.op == "conv":
        w = layer.params["W"]
        a, ea = run.weight(w)
        g = layer.attrs["group"]
        return a.reshape(g, w.shape[0] // g, *w.shape[1:]), ea
    c = in_shape[1]
    return np.zeros((c, 1, 1, *layer.attrs["kernel_shape"])), 0.0


def _reduced(run: _Pass, layer: Layer, x: Logs) -> Logs:
    """A global pool or a reduction: a sum (max at q = ∞) over its axes, weights 1 or ``N**-q`` (means)."""
    v, err = x
    if layer.op == "globalpool":
        axes, mean, count = tuple(range(2, v.ndim)), layer.attrs["mode"] != "max", math.prod(v.shape[2:])
    else:
        axes, mean, count = tuple(a % v.ndim for a in layer.attrs["axes"]), layer.attrs["mode"] == "mean", layer.attrs["count"]
    y, local = run.reduce(v, axes)
    if mean:
        y = y - run.p * math.log2(count)
        local += (_max_abs(y) + run.p * math.log2(count)) * _EPS
    return np.expand_dims(y, axes).reshape(layer.shape), err + local
