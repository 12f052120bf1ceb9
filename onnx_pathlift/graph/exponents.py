"""Exponent numerics of the lifted network: ``|w|^q`` as exact (float32 mantissa, power-of-two exponent) pairs,
log2 ranges of weights, exponent maps (compacted, broadcast, differenced), and the memo that spares
repeated powers within one lift run (:func:`lift_run` owns it; outside a run nothing is memoised)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np

from ..errors import PathliftError

#: ``log2_range`` per block of memory: (id of the array owning it, address, bytes, dtype) -> (weak
#: reference to that array, result); an entry leaves with its array
_RANGE_CACHE: dict[tuple, tuple[weakref.ref, tuple[float, float]]] = {}
#: float64 entries per block of :func:`pow_row_reduce` (16 MiB; its reductions may be matrix products,
#: whose rounding can depend on how many rows they are given: the blocks stay as they were)
_BLOCK = 1 << 21
#: entries per block of the entry-by-entry passes over a weight (:func:`_magnitude_range`,
#: :func:`_float64_power`): 2 MiB of float64, so that each pass over a block reads the cache, not memory
CACHE_BLOCK = 1 << 18
#: unsigned integers of a float's width and the mask of its magnitude bits: for finite floats the
#: masked bits order like ``|a|`` (subnormals included), so integer max/min give the range
_MAGNITUDE_BITS = {4: (np.uint32, 0x7FFFFFFF), 8: (np.uint64, 0x7FFFFFFFFFFFFFFF)}

#: a static exponent: an int, or a float64 map of integers broadcastable to its tensor (``-inf`` at
#: neurons whose lifted value is known to be 0: they need no scale)
Exponent = int | np.ndarray


@dataclass
class PowerMemo:
    """The powers one lift run asks for twice (a layer's bound, then its lift or adjoint): the last few
    :func:`pow_scaled` results by array identity and q, and the one :func:`power32` array kept."""

    pows: list[tuple[np.ndarray, float, tuple[np.ndarray, int]]] = field(default_factory=list)
    slot: list[tuple[np.ndarray, float, np.ndarray]] = field(default_factory=list)


_RUN: ContextVar[PowerMemo | None] = ContextVar("onnx_pathlift_lift_run", default=None)


@contextmanager
def lift_run() -> Iterator[PowerMemo]:
    """The powers memo of one lift run, dropped when the run ends; a run inside a run shares the outer
    one's (the scores graph lifts forward, then runs the adjoint on the same weights). Per context, so
    threads do not share it."""
    memo = _RUN.get()
    if memo is not None:
        yield memo
        return
    token = _RUN.set(PowerMemo())
    try:
        yield _RUN.get()
    finally:
        _RUN.reset(token)


def pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    """``|a|**q`` as ``(m, e)`` with ``|a|**q = m · 2**e``, ``m`` float64 with ``max m`` in [1, 2).

    Computed in the log domain when plain powers could leave float64's range (``|a| = 1e80, q = 4``);
    an entry below ``2**-1074`` of the largest underflows to 0 (:func:`lost_below` says whether any
    could). Within a :func:`lift_run` the last few results are memoised (bound and adjoint ask twice).
    """
    memo = _RUN.get()
    if memo is None:
        return _pow_scaled(a, q)
    for arr, qq, result in memo.pows:
        if arr is a and qq == q:
            return result
    result = _pow_scaled(a, q)
    memo.pows[:] = [(a, q, result)] + memo.pows[:3]
    return result


def _pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    if log2_range(a)[1] == -math.inf:
        return np.zeros(np.shape(a)), 0
    e, log_domain = pow_exponent(a, q)
    return pow_block(a, q, e, log_domain), e


def pow_exponent(a: np.ndarray, q: float) -> tuple[int, bool]:
    """The ``e`` of :func:`pow_scaled` (``floor(q · log2 max |a|)``) and whether ``|a|**q · 2**-e``
    must be computed in the log domain (plain float64 powers could overflow or lose entries)."""
    top = log2_range(a)[1]
    if top == -math.inf:
        return 0, False
    return int(math.floor(q * top)), lost_below(a, q) or abs(q * top) >= 900


def pow_block(a: np.ndarray, q: float, e: int, log_domain: bool) -> np.ndarray:
    """``|a|**q · 2**-e`` entry by entry in a new float64 array (see :func:`pow_exponent`)."""
    m = np.asarray(np.abs(np.asarray(a), dtype=np.float64))  # a 0-d array, not a scalar, for a 0-d parameter
    with np.errstate(divide="ignore", under="ignore"):
        if log_domain:
            np.log2(m, out=m)
            m *= q
            m -= e
            return np.exp2(m, out=m)
        if q != 1:
            m **= q
        m *= math.ldexp(1.0, -e)
        return m


def pow_row_reduce(a: np.ndarray, rows: np.ndarray, q: float, reduce, row_wise: bool = False) -> tuple[np.ndarray, int]:
    """``reduce(|rows|**q · 2**-e)`` (one value per row) and ``e``, for ``rows`` a 2-D view of the
    parameter ``a``: the values :func:`pow_scaled` gives, a block of rows at a time, so no float64
    copy of the whole parameter is made. ``row_wise``: ``reduce`` computes each row on its own, the
    same whatever the rows beside it (a sum along the rows, not a matrix product): blocks of
    :data:`CACHE_BLOCK` entries then."""
    e, log_domain = pow_exponent(a, q)
    step = max(1, (CACHE_BLOCK if row_wise else _BLOCK) // max(1, rows.shape[1]))
    blocks = [reduce(pow_block(rows[i:i + step], q, e, log_domain)) for i in range(0, rows.shape[0], step)]
    return (np.concatenate(blocks) if blocks else np.zeros(0)), e


def log2_range(a: np.ndarray) -> tuple[float, float]:
    """``(log2 min |a_i|, log2 max |a_i|)`` over the nonzero entries (``-inf`` twice if none), from
    the magnitude bits of a float32/float64 array; memoised while the array's memory lives (a
    weight is asked about by its bound and by its lift, at every q; a contiguous view, such as the
    transpose a Gemm ``transB`` weight is lifted as, shares its entry with the array it views)."""
    v = np.asarray(a)
    whole = v.flags.c_contiguous or v.flags.f_contiguous  # its elements: one block of memory, in some order
    owner = v.base if whole and isinstance(v.base, np.ndarray) else v  # numpy points a view at the array owning it
    hit = _RANGE_CACHE.get(_range_key(owner, v))
    if hit is not None and hit[0]() is owner:
        return hit[1]
    if v.dtype.kind == "f" and v.dtype.itemsize in _MAGNITUDE_BITS and v.size:
        low, top = _magnitude_range(v)
    else:
        top = max(float(v.max(initial=0.0)), -float(v.min(initial=0.0)))
        low = min(float(v.min(where=v > 0, initial=np.inf)), -float(v.max(where=v < 0, initial=-np.inf)))
    result = (math.log2(low), math.log2(top)) if top > 0 else (-math.inf, -math.inf)
    if isinstance(a, np.ndarray):
        _remember_range(owner, v, result)
    return result


def _range_key(owner: np.ndarray, v: np.ndarray) -> tuple:
    """The :data:`_RANGE_CACHE` key of ``v``'s memory, ``owner`` the array owning it."""
    return id(owner), v.ctypes.data, v.nbytes, v.dtype.str


def _remember_range(owner: np.ndarray, v: np.ndarray, result: tuple[float, float]) -> None:
    """Memoise :func:`log2_range` of ``v`` while ``owner`` (the array owning its memory) lives."""
    key = _range_key(owner, v)
    _RANGE_CACHE[key] = (weakref.ref(owner, lambda _: _RANGE_CACHE.pop(key, None)), result)


def scaled_rows(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w * s`` as a new array of numpy's result type (``s`` broadcast against ``w``, of size 1 or ``w``'s
    along the leading axis, as a folded per-output-channel scale is), a block of leading-axis slices at a
    time, each block's magnitude range read while it is in the cache: :func:`log2_range` of the result is
    remembered then, so the range costs no second pass over the new array (the same products, each rounded
    once, and the same range: the least and largest of the blocks')."""
    out = np.empty(np.broadcast_shapes(w.shape, s.shape), dtype=np.result_type(w, s))
    if out.dtype.kind != "f" or out.dtype.itemsize not in _MAGNITUDE_BITS or not out.ndim or not out.size:
        return np.multiply(w, s, out=out)
    step = max(1, CACHE_BLOCK // max(1, math.prod(out.shape[1:])))
    ranges = []
    for i in range(0, out.shape[0], step):
        rows = slice(i, i + step)
        block = out[rows]
        np.copyto(block, w[rows])  # widened exactly, as the multiply's own cast does, but in a fast loop
        ranges.append(_magnitude_range(np.multiply(block, _block_of(s, rows, out.ndim), out=block)))
    tops = [top for _, top in ranges]
    if not any(math.isnan(t) for t in tops):  # a NaN entry: its range is left to log2_range
        low, top = min((low for low, top in ranges if top > 0), default=0.0), max(tops)  # (an all-zero block: no nonzero entry)
        _remember_range(out, out, (math.log2(low), math.log2(top)) if top > 0 else (-math.inf, -math.inf))
    return out


def _block_of(p: np.ndarray, rows: slice, ndim: int) -> np.ndarray:
    """The part of ``p`` (broadcast against an array of rank ``ndim``) that a block of that array's
    leading-axis slices ``rows`` meets: ``p[rows]`` where ``p`` varies along the leading axis, else ``p``."""
    return p[rows] if p.ndim == ndim and p.shape[0] > 1 else p


def _magnitude_range(v: np.ndarray) -> tuple[float, float]:
    """``(min nonzero |v|, max |v|)`` of a float32/float64 array from its magnitude bits, a block at a
    time through one small buffer (a transposed view is read in its memory order)."""
    uint, mask = _MAGNITUDE_BITS[v.dtype.itemsize]
    flat = (v.T if v.flags.f_contiguous else v).reshape(-1).view(uint)  # a view unless v is scattered
    step = min(flat.size, CACHE_BLOCK)
    buf = np.empty(step, dtype=uint)
    top, low = uint(0), uint(np.iinfo(uint).max)
    for i in range(0, flat.size, step):
        bits = np.bitwise_and(flat[i:i + step], uint(mask), out=buf[:min(step, flat.size - i)])
        top = max(top, bits.max())
        bits -= uint(1)  # 0 wraps to the largest integer: the minimum is over the nonzero entries
        low = min(low, bits.min())
    as_float = np.zeros(2, dtype=uint)
    as_float[:] = (low + uint(1) if top else 0, top)
    lo, hi = (float(x) for x in as_float.view(v.dtype))
    return lo, hi


def lost_below(a: np.ndarray, q: float) -> bool:
    """Whether ``|a|**q / max |a|**q`` can underflow float64 for some nonzero entry of ``a``."""
    low, top = log2_range(a)
    return top > -math.inf and q * (top - low) > 1000


def scaled_power(a: np.ndarray, q: float, *shifts: np.ndarray,
                 floor_log2: np.ndarray | Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """``|a|**q · 2**(Σ shifts)`` in float32, each entry computed on its own (each shift broadcast
    against ``a``, ``-inf`` giving 0, never ``+inf``: see :func:`neg_exp`; row and column exponents
    stay separate vectors, so no full-size exponent array is built): in the log domain where plain
    float64 powers could overflow or underflow, so no entry is lost that float32 can hold. One
    float64 working copy of ``a``, updated in place (float32 for q = 1 and 2 where every partial
    product is a normal float32: the same result, see :func:`_float32_power`). ``floor_log2`` (broadcast
    like the shifts, or a callable giving it): entries below ``2**floor_log2`` are set to 0 (see
    :meth:`LiftBuilder.weight`). Raises if an entry overflows float32."""
    low, top = log2_range(a)
    parts = _balanced([np.asarray(s, dtype=np.float64) for s in shifts])
    if top == -math.inf or (q in (1.0, 2.0) and np.asarray(a).dtype == np.float32 and _normal_float32(q * low, q * top, parts)
                            and all(np.array_equal(p[np.isfinite(p)], np.round(p[np.isfinite(p)])) for p in parts)):
        return _floored(_float32_power(a, q, parts), floor_log2, q * low, parts)
    return _floored(_float64_power(a, q, parts, low, top), floor_log2, q * low, parts)


def _floored(m: np.ndarray, floor_log2: np.ndarray | Callable[[], np.ndarray] | None, low: float,
             parts: list[np.ndarray]) -> np.ndarray:
    """``m`` (a new float32 array) with its entries below ``2**floor_log2`` (never above ``2**-126``;
    a callable is asked only when needed) set to 0, in place; skipped when ``2**low`` times the
    smallest factors ``2**part`` cannot be subnormal."""
    # the least nonzero entry is at least 2**(low + Σ least finite part) (an all -inf part: every entry is 0)
    if floor_log2 is None or low + sum(float(np.min(p[np.isfinite(p)], initial=np.inf)) for p in parts) >= -126:
        return m
    floor = np.asarray(floor_log2() if callable(floor_log2) else floor_log2, dtype=np.float64)
    with np.errstate(under="ignore"):
        limit = np.exp2(np.clip(floor, -150.0, -126.0)).astype(np.float32)  # exact powers of two; below 2**-149: 0
    m[m < limit] = 0.0
    return m


def _float64_power(a: np.ndarray, q: float, parts: list[np.ndarray], low: float, top: float) -> np.ndarray:
    """:func:`scaled_power`'s general route: float64, in the log domain where plain powers could
    overflow or underflow, then rounded once to float32; a block of leading-axis slices at a time
    (:data:`CACHE_BLOCK` entries: each pass stays in the cache; every entry's operations are the same).
    Outside the log domain, when ``q · top + Σ max part ≤ 127`` no entry can reach float32's overflow: the
    check is skipped and each block is rounded straight into the float32 result (:func:`_plain_blocks`)."""
    a = np.asarray(a)
    shape = np.broadcast_shapes(a.shape, *(p.shape for p in parts))
    span = q * max(abs(top), abs(low))
    reach = sum(float(np.abs(s[np.isfinite(s)]).max(initial=0.0)) for s in parts)
    log_domain = span + reach >= 1000  # else every partial product stays inside float64's normal range
    if shape != a.shape or a.ndim == 0:  # a shift wider than ``a`` (a bias broadcast to its layer's exponent map)
        m = np.broadcast_to(np.abs(a, dtype=np.float64), shape).copy()
        return _rounded32(_power_in_place(m, q, parts, log_domain), q)
    out = np.empty(shape, dtype=np.float32)  # C order: a transposed weight is laid out here
    step = max(1, CACHE_BLOCK // max(1, math.prod(shape[1:])))
    highest = q * top + sum(float(np.max(p[np.isfinite(p)], initial=-np.inf)) for p in parts)
    if not log_domain and parts and highest <= 127:  # (a NaN ``top`` fails the test: checked below)
        return _plain_blocks(a, q, parts, out, step)
    for i in range(0, shape[0], step):
        rows = slice(i, i + step)
        block = [_block_of(p, rows, len(shape)) for p in parts]
        out[rows] = _rounded32(_power_in_place(np.abs(a[rows], dtype=np.float64), q, block, log_domain), q)
    return out


def _plain_blocks(a: np.ndarray, q: float, parts: list[np.ndarray], out: np.ndarray, step: int) -> np.ndarray:
    """``out = fl32(|a|**q · 2**p_1 · ... · 2**p_n)`` a block of ``step`` leading-axis slices at a time, in one
    reused buffer, each block rounded into ``out`` by the assignment (the cast ``astype(float32)`` does,
    without its copy). Outside the log domain every factor ``2**p_i``, their product (at most the shifts'
    reach ``< 1000`` from 1) and every partial product of :func:`_power_in_place` are normal float64
    numbers, so multiplying once by ``2**(Σ p_i)`` (one pass, not n) gives the exact value that the n
    exact products give. The caller has checked that no entry exceeds ``2**127``."""
    buf = np.empty((min(step, a.shape[0]),) + a.shape[1:])
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        for i in range(0, a.shape[0], step):
            rows = slice(i, i + step)
            m = abs_power_into(a[rows], q, buf[:min(step, a.shape[0] - i)])
            scale = np.exp2(_block_of(parts[0], rows, a.ndim))
            for p in parts[1:]:  # one factor 2**(Σ p): products of powers of two, exact in this range
                scale = scale * np.exp2(_block_of(p, rows, a.ndim))
            m *= scale
            out[rows] = m
    return out


def abs_power_into(a: np.ndarray, q: float, out: np.ndarray) -> np.ndarray:
    """``|a|**q`` in float64 into ``out``, as ``m = |a|; m **= q`` computes it (numpy squares for ``**= 2``):
    at q = 2 as ``a · a`` in one pass (``fl(a·a) = fl(|a|·|a|)``; float32 entries are widened exactly first)."""
    if q == 2:
        return np.multiply(a, a, dtype=np.float64, out=out)
    m = np.abs(a, dtype=np.float64, out=out)
    if q != 1:
        m **= q
    return m


def _power_in_place(m: np.ndarray, q: float, parts: list[np.ndarray], log_domain: bool) -> np.ndarray:
    """``m**q · 2**(Σ parts)`` in place, in the log domain or by plain float64 products."""
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        if not log_domain:
            if q != 1:
                m **= q
            for s in parts:
                m *= np.exp2(s)
        else:
            np.log2(m, out=m)
            m *= q
            for s in parts:
                m += s
            np.exp2(m, out=m)
    return m


def _rounded32(m: np.ndarray, q: float) -> np.ndarray:
    """``m`` (float64) rounded once to float32; raises if an entry overflows it (or is NaN: ``inf · 0``)."""
    if m.size and not float(m.max()) < 2.0**128:  # a NaN entry makes the max NaN
        raise PathliftError(f"a lifted parameter (|a|**{q:g} scaled) overflows float32 (max log2 {math.log2(float(m.max())):.1f})")
    return m.astype(np.float32)


def _balanced(shifts: list[np.ndarray]) -> list[np.ndarray]:
    """The same total shift with every part but the last moved to a largest finite entry of 0 and
    the last taking the difference (``k_in`` and ``−k_out`` of a deep network are both near 240;
    their sum is small, so no partial product should leave the range)."""
    out, carry = [], 0.0
    for s in shifts[:-1]:
        finite = s[np.isfinite(s)]
        c = float(finite.max()) if finite.size else 0.0
        out.append(s - c)
        carry += c
    return out + [shifts[-1] + carry] if shifts else []


def _normal_float32(low: float, top: float, shifts: list[np.ndarray]) -> bool:
    """Whether values in ``[2**low, 2**top]`` stay normal float32 numbers (or become 0 at a ``-inf``
    shift) as each ``2**shift`` factor multiplies them in turn."""
    for s in shifts:
        finite = s[np.isfinite(s)]
        if finite.size:
            low, top = low + float(finite.min()), top + float(finite.max())
        if low < -126 or top >= 127:
            return False
    return -126 <= low and top < 127


def _float32_power(a: np.ndarray, q: float, shifts: list[np.ndarray]) -> np.ndarray:
    """:func:`scaled_power` for a float32 ``a``, q ∈ {1, 2} and integer shifts, when ``|a|**q`` and every
    product with the ``2**shift`` factors are normal float32 numbers (or 0): ``|a|`` is exact, ``a·a`` is the
    correctly rounded square (the exact square has 48 bits, so float64 then float32 rounds the same
    way once), and scaling by a power of two is exact; so this equals the float64 computation, in a
    quarter of the memory traffic."""
    m = power32(np.asarray(a), q)
    shape = np.broadcast_shapes(m.shape, *(s.shape for s in shifts))
    if shape != m.shape:
        m = np.broadcast_to(m, shape).copy()
    with np.errstate(over="ignore", under="ignore"):
        for s in shifts:
            m *= np.exp2(s).astype(np.float32)  # exact: integers (or -inf: 0) in float32's normal exponent range
    return m


def power32(a: np.ndarray, q: float, keep: bool = False) -> np.ndarray:
    """``|a|**q`` of a float32 array for q ∈ {1, 2}, as a new C-ordered float32 array of ``a``'s shape:
    ``|a|`` exactly, ``a·a`` correctly rounded. ``keep``: within a :func:`lift_run`, also held (one array
    at a time, until the run ends) for the next call on the same memory and q, which takes it instead of
    computing it again: a layer's static bound and its lifted weight then read the weights once."""
    slot = memo.slot if (memo := _RUN.get()) is not None else []
    if slot and slot[0][1] == q and _same_memory(slot[0][0], a):
        m = slot.pop()[2].reshape(a.shape)
    else:
        m = np.square(a, dtype=np.float32, order="C") if q == 2.0 else np.abs(a, dtype=np.float32, order="C")
    if keep:
        slot[:] = [(a, q, m)]
    return m


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same elements in the same order: C-contiguous, one dtype, one size,
    one start address (the first is held alive by the slot, so its memory cannot be reused)."""
    return (a.dtype == b.dtype and a.size == b.size and a.flags.c_contiguous and b.flags.c_contiguous
            and a.ctypes.data == b.ctypes.data)


def bias_values(bias_log2: np.ndarray, k: Exponent) -> np.ndarray:
    """A non-negative bias given as ``log2 t`` at exponent (map) ``k``: ``2**(log2 t − k)`` in float32,
    entry by entry (broadcast against ``k``; 0 where either is ``-inf``): ``scaled_power(1, 1, log2 t − k)``,
    whose float64 route computes ``1 · 2**(log2 t − k)`` in either of its domains, so ``2**(log2 t − k)``
    rounded once to float32 directly (one exact power of two per entry: the same bits)."""
    with np.errstate(over="ignore", under="ignore"):
        return _rounded32(np.asarray(np.exp2(np.asarray(exp_diff(bias_log2, k), dtype=np.float64))), 1.0)


def neg_exp(k: np.ndarray) -> np.ndarray:
    """``−k`` for an exponent map, ``-inf`` staying ``-inf`` (``2**neg_exp(k)`` divides by ``2**k``,
    and is 0 where the neuron is known to be 0)."""
    k = np.asarray(k, dtype=np.float64)
    return np.where(np.isfinite(k), -k, -np.inf)


def lifted_log2(a: np.ndarray, q: float) -> np.ndarray:
    """``log2 |a|**q`` per entry in float64 (``-inf`` for 0)."""
    with np.errstate(divide="ignore"):
        return q * np.log2(np.abs(np.asarray(a, dtype=np.float64)))


def exp_diff(a: Exponent, b: Exponent) -> Exponent:
    """``a − b`` for exponents, ``-inf`` wherever either is ``-inf`` (a neuron known to be 0)."""
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.isfinite(a).all() and np.isfinite(b).all():  # the common case: nothing to mask
        return np.asarray(a - b)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(a) & np.isfinite(b), a - b, -np.inf)


def compact(k: Exponent, shape: tuple[int, ...] | None = None) -> Exponent:
    """The same exponent map with every axis along which it is constant reduced to size 1, or an int
    when it is one finite value (all ``-inf``: a 0-d ``-inf``). ``shape``: the tensor's shape, to keep
    the map's rank."""
    if isinstance(k, int):
        return k
    k = np.asarray(k, dtype=np.float64)
    if shape is not None and k.ndim < len(shape):
        k = k.reshape((1,) * (len(shape) - k.ndim) + k.shape)
    low, top = (float(k.min()), float(k.max())) if k.size else (math.nan, math.nan)
    if math.isfinite(low) and math.isfinite(top):  # every entry finite (a NaN entry makes both NaN)
        if low == top:
            return int(k.flat[0])
    elif top == -math.inf or not np.isfinite(k).any():
        return np.full((), -np.inf)  # every neuron known to be 0: their weights onward are 0, not scaled by 2**0
    if sum(n > 1 for n in k.shape) <= 1:  # not constant (above), so not along its one axis of size > 1
        return k
    reduced = False
    for axis in range(k.ndim):
        if k.shape[axis] > 1:
            first = k[(slice(None),) * axis + (slice(0, 1),)]  # a view: index 0 of the axis, kept
            if bool((first == k).all()):  # (-inf equals -inf: a map is constant along the axis with them too)
                k, reduced = first, True
    return k.copy() if reduced else k


def exp_max(k: Exponent) -> float:
    """The largest finite exponent of a map (-inf if none)."""
    if isinstance(k, int):
        return float(k)
    finite = np.asarray(k)[np.isfinite(k)]
    return float(finite.max()) if finite.size else -math.inf


def exp_vector(k: Exponent, n: int, axis: int) -> np.ndarray:
    """A map's largest exponent at each index of ``axis`` (a vector of ``n``; a map of lower rank,
    or of size 1 along ``axis``, is constant along it)."""
    if isinstance(k, int) or np.ndim(k) == 0:
        return np.full(n, float(k))
    k = np.asarray(k, dtype=np.float64)
    if not -k.ndim <= axis < k.ndim or k.shape[axis] == 1:
        return np.full(n, exp_max(k) if np.isfinite(k).any() else -np.inf)
    if k.size == k.shape[axis]:  # a vector laid along the axis: its entries
        v = k.reshape(-1)
    else:
        v = np.moveaxis(k, axis, -1).reshape(-1, k.shape[axis]).max(axis=0)
    return v.copy() if v.shape == (n,) else np.broadcast_to(v, (n,)).copy()


def exp2_f32(k: Exponent) -> np.ndarray:
    """``2**k`` as a float32 constant (0 at ``-inf`` and below float32's range)."""
    with np.errstate(under="ignore"):
        v = np.exp2(np.asarray(k, dtype=np.float64))
    if np.any(v >= 2.0**128):
        raise PathliftError("a power-of-two scale overflows float32")
    return v.astype(np.float32)
