"""The channel-pruning API that op modules declare against (as Torch-Pruning's per-layer pruning functions).

Every channel of every activation tensor is a *slot* (:class:`Layout`: slots ``base .. base+n-1`` along
``axis``, each ``block`` features wide). An op type's :class:`ChannelRule` says three things:

* ``join(b, node, xs)``: which slots of its inputs ``xs`` and outputs are one channel (``b.join``), which
  constant entries go with a slot (``b.entry``: ``sink`` weight columns zeroed in the masked model,
  ``source`` filters the l1 criterion sums, ``slice`` per-channel constants), and which slots it cannot
  slice (``b.pin`` with the reason; ``b.opaque`` pins everything it touches);
* ``edit(node, data, ctx)``: the edit of the node itself in the slim model (an attribute, a size
  constant), ``data`` being what ``join`` recorded with ``b.edit``;
* ``macs(node, consts, shapes)``: its multiply-accumulates (the parameters are the float constants it
  reads), for the ``macs`` cost and the per-node table; ``weight``: its work is proportional to the
  product of its weight's (input 1) axes, which the pruning cuts;
* for recovery (:mod:`onnx_pathlift.pruning.recover`): ``refit``, how its weight is refit by least
  squares (:data:`REFITS`; None: its bias alone is shifted), ``bias`` the input index of its bias along
  the output channels (None: it has none), ``adds`` whether its output is the sum of its operands (a
  residual skip).

The rules are registered with :func:`onnx_pathlift.ops.registry.channel_rule`; an op type without one pins
the channels it touches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from onnx import NodeProto

#: one removable piece of a constant: (tensor name, axis, first index, end index)
Entry = tuple[str, int, int, int]


@dataclass
class Layout:
    """The channels of one tensor: slots ``base .. base+n-1`` along ``axis``, each ``block`` wide."""

    base: int
    n: int
    axis: int
    block: int = 1


class ChannelBuilder(Protocol):
    """What a rule's ``join`` may call (implemented by :mod:`onnx_pathlift.pruning.channels`)."""

    consts: dict[str, np.ndarray]
    layouts: dict[str, Layout]
    uses: Counter  # tensor -> how many node inputs of the source model read it

    def new(self, tensor: str, n: int, axis: int, block: int = 1) -> Layout: ...
    def slots(self, layout: Layout) -> np.ndarray: ...
    def join(self, a: np.ndarray, b: np.ndarray) -> None: ...
    def label(self, node: NodeProto) -> str: ...  # ``Conv 'block.conv1.weight'``: op type and layer name
    def pin(self, layout: Layout | None, why: str) -> None: ...
    def entry(self, layout: Layout, kind: str, name: str, axis: int, block: int = 1, start: int = 0) -> None: ...
    def producer(self, name: str) -> NodeProto | None: ...
    def owned_or_pin(self, names: list[str], layouts: list[Layout | None], node: NodeProto) -> bool: ...
    def attrs(self, node: NodeProto) -> dict: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def is_const(self, name: str) -> bool: ...
    def opaque(self, node: NodeProto, why: str = "") -> None: ...
    def same(self, node: NodeProto, x: Layout) -> Layout: ...
    def edit(self, node: NodeProto, data: Any) -> None: ...
    def width(self, const: str, index: int, tensor: str) -> None: ...


class Constants(Protocol):
    """Named constants of the slim model being written (initializers or Constant nodes)."""

    def get(self, name: str) -> np.ndarray: ...
    def set(self, name: str, value: np.ndarray) -> None: ...


@dataclass
class SlimEdit:
    """What a rule's ``edit`` sees: the slim model's constants, the channels kept per tensor and the
    channel indices removed per tensor."""

    consts: Constants
    kept: dict[str, int]
    gone: dict[str, set[int]]


Join = Callable[[ChannelBuilder, NodeProto, list[Layout]], None]
Edit = Callable[[NodeProto, Any, SlimEdit], None]
Macs = Callable[[NodeProto, dict[str, np.ndarray], dict[str, tuple[int, ...]]], int]
#: which inputs must be activations for ``join`` to be called (else the node is opaque): "single" (one
#: activation, input 0, one output), "one" (one activation, input 0), "first" (input 0 an activation),
#: "any" (activations anywhere)
OPERANDS = ("single", "one", "first", "any")
#: how a weight layer is refit: "kernel" (a 2-D conv kernel ``W[o, c/group, kh, kw]``, one fit per group on
#: im2col patches), "dense" (``x @ W`` with Gemm's ``transB``/``alpha`` attributes where given)
REFITS = ("kernel", "dense")


@dataclass(frozen=True)
class ChannelRule:
    """How structured pruning treats one ONNX op type (see the module docstring)."""

    join: Join
    operands: str = "single"
    edit: Edit | None = None
    macs: Macs | None = None
    weight: bool = False
    refit: str | None = None
    bias: int | None = None
    adds: bool = False
    statistics: tuple[int, ...] = ()  # inputs that hold running statistics folded away, not parameters


def optional_input(node: NodeProto, k: int) -> str | None:
    """The name of input ``k`` of ``node``, None when absent or empty."""
    return node.input[k] if len(node.input) > k and node.input[k] else None


def per_channel(b: ChannelBuilder, node: NodeProto, xs: list[Layout]) -> None:
    """An op that acts on each channel alone (ReLU, a pool, Identity, ...): output channel ``c`` is
    input channel ``c``, so both are one channel (slicing commutes with it)."""
    b.same(node, xs[0])
