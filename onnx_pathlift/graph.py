"""The one small graph API the emitters share: build an ONNX graph node by node.

:class:`GraphBuilder` names tensors, stores constants and assembles a checker-valid model.
:class:`LiftBuilder` adds the bookkeeping that keeps the lifted network inside float32 range: each
lifted tensor is a :class:`Scaled` pair ``(T, k)`` whose true value is ``T · 2**k``, ``k`` a scalar
float32 tensor holding an integer. Scaling by a power of two is exact, so the bookkeeping adds no
rounding error; ``k`` is integer-valued and exact up to 2**24.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .errors import PathliftError

#: a tensor whose static bound grows past 2**this is renormalised (float32 overflows at 2**128)
HEADROOM_LOG2 = 60.0
#: static scales: a layer's values are re-expressed at its target exponents once they drift this far
#: (log2) from their bounds (either way); closer, they are left where they are (no extra operation)
SETTLE_LOG2 = 30.0
_INV_LN2 = 1.0 / math.log(2.0)
#: constants of at least this many bytes are handed to onnxruntime as arrays, not serialised into the model
EXTERNAL_MIN_BYTES = 1 << 16
#: the external-data location of such a constant: no file, the array beside the model (:class:`BuiltModel`)
MEMORY = "onnx-pathlift:memory"


class GraphBuilder:
    """Accumulates nodes and initializers; hands out unique tensor names."""

    def __init__(self, opset: int, taken: set[str] | None = None):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.constants: dict[str, np.ndarray] = {}  # initializers, turned into TensorProtos by model()
        self._taken: set[str] = set(taken or ())
        self._scalars: dict[tuple[float, str], str] = {}
        self._next: dict[str, int] = {}  # per hint: the first suffix not yet tried

    def fresh(self, hint: str) -> str:
        """A tensor name based on ``hint`` that is not used yet: ``hint``, else ``hint_k`` for the
        smallest k not tried before for this hint (amortized O(1): each k is tried once per hint)."""
        k = self._next.get(hint, 0)
        name = f"{hint}_{k}" if k else hint
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._next[hint] = k + 1
        self._taken.add(name)
        return name

    def const(self, value: np.ndarray, hint: str, dtype=np.float32) -> str:
        """Store ``value`` (cast to ``dtype``) as an initializer; return its name."""
        name = self.fresh(hint)
        self.constants[name] = np.asarray(value, dtype=dtype, order="C")  # no copy of a ready float32 array
        return name

    def ints(self, values, hint: str) -> str:
        """Store integers (a shape, axes, pads, indices) as an int64 initializer; return its name."""
        return self.const(values, hint, dtype=np.int64)

    def scalar(self, value: float) -> str:
        """A float32 scalar constant, shared between uses."""
        key = (float(value), "f")
        if key not in self._scalars:
            self._scalars[key] = self.const(np.array(value), f"c_{value:g}".replace("-", "m").replace(".", "p"))
        return self._scalars[key]

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs) -> str:
        """Append one single-output node; return its output name."""
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def model(self, *args, **kwargs) -> ModelProto:
        """:meth:`build` with every constant stored in the model: a standalone ``ModelProto``."""
        return self.build(*args, external_min_bytes=None, **kwargs).proto

    def build(
        self,
        inputs: list[tuple[str, tuple[int, ...]]],
        outputs: list[tuple[str, tuple[int, ...] | None]],
        name: str,
        doc: str = "",
        double_outputs: set[str] | None = None,
        external_min_bytes: int | None = EXTERNAL_MIN_BYTES,
    ) -> BuiltModel:
        """Assemble a float32 model with the given inputs and outputs (shape None: scalar; the outputs
        named in ``double_outputs`` are float64). Constants of at least ``external_min_bytes`` stay
        numpy arrays beside the model (external data at :data:`MEMORY`), for onnxruntime to take
        directly (None: every constant in the model)."""
        double = double_outputs or set()
        inits, external = [], {}
        for k, v in self.constants.items():
            if external_min_bytes is not None and v.nbytes >= external_min_bytes:
                inits.append(_memory_reference(k, v))
                external[k] = v
            else:
                inits.append(numpy_helper.from_array(v, k))
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.DOUBLE if n in double else TensorProto.FLOAT, list(s) if s is not None else [])
             for n, s in outputs],
            inits,
            doc_string=doc,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="onnx-pathlift")
        model.ir_version = min(model.ir_version, 10)
        return BuiltModel(model, external)


@dataclass
class BuiltModel:
    """A model whose large constants are numpy arrays kept beside it: onnxruntime takes them as
    external initializers (``runtime.make_session``), so they are never copied into protobuf and
    parsed back. :meth:`standalone` is the ordinary self-contained model (to save or check)."""

    proto: ModelProto
    external: dict[str, np.ndarray]

    def standalone(self) -> ModelProto:
        if not self.external:
            return self.proto
        out = ModelProto()
        out.CopyFrom(self.proto)
        for init in out.graph.initializer:
            if init.name in self.external:
                init.CopyFrom(numpy_helper.from_array(self.external[init.name], init.name))
        return out

    def fed(self) -> ModelProto:
        """The model with its large constants as graph inputs instead, to be fed with every run: a
        session built on it copies none of them (``runtime.make_session``)."""
        out = ModelProto()
        out.CopyFrom(self.proto)
        kept = [t for t in out.graph.initializer if t.name not in self.external]
        del out.graph.initializer[:]
        out.graph.initializer.extend(kept)
        out.graph.input.extend(helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                               for k, v in self.external.items())
        return out


def _memory_reference(name: str, value: np.ndarray) -> TensorProto:
    """A float initializer declared as external data at :data:`MEMORY` (its values come separately)."""
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(value.dtype), dims=value.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, v in (("location", MEMORY), ("offset", "0"), ("length", str(value.nbytes))):
        entry = t.external_data.add()
        entry.key, entry.value = key, v
    return t


@dataclass(frozen=True)
class Scaled:
    """A lifted tensor ``T`` with value ``T · 2**k``; ``bound`` ≥ log2(max T), known statically.

    ``dirty``: ``T`` comes straight out of a layer that can shrink values (conv, dense, avgpool) and has
    not been renormalised yet; consumers that need ``max T`` near 1 renormalise it first.
    """

    tensor: str
    log2: str | Exponent  # a scalar tensor's name (dynamic mode) or a static exponent (map)
    bound: float = 1.0
    dirty: bool = False


_POW_CACHE: list[tuple[np.ndarray, float, tuple[np.ndarray, int]]] = []
#: ``log2_range`` per block of memory: (id of the array owning it, address, bytes, dtype) -> (weak
#: reference to that array, result); an entry leaves with its array
_RANGE_CACHE: dict[tuple, tuple[weakref.ref, tuple[float, float]]] = {}
#: float64 entries per block of :func:`pow_row_reduce` (16 MiB)
_BLOCK = 1 << 21
#: unsigned integers of a float's width and the mask of its magnitude bits: for finite floats the
#: masked bits order like ``|a|`` (subnormals included), so integer max/min give the range
_MAGNITUDE_BITS = {4: (np.uint32, 0x7FFFFFFF), 8: (np.uint64, 0x7FFFFFFFFFFFFFFF)}

#: a static exponent: an int, or a float64 map of integers broadcastable to its tensor (``-inf`` at
#: neurons whose lifted value is known to be 0: they need no scale)
Exponent = int | np.ndarray


def pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    """``|a|**q`` as ``(m, e)`` with ``|a|**q = m · 2**e``, ``m`` float64 with ``max m`` in [1, 2).

    Computed in the log domain when plain powers could leave float64's range (``|a| = 1e80, q = 4``);
    an entry below ``2**-1074`` of the largest underflows to 0 (:func:`lost_below` says whether any
    could). The last few results are memoised (bound and adjoint ask twice).
    """
    for arr, qq, result in _POW_CACHE:
        if arr is a and qq == q:
            return result
    result = _pow_scaled(a, q)
    _POW_CACHE[:] = [(a, q, result)] + _POW_CACHE[:3]
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


def pow_row_reduce(a: np.ndarray, rows: np.ndarray, q: float, reduce) -> tuple[np.ndarray, int]:
    """``reduce(|rows|**q · 2**-e)`` (one value per row) and ``e``, for ``rows`` a 2-D view of the
    parameter ``a``: the values :func:`pow_scaled` gives, a block of rows at a time, so no float64
    copy of the whole parameter is made."""
    e, log_domain = pow_exponent(a, q)
    step = max(1, _BLOCK // max(1, rows.shape[1]))
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
    key = (id(owner), v.ctypes.data, v.nbytes, v.dtype.str)
    hit = _RANGE_CACHE.get(key)
    if hit is not None and hit[0]() is owner:
        return hit[1]
    if v.dtype.kind == "f" and v.dtype.itemsize in _MAGNITUDE_BITS and v.size:
        low, top = _magnitude_range(v)
    else:
        top = max(float(v.max(initial=0.0)), -float(v.min(initial=0.0)))
        low = min(float(v.min(where=v > 0, initial=np.inf)), -float(v.max(where=v < 0, initial=-np.inf)))
    result = (math.log2(low), math.log2(top)) if top > 0 else (-math.inf, -math.inf)
    if isinstance(a, np.ndarray):
        _RANGE_CACHE[key] = (weakref.ref(owner, lambda _: _RANGE_CACHE.pop(key, None)), result)
    return result


def _magnitude_range(v: np.ndarray) -> tuple[float, float]:
    """``(min nonzero |v|, max |v|)`` of a float32/float64 array from its magnitude bits, a block at a
    time through one small buffer (a transposed view is read in its memory order)."""
    uint, mask = _MAGNITUDE_BITS[v.dtype.itemsize]
    flat = (v.T if v.flags.f_contiguous else v).reshape(-1).view(uint)  # a view unless v is scattered
    step = min(flat.size, _BLOCK)
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
    overflow or underflow, then rounded once to float32."""
    m = np.asarray(np.abs(np.asarray(a), dtype=np.float64, order="C"))  # the one copy (a transposed weight is laid out here)
    shape = np.broadcast_shapes(m.shape, *(p.shape for p in parts))
    if shape != m.shape:  # a shift wider than ``a`` (a bias broadcast to its layer's exponent map)
        m = np.broadcast_to(m, shape).copy()
    span = q * max(abs(top), abs(low))
    reach = sum(float(np.abs(s[np.isfinite(s)]).max(initial=0.0)) for s in parts)
    with np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore"):
        if span + reach < 1000:  # every partial product stays inside float64's normal range
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
    if m.size and float(m.max()) >= 2.0**128:
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


#: the last ``|a|**q`` that :func:`power32` was asked to keep: ``(a, q, powers)``, one at a time
_POWER_SLOT: list[tuple[np.ndarray, float, np.ndarray]] = []


def power32(a: np.ndarray, q: float, keep: bool = False) -> np.ndarray:
    """``|a|**q`` of a float32 array for q ∈ {1, 2}, as a new C-ordered float32 array of ``a``'s shape:
    ``|a|`` exactly, ``a·a`` correctly rounded. ``keep``: also held (one array at a time, until
    :func:`forget_powers`) for the next call on the same memory and q, which takes it instead of
    computing it again: a layer's static bound and its lifted weight then read the weights once."""
    if _POWER_SLOT and _POWER_SLOT[0][1] == q and _same_memory(_POWER_SLOT[0][0], a):
        m = _POWER_SLOT.pop()[2].reshape(a.shape)
    else:
        m = np.square(a, dtype=np.float32, order="C") if q == 2.0 else np.abs(a, dtype=np.float32, order="C")
    if keep:
        _POWER_SLOT[:] = [(a, q, m)]
    return m


def forget_powers() -> None:
    """Drop the array :func:`power32` keeps (the end of a lift)."""
    _POWER_SLOT.clear()


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays hold the same elements in the same order: C-contiguous, one dtype, one size,
    one start address (the first is held alive by the slot, so its memory cannot be reused)."""
    return (a.dtype == b.dtype and a.size == b.size and a.flags.c_contiguous and b.flags.c_contiguous
            and a.ctypes.data == b.ctypes.data)


def bias_values(bias_log2: np.ndarray, k: Exponent) -> np.ndarray:
    """A non-negative bias given as ``log2 t`` at exponent (map) ``k``: ``2**(log2 t − k)`` in float32,
    entry by entry (broadcast against ``k``; 0 where either is ``-inf``)."""
    return scaled_power(np.ones(()), 1.0, exp_diff(bias_log2, k))


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
    finite = k[np.isfinite(k)]
    if finite.size == 0:
        return np.full((), -np.inf)  # every neuron known to be 0: their weights onward are 0, not scaled by 2**0
    if finite.size == k.size and finite.min() == finite.max():
        return int(finite[0])
    for axis in range(k.ndim):
        if k.shape[axis] > 1:
            first = np.take(k, [0], axis=axis)
            if np.array_equal(np.broadcast_to(first, k.shape), k):
                k = first
    return k


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
    v = np.moveaxis(k, axis, -1).reshape(-1, k.shape[axis]).max(axis=0)
    return np.broadcast_to(v, (n,)).copy()


def exp2_f32(k: Exponent) -> np.ndarray:
    """``2**k`` as a float32 constant (0 at ``-inf`` and below float32's range)."""
    with np.errstate(under="ignore"):
        v = np.exp2(np.asarray(k, dtype=np.float64))
    if np.any(v >= 2.0**128):
        raise PathliftError("a power-of-two scale overflows float32")
    return v.astype(np.float32)


class LiftBuilder(GraphBuilder):
    """A :class:`GraphBuilder` with the exact power-of-two scale bookkeeping of lifted tensors.

    Two modes share the handlers' code:

    * static (``static=True``, the default path): exponents are fixed at build time from the static
      upper bounds of every neuron, as an :data:`Exponent`: an int or a map (per output channel or
      neuron, folded into the weights as exact powers of two), so a neuron far below the others of its
      tensor keeps its own scale. ``target`` is the exponent map the current layer should settle at;
      ``spread`` records how far a collapse of an input's map put neurons above their own exponent
      (the error budget of :mod:`onnx_pathlift.budget` counts it).
    * dynamic (``static=False``): exponents ``k`` are scalar tensors; tensors are renormalised at run
      time by ``2**-floor(log2 max T)``, one scale per tensor.
    """

    def __init__(self, opset: int, taken: set[str] | None = None, static: bool = False):
        super().__init__(opset, taken)
        self.static = static
        self.target: Exponent | None = None  # static mode: the exponent map the current layer settles at
        self.spread = 0.0  # static mode: log2 of the largest factor a collapse put a neuron below its exponent
        self.inputs: list[tuple[np.ndarray, Exponent]] | None = None  # static mode: per input, (bound, exponent)
        self._powers: dict[tuple[int, float, bool], tuple[np.ndarray, str, int]] = {}  # see abs_power

    def abs_power(self, a: np.ndarray, q: float, hint: str, transposed: bool = False) -> tuple[str, int]:
        """``|a|**q · 2**-e`` (of ``aᵀ`` when ``transposed``) as a float32 constant and ``e``
        (:func:`pow_exponent`): the values of :func:`pow_scaled`, rounded once to float32, built once
        per parameter array and q (a lifted layer and its adjoint share one constant)."""
        key = (id(a), q, transposed)
        hit = self._powers.get(key)
        if hit is None or hit[0] is not a:
            e = pow_exponent(a, q)[0]
            hit = (a, self.const(scaled_power(a.T if transposed else a, q, np.asarray(float(-e))), hint), e)
            self._powers[key] = hit
        return hit[1], hit[2]

    def begin(self, target: Exponent | None, inputs: list[tuple[np.ndarray, Exponent]] | None = None) -> None:
        """Start emitting one layer (static mode: whose output should have exponent ``target``;
        ``inputs``: per input, its static bound map and exponent map, whose difference, the headroom,
        says how far its values ``T`` can be above 1: ``T ≤ 2**(bound − k) · (1 + γ)``)."""
        self.target, self.spread, self.inputs = target, 0.0, inputs

    def floors(self, i: int, n: int, axis: int | None) -> np.ndarray:
        """``log2`` of the lifted weights that may be set to 0 (:meth:`weight`) per index of ``axis`` of
        input ``i`` (``n`` of them; ``axis=None``: one for the whole input): ``-127 − ceil(headroom)``,
        so that such a weight times a value of that index is below ``2**-126`` in the output's units
        (``γ < 1``: budget.py), and never above ``-126`` (only subnormal weights go); ``-inf`` (none)
        where the headroom is not known or not finite."""
        if self.inputs is None:
            return np.full(n, -np.inf)
        bound, k = self.inputs[i]
        with np.errstate(invalid="ignore"):  # an unbounded value (+inf) or unknown exponent gives +inf: no floor
            h = np.subtract(np.asarray(bound, dtype=np.float64), np.asarray(k, dtype=np.float64))
            h = exp_vector(h, n, axis) if axis is not None else np.full(n, h.max(initial=-np.inf))  # NaN stays NaN
            return np.where(np.isnan(h), -np.inf, np.minimum(-127.0 - np.ceil(h), -126.0))

    def weight(self, a: np.ndarray, q: float, hint: str, *shifts: np.ndarray,
               floor: Callable[[], np.ndarray] | None = None) -> str:
        """The constant ``|a|**q · 2**(Σ shifts)`` of a static lifted layer (:func:`scaled_power`), with
        every entry below ``2**floor()`` (broadcast like the shifts, asked only where an entry may be
        subnormal; see :meth:`floors`) set to 0. Each such entry times its input is below ``2**-126``
        in the output's units: one underflow of that product, which the error budget already counts
        (:mod:`onnx_pathlift.budget`), while subnormal operands make float32 GEMMs several times slower
        (DenseNet-121's lifted run at q = 1: 0.10 → 0.04 s, its sum unchanged)."""
        return self.const(scaled_power(a, q, *shifts, floor_log2=floor), hint)

    def near_target(self, k: Exponent) -> bool:
        """Static mode: whether values held at exponent map ``k`` may stay there: within
        :data:`SETTLE_LOG2` − 1 of the layer's target (its bound rounded up) at every neuron, and
        ``-inf`` (known to be 0) only where the target is."""
        k, t = np.broadcast_arrays(np.asarray(k, dtype=np.float64), np.asarray(self.target, dtype=np.float64))
        if np.any(np.isneginf(k) & np.isfinite(t)):  # -inf: known to be 0, which a neuron of finite bound is not
            return False
        both = np.isfinite(k) & np.isfinite(t)
        d = np.abs(k[both] - t[both])
        return not d.size or float(d.max()) <= SETTLE_LOG2 - 1.0

    def exponent(self, value: int) -> str:
        return self.scalar(float(value))

    def shift(self, x: Scaled, e: int, bound: float | None = None) -> Scaled:
        """Same tensor, exponent ``k + e`` (a static power-of-two factor)."""
        y = x if bound is None else replace(x, bound=bound)
        if e == 0:
            return y
        return replace(y, log2=x.log2 + e if self.static else self.op("Add", [x.log2, self.exponent(e)], "k"))

    def scale_by(self, t: str, factor_log2) -> str:
        """``t · 2**factor_log2``: an int (a scalar constant, skipped when 0), a static exponent map
        (a constant of the map's shape) or a scalar tensor (dynamic mode)."""
        if isinstance(factor_log2, int):
            return t if factor_log2 == 0 else self.op("Mul", [t, self.scalar(math.ldexp(1.0, factor_log2))], "scaled")
        if isinstance(factor_log2, np.ndarray):
            if not np.any(factor_log2):
                return t
            return self.op("Mul", [t, self.const(exp2_f32(factor_log2), "scales")], "scaled")
        return self.op("Mul", [t, self.power_of_two(factor_log2)], "scaled")

    def settle(self, x: Scaled, target: Exponent) -> Scaled:
        """Static mode: express ``x`` with exponent (map) ``target``: ``T · 2**(k − target)``. A factor
        past float32's range (values far below their exponent: already lost to underflow) is
        clipped to ``2**126`` and the exponent kept exact: ``k − 126``."""
        shift = compact(exp_diff(x.log2, target))
        if exp_max(shift) <= 126:
            return Scaled(self.scale_by(x.tensor, shift), target, 0.0)
        clipped = compact(np.minimum(shift, 126.0))
        return Scaled(self.scale_by(x.tensor, clipped), compact(exp_diff(x.log2, clipped)), 0.0)

    def collapse(self, x: Scaled, shape: tuple[int, ...], axis: int | None = None) -> Scaled:
        """Static mode: ``x`` with an exponent map that varies along ``axis`` only (``None``: one
        exponent), each index taking the largest exponent of its slice: ``T · 2**(k − K) `` with
        factors ≤ 1 (a neuron far below its slice's largest may underflow: ``spread`` says how far)."""
        if isinstance(x.log2, int):
            return x
        k = np.asarray(x.log2)
        axis = None if axis is None else axis % len(shape)
        if axis is None:
            big = exp_max(k)
            target: Exponent = int(big) if math.isfinite(big) else 0
        else:
            target = compact(on_axis(exp_vector(k.reshape((1,) * (len(shape) - k.ndim) + k.shape), shape[axis], axis), len(shape), axis), shape)
        if isinstance(target, np.ndarray) and k.shape == target.shape and np.array_equal(k, target):
            return x
        gap = exp_diff(target, k)
        self.spread = max(self.spread, exp_max(gap))
        return self.settle(x, target)

    def add_bias(self, x: Scaled, bias_log2: np.ndarray, rank: int, k_out: Exponent | None = None) -> Scaled:
        """``T·2**k + t`` for a non-negative bias given as ``log2 t`` (``-inf`` for 0), brought to one exponent.

        Static: at ``k_out`` (default: the layer's target, else ``max(k, ceil log2 t)``), each bias
        entry computed on its own. Dynamic and not yet renormalised: ``K = max(k + floor(log2 max T),
        e_bias)`` in the same pass; otherwise ``K = max(k, e_bias)``. Both factors are ≤ 2.
        """
        bias_log2 = np.asarray(bias_log2, dtype=np.float64)
        if self.static:
            if k_out is None:
                k_out = self.target if self.target is not None else compact(np.maximum(x.log2, np.ceil(bias_log2)))
            t = self.const(bias_values(bias_log2, k_out), "absBias")
            return Scaled(self.op("Add", [self.scale_by(x.tensor, compact(exp_diff(x.log2, k_out))), t], "bias"), k_out,
                          max(x.bound, 1.0) + 1.0)
        e_bias = int(math.floor(exp_max(bias_log2)))
        bias = scaled_power(np.ones(()), 1.0, bias_log2 - e_bias)
        k_in = self.op("Add", [x.log2, self._floor_log2_max(x.tensor, rank)], "k") if x.dirty else x.log2
        k_out = self.op("Max", [k_in, self.exponent(e_bias)], "k")
        fx = self.op("Sub", [x.log2, k_out], "d")
        ft = self.power_of_two(self.op("Sub", [self.exponent(e_bias), k_out], "d"))
        y = self.op("Add", [self.scale_by(x.tensor, fx), self.op("Mul", [self.const(bias, "absBias"), ft], "bias")], "bias")
        return Scaled(y, k_out, 2.0 if x.dirty else max(x.bound, 1.0) + 1.0)

    def align(self, xs: list[Scaled]) -> tuple[list[str], str | Exponent]:
        """Bring tensors to one common exponent ``s = max k_i`` (per neuron for static maps):
        ``T_i · 2**(k_i − s)`` (factors ≤ 1)."""
        if len(xs) == 1:
            return [xs[0].tensor], xs[0].log2
        if self.static:
            maps = [x.log2 for x in xs]
            if all(isinstance(k, int) for k in maps) and len(set(maps)) == 1:
                return [x.tensor for x in xs], maps[0]
            s = maps[0]
            for k in maps[1:]:
                s = np.maximum(s, k)
            s = compact(s)
            return [self.scale_by(x.tensor, compact(exp_diff(x.log2, s))) for x in xs], s
        if len({x.log2 for x in xs}) == 1:
            return [x.tensor for x in xs], xs[0].log2
        s = self.op("Max", [x.log2 for x in xs], "k")
        return [self.scale_by(x.tensor, self.op("Sub", [x.log2, s], "d")) for x in xs], s

    def _floor_log2_max(self, t: str, rank: int) -> str:
        """``e = floor(log2 max T)``, clipped to [-126, 126] (an all-zero tensor gives -126)."""
        m = self._max(t, rank)
        lg = self.op("Mul", [self.op("Log", [m], "log"), self.scalar(_INV_LN2)], "log2")
        return self.op("Clip", [self.op("Floor", [lg], "e"), self.scalar(-126.0), self.scalar(126.0)], "e")

    def _max(self, t: str, rank: int) -> str:
        """``max T`` as a scalar tensor."""
        if 3 <= rank <= 5:  # per-channel max first: stays in onnxruntime's blocked conv layout (1-3 spatial axes)
            t = self.op("GlobalMaxPool", [t], "chanmax")
        m = self.op("ReduceMax", [t], "max", keepdims=0)  # onnxruntime returns shape [1]
        return self.op("Reshape", [m, self.ints(np.zeros(0), "scalar_shape")], "max")

    def normalize(self, x: Scaled, rank: int) -> Scaled:
        """Dynamic mode: divide ``T`` by ``2**floor(log2 max T)`` (exactly) and add that to ``k``."""
        e = self._floor_log2_max(x.tensor, rank)
        t = self.op("Mul", [x.tensor, self.op("Pow", [self.scalar(0.5), e], "p")], "norm")  # 2**-e, exact
        return Scaled(t, self.op("Add", [x.log2, e], "k"), 1.0)

    def power_of_two(self, e: str) -> str:
        """``2**e`` for an integer-valued scalar tensor ``e`` (exact; 0 below 2**-149)."""
        return self.op("Pow", [self.scalar(2.0), e], "p")


def on_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A vector laid along ``axis`` of a rank-``rank`` array (size 1 elsewhere)."""
    shape = [1] * rank
    shape[axis % rank] = -1
    return np.asarray(v).reshape(shape)
