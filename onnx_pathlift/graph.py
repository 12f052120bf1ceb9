"""The one small graph API the emitters share: build an ONNX graph node by node.

:class:`GraphBuilder` names tensors, stores constants and assembles a checker-valid model.
:class:`LiftBuilder` adds the bookkeeping that keeps the lifted network inside float32 range: each
lifted tensor is a :class:`Scaled` pair ``(T, k)`` whose true value is ``T · 2**k``, ``k`` a scalar
float32 tensor holding an integer. Scaling by a power of two is exact, so the bookkeeping adds no
rounding error; ``k`` is integer-valued and exact up to 2**24.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

#: a tensor whose static bound grows past 2**this is renormalised (float32 overflows at 2**128)
HEADROOM_LOG2 = 60.0
_INV_LN2 = 1.0 / math.log(2.0)


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
        self.constants[name] = np.array(value, dtype=dtype, order="C")
        return name

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

    def model(
        self,
        inputs: list[tuple[str, tuple[int, ...]]],
        outputs: list[tuple[str, tuple[int, ...] | None]],
        name: str,
        doc: str = "",
    ) -> ModelProto:
        """Assemble a float32 model with the given inputs and outputs (shape None: scalar)."""
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s) if s is not None else []) for n, s in outputs],
            [numpy_helper.from_array(v, k) for k, v in self.constants.items()],
            doc_string=doc,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="onnx-pathlift")
        model.ir_version = min(model.ir_version, 10)
        return model


@dataclass(frozen=True)
class Scaled:
    """A lifted tensor ``T`` with value ``T · 2**k``; ``bound`` ≥ log2(max T), known statically.

    ``dirty``: ``T`` comes straight out of a layer that can shrink values (conv, dense, avgpool) and has
    not been renormalised yet; consumers that need ``max T`` near 1 renormalise it first.
    """

    tensor: str
    log2: str | int  # a scalar tensor's name (dynamic mode) or a constant (static mode)
    bound: float = 1.0
    dirty: bool = False


_POW_CACHE: list[tuple[np.ndarray, float, tuple[np.ndarray, int]]] = []


def pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    """``|a|**q`` as ``(m, e)`` with ``|a|**q = m · 2**e``, ``max m`` in [1, 2): no float64 overflow.

    Computed in the log domain when plain powers could leave float64's range (``|a| = 1e80, q = 4``).
    Entries below ``2**-149`` of the largest underflow to 0 in float32 (they cannot carry a relative
    weight float32 can represent). The last few results are memoised (lift and bound ask twice).
    """
    for arr, qq, result in _POW_CACHE:
        if arr is a and qq == q:
            return result
    result = _pow_scaled(a, q)
    _POW_CACHE[:] = [(a, q, result)] + _POW_CACHE[:3]
    return result


def _pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    a = np.abs(np.asarray(a, dtype=np.float64))
    top = float(a.max(initial=0.0))
    if top == 0:
        return np.zeros(a.shape, np.float32), 0
    e = int(math.floor(q * math.log2(top)))
    if abs(q * math.log2(top)) < 900:  # no overflow: |a|**q / 2**e directly (underflow to 0 is harmless)
        m = (a if q == 1 else a**q) * math.ldexp(1.0, -e)
    else:
        lg = np.full(a.shape, -np.inf)
        nz = a > 0
        lg[nz] = q * np.log2(a[nz])
        m = np.exp2(lg - e)
    return m.astype(np.float32), e


class LiftBuilder(GraphBuilder):
    """A :class:`GraphBuilder` with the exact power-of-two scale bookkeeping of lifted tensors.

    Two modes share the handlers' code:

    * dynamic (``static=False``): exponents ``k`` are scalar tensors; tensors are renormalised at run
      time by ``2**-floor(log2 max T)``. Always correct, at the price of extra passes.
    * static (``static=True``): exponents are Python ints fixed at build time from upper bounds
      (``settle``), so every scale is a constant that onnxruntime folds into the conv/matmul.
      ``check`` records ``max T`` of a tensor in the output ``HEALTH``; a value below
      ``2**-HEALTH_MIN_LOG2`` means the static bound was too loose for float32 and the caller must
      use the dynamic mode instead.
    """

    def __init__(self, opset: int, taken: set[str] | None = None, static: bool = False):
        super().__init__(opset, taken)
        self.static = static
        self.health: list[str] = []
        self._weights: set[str] = set()
        self.target: int | None = None  # static mode: the exponent the current layer settles at
        self._start = 0  # index of the current layer's first node: later tensors are private to it

    def begin(self, target: int | None) -> None:
        """Start emitting one layer (static mode: whose output will have exponent ``target``)."""
        self.target, self._start = target, len(self.nodes)

    def exponent(self, value: int) -> str:
        return self.scalar(float(value))

    def shift(self, x: Scaled, e: int, bound: float | None = None) -> Scaled:
        """Same tensor, exponent ``k + e`` (a static power-of-two factor)."""
        y = x if bound is None else replace(x, bound=bound)
        if e == 0:
            return y
        return replace(y, log2=x.log2 + e if self.static else self.op("Add", [x.log2, self.exponent(e)], "k"))

    def scale_by(self, t: str, factor_log2) -> str:
        """``t · 2**factor_log2`` (an int: a constant, skipped when 0; else a scalar tensor)."""
        if isinstance(factor_log2, int):
            return t if factor_log2 == 0 else self.op("Mul", [t, self.scalar(math.ldexp(1.0, factor_log2))], "scaled")
        return self.op("Mul", [t, self.power_of_two(factor_log2)], "scaled")

    def _floor_log2_max(self, t: str, rank: int) -> str:
        """``e = floor(log2 max T)``, clipped to [-126, 126] (an all-zero tensor gives -126)."""
        m = self._max(t, rank)
        lg = self.op("Mul", [self.op("Log", [m], "log"), self.scalar(_INV_LN2)], "log2")
        e = self.op("Floor", [lg], "e")
        return self.op("Min", [self.op("Max", [e, self.scalar(-126.0)], "e"), self.scalar(126.0)], "e")

    def _max(self, t: str, rank: int) -> str:
        """``max T`` as a scalar tensor."""
        if 3 <= rank <= 5:  # per-channel max first: stays in onnxruntime's blocked conv layout (1-3 spatial axes)
            t = self.op("GlobalMaxPool", [t], "chanmax")
        m = self.op("ReduceMax", [t], "max", keepdims=0)  # onnxruntime returns shape [1]
        return self.op("Reshape", [m, self.const(np.zeros(0), "scalar_shape", dtype=np.int64)], "max")

    def normalize(self, x: Scaled, rank: int) -> Scaled:
        """Dynamic mode: divide ``T`` by ``2**floor(log2 max T)`` (exactly) and add that to ``k``."""
        e = self._floor_log2_max(x.tensor, rank)
        t = self.op("Mul", [x.tensor, self.power_of_two(self.op("Neg", [e], "ne"))], "norm")
        return Scaled(t, self.op("Add", [x.log2, e], "k"), 1.0)

    def settle(self, x: Scaled, target: int) -> Scaled:
        """Static mode: express ``x`` with exponent ``target`` (a constant factor ``2**(k - target)``,
        folded into the weights when ``x`` comes straight from a MatMul or Conv of this builder)."""
        shift = x.log2 - target
        if shift and self._fold_into_weight(x.tensor, shift):
            shift = 0
        return Scaled(self.scale_by(x.tensor, shift), target, 0.0)

    def _fold_into_weight(self, tensor: str, shift: int) -> bool:
        """Scale the weight of the MatMul/Conv that produced ``tensor`` by ``2**shift`` instead of
        scaling ``tensor``: only for a tensor of the current layer, which nothing else reads yet."""
        private = len(self.nodes) > self._start
        node = self.nodes[-1] if private and self.nodes[-1].output[0] == tensor else None
        if node is None or node.op_type not in ("MatMul", "Conv", "ConvTranspose"):
            return False
        weight = node.input[1] if node.op_type in ("Conv", "ConvTranspose") or node.input[1] in self._weights else node.input[0]
        if weight not in self._weights:
            return False
        w = self.constants[weight]
        if not -60 <= shift <= 60 or math.ldexp(float(w.max(initial=0.0)), shift) >= 2.0**127:
            return False  # would leave float32's range: scale the output instead
        self._weights.discard(weight)  # folded once: each weight constant feeds one node
        self.constants[weight] = w * np.float32(math.ldexp(1.0, shift))  # exact: a power of two
        return True

    def weight(self, value: np.ndarray, hint: str) -> str:
        """A non-negative constant feeding exactly one MatMul/Conv: a later constant scale may fold into it."""
        name = self.const(value, hint)
        self._weights.add(name)
        return name

    def check(self, x: Scaled, rank: int) -> None:
        """Static mode: report ``max T`` of this tensor in the health output."""
        m = self.op("ReduceMax", [self.op("GlobalMaxPool", [x.tensor], "chanmax") if 3 <= rank <= 5 else x.tensor], "max", keepdims=1)
        self.health.append(self.op("Reshape", [m, self.const(np.ones(1), "one_shape", dtype=np.int64)], "health"))

    def add_bias(self, x: Scaled, bias: np.ndarray, e_bias: int, rank: int) -> Scaled:
        """``T·2**k + t·2**e_bias`` for a bias ``t`` with max in [1, 2), brought to one exponent.

        Dynamic and not yet renormalised: ``K = max(k + floor(log2 max T), e_bias)`` in the same
        pass. Otherwise ``K = max(k, e_bias)``. Both factors ``2**(k-K)``, ``2**(e_bias-K)`` are ≤ 2.
        """
        if self.static:
            k_out = max(x.log2, e_bias) if self.target is None else self.target
            shift = x.log2 - k_out
            if shift and self._fold_into_weight(x.tensor, shift):
                shift = 0
            t = self.const(np.ldexp(bias.astype(np.float64), e_bias - k_out), "absBias")
            return Scaled(self.op("Add", [self.scale_by(x.tensor, shift), t], "bias"), k_out, max(x.bound, 1.0) + 1.0)
        k_in = self.op("Add", [x.log2, self._floor_log2_max(x.tensor, rank)], "k") if x.dirty else x.log2
        k_out = self.op("Max", [k_in, self.exponent(e_bias)], "k")
        fx = self.op("Sub", [x.log2, k_out], "d")
        ft = self.power_of_two(self.op("Sub", [self.exponent(e_bias), k_out], "d"))
        y = self.op("Add", [self.scale_by(x.tensor, fx), self.op("Mul", [self.const(bias, "absBias"), ft], "bias")], "bias")
        return Scaled(y, k_out, 2.0 if x.dirty else max(x.bound, 1.0) + 1.0)

    def align(self, xs: list[Scaled]) -> tuple[list[str], str | int]:
        """Bring tensors to one common exponent ``s = max k_i``: ``T_i · 2**(k_i - s)`` (factors ≤ 1)."""
        if len(xs) == 1 or len({x.log2 for x in xs}) == 1:
            return [x.tensor for x in xs], xs[0].log2
        if self.static:
            s = max(x.log2 for x in xs)
            return [self.scale_by(x.tensor, x.log2 - s) for x in xs], s
        s = self.op("Max", [x.log2 for x in xs], "k")
        return [self.scale_by(x.tensor, self.op("Sub", [x.log2, s], "d")) for x in xs], s

    def power_of_two(self, e: str) -> str:
        """``2**e`` for an integer-valued scalar tensor ``e`` (exact; 0 below 2**-149)."""
        return self.op("Pow", [self.scalar(2.0), e], "p")
