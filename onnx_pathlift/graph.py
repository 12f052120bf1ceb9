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
        self.initializers: list[TensorProto] = []
        self._taken: set[str] = set(taken or ())
        self._scalars: dict[tuple[float, str], str] = {}

    def fresh(self, hint: str) -> str:
        """A tensor name based on ``hint`` that is not used yet."""
        name, k = hint, 0
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._taken.add(name)
        return name

    def const(self, value: np.ndarray, hint: str, dtype=np.float32) -> str:
        """Store ``value`` (cast to ``dtype``) as an initializer; return its name."""
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
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
            self.initializers,
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
    log2: str
    bound: float = 1.0
    dirty: bool = False


def pow_scaled(a: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    """``|a|**q`` as ``(m, e)`` with ``|a|**q = m · 2**e``, ``max m`` in [1, 2): no float64 overflow.

    Computed in the log domain, so ``|a| = 1e80, q = 4`` works. Entries below ``2**-149`` of the
    largest underflow to 0 in float32 (they cannot carry a relative weight float32 can represent).
    """
    a = np.abs(np.asarray(a, dtype=np.float64))
    nz = a > 0
    if not nz.any():
        return np.zeros(a.shape, np.float32), 0
    lg = np.full(a.shape, -np.inf)
    lg[nz] = q * np.log2(a[nz])
    e = int(math.floor(lg.max()))
    m = np.exp2(lg - e)
    return m.astype(np.float32), e


class LiftBuilder(GraphBuilder):
    """A :class:`GraphBuilder` with the exact power-of-two scale bookkeeping of lifted tensors."""

    def exponent(self, value: int) -> str:
        return self.scalar(float(value))

    def shift(self, x: Scaled, e: int, bound: float | None = None) -> Scaled:
        """Same tensor, exponent ``k + e`` (a static power-of-two factor)."""
        y = x if bound is None else replace(x, bound=bound)
        return y if e == 0 else replace(y, log2=self.op("Add", [x.log2, self.exponent(e)], "k"))

    def _floor_log2_max(self, t: str, rank: int) -> str:
        """``e = floor(log2 max T)``, clipped to [-126, 126] (an all-zero tensor gives -126)."""
        if rank >= 3:  # per-channel max first: stays in onnxruntime's blocked conv layout
            t = self.op("GlobalMaxPool", [t], "chanmax")
        m = self.op("ReduceMax", [t], "max", keepdims=0)  # onnxruntime returns shape [1]
        m = self.op("Reshape", [m, self.const(np.zeros(0), "scalar_shape", dtype=np.int64)], "max")
        lg = self.op("Mul", [self.op("Log", [m], "log"), self.scalar(_INV_LN2)], "log2")
        e = self.op("Floor", [lg], "e")
        return self.op("Min", [self.op("Max", [e, self.scalar(-126.0)], "e"), self.scalar(126.0)], "e")

    def normalize(self, x: Scaled, rank: int) -> Scaled:
        """Divide ``T`` by ``2**floor(log2 max T)`` (exactly) and add that to ``k``."""
        e = self._floor_log2_max(x.tensor, rank)
        t = self.op("Mul", [x.tensor, self.power_of_two(self.op("Neg", [e], "ne"))], "norm")
        return Scaled(t, self.op("Add", [x.log2, e], "k"), 1.0)

    def normalize_add(self, x: Scaled, bias: str, e_bias: int, rank: int) -> Scaled:
        """``T·2**k + t·2**e_bias`` renormalised in the same pass (bias ``t`` with max in [1, 2)).

        ``K = max(k + floor(log2 max T), e_bias)``; result ``T·2**(k-K) + t·2**(e_bias-K)``, both
        factors ≤ 2, so ``max ≤ 4``.
        """
        e = self._floor_log2_max(x.tensor, rank)
        k_out = self.op("Max", [self.op("Add", [x.log2, e], "k"), self.exponent(e_bias)], "k")
        fx = self.power_of_two(self.op("Sub", [x.log2, k_out], "d"))
        ft = self.power_of_two(self.op("Sub", [self.exponent(e_bias), k_out], "d"))
        y = self.op("Add", [self.op("Mul", [x.tensor, fx], "norm"), self.op("Mul", [bias, ft], "bias")], "bias")
        return Scaled(y, k_out, 2.0)

    def align(self, xs: list[Scaled]) -> tuple[list[str], str]:
        """Bring tensors to one common exponent ``s = max k_i``: ``T_i · 2**(k_i - s)`` (factors ≤ 1)."""
        if len(xs) == 1 or len({x.log2 for x in xs}) == 1:
            return [x.tensor for x in xs], xs[0].log2
        s = self.op("Max", [x.log2 for x in xs], "k")
        out = [self.op("Mul", [x.tensor, self.power_of_two(self.op("Sub", [x.log2, s], "d"))], "aligned") for x in xs]
        return out, s

    def power_of_two(self, e: str) -> str:
        """``2**e`` for an integer-valued scalar tensor ``e`` (exact; 0 below 2**-149)."""
        return self.op("Pow", [self.scalar(2.0), e], "p")
