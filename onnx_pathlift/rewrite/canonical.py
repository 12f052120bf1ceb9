"""One spelling per network, for ``compare``: a DAG → DAG transform that keeps the function.

Exporters and optimisers spell one network differently (onnxsim and onnxruntime fold a
BatchNormalization into the conv before it and merge reshapes; exporters add identities). The
path-lifting Φ depends on the spelling, so :func:`canonical_form` brings a DAG to one spelling,
applying until nothing changes:

* a global pooling is written as the reduction it is (GlobalAveragePool = ReduceMean over the spatial
  axes, keepdims; torch's dynamo exporter writes AdaptiveAvgPool2d(1) as the latter);
* an identity is dropped: a reshape to its input's shape, a transpose by the identity permutation,
  a one-input sum of sign +1, a reduction over one element that keeps the shape;
* a chain of two reshapes (transposes) becomes one reshape (one transpose of the composed
  permutation) when the first feeds only the second;
* two affine layers in a row, the first feeding only the second, become one:
  ``s₂·(s₁·x + t₁) + t₂ = (s₂s₁)·x + (s₂t₁ + t₂)``;
* an affine scale right after a conv, conv-transpose or dense layer that feeds only it is folded into
  that layer's weights (``s·(W∗x) = (sW)∗x`` for a per-output-channel ``s``, the layer's
  ``absorb_scale``); the bias stays an affine layer after it;
* an affine scale right before such a layer that reads only it, per input channel and without zeros, is
  folded into that layer's weights along their input-channel axis (``W∗(s⊙x + t) = (W·s)∗(x + t/s)``,
  the layer's ``absorb_input_scale``; onnxsim folds an input normalisation's Mul this way): what stays
  before the layer is the bias ``t/s``, so zero padding still pads zeros;
* a reshape that keeps the last axis is moved after the ReLU, the affine layer varying along the last
  axis only, or the dense layer ``x @ W`` that reads only it (they act on each row of the last axis
  alike; onnxruntime and onnxsim write a MatMul on a rank-4 tensor as Reshape → Gemm → Reshape), where
  it meets the next reshape;
* affine parameters are laid out at the layer's full rank (``(C,1,1)`` becomes ``(1,C,1,1)``).

Every rewrite is exact on the function, so the certificate ``‖A(x) − B(x)‖_1 ≤ max(‖x‖_∞,1)·d``
holds for the canonical parameters of A and B; ``d`` itself is the path-metric of those canonical
parameters (it is spelling-dependent: both models must be brought to the same spelling).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING

from ..frontend.names import describe
from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS

if TYPE_CHECKING:
    from ..frontend.names import LayerNames


class _Work:
    """A mutable copy of a DAG: layers in topological order, the analysed outputs, what was done (its
    notes name layers by ``names``: :func:`~onnx_pathlift.frontend.names.describe`)."""

    def __init__(self, dag: Dag, names: LayerNames | None = None):
        self.dag = dag
        self.names = names
        self.layers: dict[str, Layer] = {layer.name: layer for layer in dag.layers()}
        self.outputs = dict(dag.outputs)
        self.applied: list[str] = []

    def say(self, layer: Layer) -> str:
        """``op 'name'``: how a note names ``layer``."""
        return describe(layer, self.names, node=False)

    def readers(self) -> Counter:
        """How many times each layer is read (an analysed output counts as a reader)."""
        count = Counter(i for layer in self.layers.values() for i in layer.inputs)
        count.update(self.outputs.values())
        return count

    def only_feeds(self, name: str, readers: Counter) -> bool:
        """Whether layer ``name`` feeds exactly one layer and is no analysed output."""
        return readers[name] == 1 and name not in self.outputs.values()

    def drop(self, name: str, by: str) -> None:
        """Remove layer ``name``; whatever read it reads layer ``by``."""
        del self.layers[name]
        for n, layer in self.layers.items():
            if name in layer.inputs:
                self.layers[n] = replace(layer, inputs=[by if i == name else i for i in layer.inputs])
        self.outputs = {o: by if v == name else v for o, v in self.outputs.items()}

    def drop_alias(self, old: str, new: str) -> None:
        """Whatever read layer ``old`` (but ``new`` itself) reads layer ``new``."""
        for n, layer in self.layers.items():
            if n != new and old in layer.inputs:
                self.layers[n] = replace(layer, inputs=[new if i == old else i for i in layer.inputs])
        self.outputs = {o: new if v == old else v for o, v in self.outputs.items()}

    def to_dag(self) -> Dag:
        out = Dag(opset=self.dag.opset, inputs=list(self.dag.inputs), outputs=self.outputs, notes=list(self.dag.notes),
                  activation_qdq=self.dag.activation_qdq)
        for layer in self.layers.values():
            out.add(layer)
        return out


class Rule:
    """One canonical rewrite of a layer ``layer`` whose first input is ``src``: :meth:`why_not` says why it
    does not apply (None when it does), :meth:`apply` rewrites the work and returns its note. The rules
    ask the op declarations (:class:`~onnx_pathlift.ops.LayerOp`), never op names."""

    def why_not(self, w: _Work, layer: Layer, src: Layer, readers: Counter) -> str | None:
        raise NotImplementedError

    def apply(self, w: _Work, layer: Layer, src: Layer) -> str:
        raise NotImplementedError


class DropIdentity(Rule):
    """``y = x`` is dropped, its readers read ``x``: a reshape to its input's shape, a transpose by the
    identity permutation, a one-input sum of sign +1, a reduction over one element that keeps the shape
    (:meth:`~onnx_pathlift.ops.LayerOp.is_identity`)."""

    def why_not(self, w, layer, src, readers):
        return None if LAYER_OPS[layer.op].is_identity(layer, src.shape) else f"{layer.op} {layer.name!r} is not the identity"

    def apply(self, w, layer, src):
        w.drop(layer.name, src.name)
        return f"dropped identity {w.say(layer)}"


def _sole_reader(w: _Work, layer: Layer, src: Layer, readers: Counter) -> str | None:
    """Why ``layer`` is not the only reader of ``src`` (None when it is): a rewrite that changes ``src``
    would change its other readers too."""
    return None if w.only_feeds(src.name, readers) else f"{src.name!r} feeds more than {layer.name!r}"


class Compose(Rule):
    """``g ∘ f`` of one op, ``f`` feeding only ``g``, becomes one layer: two reshapes one reshape, two
    transposes one transpose of the composed permutation, two affine layers
    ``s₂·(s₁·x + t₁) + t₂ = (s₂s₁)·x + (s₂t₁ + t₂)`` (:meth:`~onnx_pathlift.ops.LayerOp.compose`)."""

    def why_not(self, w, layer, src, readers):
        if (reason := _sole_reader(w, layer, src, readers)) is not None:
            return reason
        return None if LAYER_OPS[layer.op].compose(src, layer) is not None else f"{layer.op} does not compose with {src.op}"

    def apply(self, w, layer, src):
        w.layers[layer.name] = LAYER_OPS[layer.op].compose(src, layer)
        del w.layers[src.name]
        return f"merged {w.say(src)} into {w.say(layer)}"


class FoldScale(Rule):
    """A scale right after a linear layer ``L`` that feeds only it is folded into ``L``'s weights:
    ``s·L(x) + t = (sL)(x) + t`` for a per-output-channel ``s`` (``L``'s ``absorb_scale``); the bias
    stays a layer after it (:meth:`~onnx_pathlift.ops.LayerOp.split_scale`, scale first)."""

    def why_not(self, w, layer, src, readers):
        if (reason := _sole_reader(w, layer, src, readers)) is not None:
            return reason
        split = LAYER_OPS[layer.op].split_scale(layer, scale_first=True)
        if split is None:
            return f"{layer.op} {layer.name!r} has no scale"
        return None if LAYER_OPS[src.op].absorb_scale(src, split[0]) is not None else f"{src.op} {src.name!r} cannot take it"

    def apply(self, w, layer, src):
        s, rest = LAYER_OPS[layer.op].split_scale(layer, scale_first=True)
        w.layers[src.name] = replace(LAYER_OPS[src.op].absorb_scale(src, s), origins={})
        if rest is not None:
            w.layers[layer.name] = rest
        else:
            w.drop(layer.name, src.name)
        return f"folded the scale of {w.say(layer)} into {w.say(src)}"


class FoldInputScale(Rule):
    """A scale right before a linear layer ``L`` that reads only it, per input channel and without zeros,
    is folded into ``L``'s weights along their input-channel axis: ``L(s⊙x + t) = (L·s)(x + t/s)`` (``L``'s
    ``absorb_input_scale``; onnxsim folds an input normalisation's Mul so); what stays before ``L`` is the
    bias ``t/s``, so zero padding still pads zeros."""

    def why_not(self, w, layer, src, readers):
        if (reason := _sole_reader(w, layer, src, readers)) is not None:
            return reason
        split = LAYER_OPS[src.op].split_scale(src, scale_first=False)
        if split is None:
            return f"{src.op} {src.name!r} has no scale without zeros"
        folded = LAYER_OPS[layer.op].absorb_input_scale(layer, split[0], src.shape)
        return None if folded is not None else f"{layer.op} {layer.name!r} cannot take it"

    def apply(self, w, layer, src):
        s, rest = LAYER_OPS[src.op].split_scale(src, scale_first=False)
        w.layers[layer.name] = replace(LAYER_OPS[layer.op].absorb_input_scale(layer, s, src.shape), origins={})
        if rest is not None:
            w.layers[src.name] = rest
        else:
            w.drop(src.name, src.inputs[0])
        return f"folded the scale of {w.say(src)} into {w.say(layer)} (input side)"


class MoveReshape(Rule):
    """A reshape that keeps the last axis, feeding only a layer that acts on each row of that axis alike
    (a ReLU, an affine layer varying along the last axis only, ``x @ W``), moves after it:
    ``f(reshape(x)) = reshape(f(x))`` row by row; there it meets the next reshape (onnxruntime and onnxsim
    write a MatMul on a rank-4 tensor as Reshape → Gemm → Reshape). A layer with a scale stays where it
    is (:class:`FoldScale` folds it, or nothing does)."""

    def why_not(self, w, layer, src, readers):
        if (reason := _sole_reader(w, layer, src, readers)) is not None:
            return reason
        if not src.inputs or not LAYER_OPS[src.op].keeps_rows(src, w.layers[src.inputs[0]].shape):
            return f"{src.op} {src.name!r} does not keep the last axis"
        if LAYER_OPS[layer.op].split_scale(layer, scale_first=True) is not None:
            return f"{layer.op} {layer.name!r} has a scale, which stays in place"
        rows = w.layers[src.inputs[0]].shape[:-1]
        return None if LAYER_OPS[layer.op].row_params(layer, rows) is not None else f"{layer.op} {layer.name!r} is not row-wise"

    def apply(self, w, layer, src):
        rows = w.layers[src.inputs[0]].shape[:-1]
        params = LAYER_OPS[layer.op].row_params(layer, rows)
        w.layers[layer.name] = replace(layer, inputs=list(src.inputs), shape=(*rows, layer.shape[-1]), params=params, origins={})
        w.layers[src.name] = replace(src, inputs=[layer.name], shape=layer.shape)
        w.layers = _reordered(w.layers, src.name, layer.name)
        w.drop_alias(layer.name, src.name)
        return f"moved {w.say(src)} after {w.say(layer)}"


def _reordered(layers: dict[str, Layer], first: str, after: str) -> dict[str, Layer]:
    """The layers with ``first`` moved to just after ``after`` (topological order kept)."""
    order = [n for n in layers if n != first]
    order.insert(order.index(after) + 1, first)
    return {n: layers[n] for n in order}


#: the rewrites, tried in this order on each layer (in topological order) until none applies
RULES: list[Rule] = [DropIdentity(), Compose(), FoldScale(), FoldInputScale(), MoveReshape()]


def _one_rewrite(w: _Work) -> bool:
    """Apply the first rule that applies to the first layer it applies to; whether one was applied."""
    readers = w.readers()
    for layer in w.layers.values():
        if not layer.inputs or layer.inputs[0] not in w.layers:
            continue
        src = w.layers[layer.inputs[0]]
        for rule in RULES:
            if rule.why_not(w, layer, src, readers) is None:
                w.applied.append(rule.apply(w, layer, src))
                return True
    return False


def why_not(dag: Dag, name: str) -> dict[str, str | None]:
    """Per rule, why it does not apply to layer ``name`` of ``dag`` as it stands (None: it applies)."""
    w = _Work(dag)
    layer = w.layers[name]
    if not layer.inputs or layer.inputs[0] not in w.layers:
        return {type(rule).__name__: f"{name!r} reads no layer" for rule in RULES}
    return {type(rule).__name__: rule.why_not(w, layer, w.layers[layer.inputs[0]], w.readers()) for rule in RULES}


def canonical_form(dag: Dag, names: LayerNames | None = None) -> tuple[Dag, list[str]]:
    """The DAG in the canonical spelling (same function), and the rewrites applied, in order (each naming
    its layers by ``names``, the model's layer names; None: by DAG name)."""
    w = _Work(dag, names)
    for name, layer in w.layers.items():
        w.layers[name] = LAYER_OPS[layer.op].respelled(layer)
    for _ in range(4 * len(w.layers) + 1):  # every rewrite removes a layer or a scale: bounded
        if not _one_rewrite(w):
            break
    for name, layer in w.layers.items():
        w.layers[name] = LAYER_OPS[layer.op].full_rank(layer)
    return w.to_dag(), w.applied


def summary(applied: list[str]) -> dict[str, int]:
    """How many rewrites of each kind (the text before the first quoted name; ``repr`` quotes a name holding
    ``'`` with ``"``)."""
    return dict(Counter(re.split(" ['\"]", a, maxsplit=1)[0] for a in applied))
