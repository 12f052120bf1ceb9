"""The one small graph API the emitters share: build an ONNX graph node by node.

:class:`GraphBuilder` names tensors, stores constants and assembles a checker-valid model.
:class:`LiftBuilder` adds the bookkeeping that keeps the lifted network inside float32 range: each
lifted tensor is a :class:`Scaled` pair ``(T, k)`` whose true value is ``T · 2**k``, ``k`` a scalar
float32 tensor holding an integer. Scaling by a power of two is exact, so the bookkeeping adds no
rounding error; ``k`` is integer-valued and exact up to 2**24. The exponent numerics they use are in
:mod:`onnx_pathlift.graph.exponents`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .exponents import Exponent, bias_values, compact, exp2_f32, exp_diff, exp_max, exp_vector, pow_exponent, scaled_power

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
        self._attributes: dict[tuple, onnx.AttributeProto] = {}  # see _attribute

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
        """Append one single-output node; return its output name. Its attributes are those of
        ``helper.make_node`` (sorted by name, None left out), each built once per builder (:meth:`_attribute`)."""
        out = self.fresh(hint)
        node = helper.make_node(op_type, inputs, [out], name=out)
        if attrs:
            node.attribute.extend(self._attribute(k, v) for k, v in sorted(attrs.items()) if v is not None)
        self.nodes.append(node)
        return out

    def _attribute(self, key: str, value) -> onnx.AttributeProto:
        """``helper.make_attribute(key, value)``, held for the next node with the same attribute when
        ``value`` is an int, a str or a list of ints (a network's convs share their strides, pads, ...;
        ``extend`` copies it into each node)."""
        if type(value) in (int, str):
            memo_key: tuple = (key, type(value), value)
        elif type(value) in (list, tuple) and value and all(type(v) is int for v in value):
            memo_key = (key, list, tuple(value))
        else:
            return helper.make_attribute(key, value)
        if memo_key not in self._attributes:
            self._attributes[memo_key] = helper.make_attribute(key, value)
        return self._attributes[memo_key]

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


class LiftBuilder(GraphBuilder):
    """A :class:`GraphBuilder` with the exact power-of-two scale bookkeeping of lifted tensors.

    Two modes share the handlers' code:

    * static (``static=True``, the default path): exponents are fixed at build time from the static
      upper bounds of every neuron, as an :data:`Exponent`: an int or a map (per output channel or
      neuron, folded into the weights as exact powers of two), so a neuron far below the others of its
      tensor keeps its own scale. ``target`` is the exponent map the current layer should settle at;
      ``spread`` records how far a collapse of an input's map put neurons above their own exponent
      (the error budget of :mod:`onnx_pathlift.graph.budget` counts it).
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
        (:mod:`onnx_pathlift.graph.budget`), while subnormal operands make float32 GEMMs several times slower
        (DenseNet-121's lifted run at q = 1: 0.10 → 0.04 s, its sum unchanged)."""
        return self.const(scaled_power(a, q, *shifts, floor_log2=floor), hint)

    def near_target(self, k: Exponent) -> bool:
        """Static mode: whether values held at exponent map ``k`` may stay there: within
        :data:`SETTLE_LOG2` − 1 of the layer's target (its bound rounded up) at every neuron, and
        ``-inf`` (known to be 0) only where the target is."""
        k, t = np.asarray(k, dtype=np.float64), np.asarray(self.target, dtype=np.float64)
        if np.isfinite(k).all() and np.isfinite(t).all():  # the common case: no mask
            return float(np.abs(k - t).max(initial=0.0)) <= SETTLE_LOG2 - 1.0
        k, t = np.broadcast_arrays(k, t)
        if np.any(np.isneginf(k) & np.isfinite(t)):  # -inf: known to be 0, which a neuron of finite bound is not
            return False
        finite = np.isfinite(k) & np.isfinite(t)
        d = np.abs(k[finite] - t[finite])  # on the finite entries only: inf − inf would warn
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
            same = x.log2 is k_out and bool(np.isfinite(k_out).all())  # then k − k_out is 0 everywhere
            return Scaled(self.op("Add", [x.tensor if same else self.scale_by(x.tensor, compact(exp_diff(x.log2, k_out))), t],
                                  "bias"), k_out, max(x.bound, 1.0) + 1.0)
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
