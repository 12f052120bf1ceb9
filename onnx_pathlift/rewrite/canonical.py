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

from collections import Counter
from dataclasses import replace

import numpy as np

from ..ir.dag import Dag, Layer
from ..ops import LAYER_OPS


class _Work:
    """A mutable copy of a DAG: layers in topological order, the analysed outputs, what was done."""

    def __init__(self, dag: Dag):
        self.dag = dag
        self.layers: dict[str, Layer] = {layer.name: layer for layer in dag.layers()}
        self.outputs = dict(dag.outputs)
        self.applied: list[str] = []

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


def _is_identity(layer: Layer, src: Layer) -> bool:
    if layer.op == "reshape":
        return tuple(layer.shape) == tuple(src.shape)
    if layer.op == "transpose":
        return list(layer.attrs["perm"]) == list(range(len(layer.shape)))
    if layer.op == "sum":
        return len(layer.inputs) == 1 and layer.attrs["signs"][0] > 0 and tuple(layer.shape) == tuple(src.shape)
    if layer.op == "reduce":
        return layer.attrs["count"] == 1 and tuple(layer.shape) == tuple(src.shape)
    return False


def _as_reduce(layer: Layer) -> Layer:
    """A global pooling as the reduction over the spatial axes it computes (other layers unchanged)."""
    if layer.op != "globalpool":
        return layer
    attrs = {"mode": "max" if layer.attrs["mode"] == "max" else "mean", "axes": list(range(2, len(layer.shape))),
             "keepdims": 1, "count": int(np.prod(layer.attrs["in_spatial"]))}
    return replace(layer, op="reduce", attrs=attrs)


def _merged_affine(first: Layer, second: Layer) -> dict[str, np.ndarray]:
    """The parameters of ``second ∘ first`` (both affine)."""
    s1, s2 = first.params.get("scale"), second.params.get("scale")
    t1, t2 = first.params.get("bias"), second.params.get("bias")
    params = {}
    if s1 is not None or s2 is not None:
        params["scale"] = s1 * s2 if s1 is not None and s2 is not None else s1 if s1 is not None else s2
    if t1 is not None or t2 is not None:
        scaled = None if t1 is None else (t1 * s2 if s2 is not None else t1)
        params["bias"] = scaled + t2 if scaled is not None and t2 is not None else scaled if scaled is not None else t2
    return params


def _one_rewrite(w: _Work) -> bool:
    """Apply the first rewrite found (in topological order); whether one was applied."""
    readers = w.readers()
    for name, layer in w.layers.items():
        if not layer.inputs or layer.inputs[0] not in w.layers:
            continue
        src = w.layers[layer.inputs[0]]
        if _is_identity(layer, src):
            w.drop(name, src.name)
            w.applied.append(f"dropped identity {layer.op} {name!r}")
            return True
        if not w.only_feeds(src.name, readers):
            continue
        if layer.op == src.op == "reshape":
            w.layers[name] = replace(layer, inputs=list(src.inputs))
            del w.layers[src.name]
            w.applied.append(f"merged reshape {src.name!r} into reshape {name!r}")
            return True
        if layer.op == src.op == "transpose":
            perm = [src.attrs["perm"][p] for p in layer.attrs["perm"]]
            w.layers[name] = replace(layer, inputs=list(src.inputs), attrs={**layer.attrs, "perm": perm})
            del w.layers[src.name]
            w.applied.append(f"merged transpose {src.name!r} into transpose {name!r}")
            return True
        if layer.op == src.op == "affine":
            w.layers[name] = replace(layer, inputs=list(src.inputs), params=_merged_affine(src, layer), origins={})
            del w.layers[src.name]
            w.applied.append(f"merged affine {src.name!r} into affine {name!r}")
            return True
        if layer.op == "affine" and "scale" in layer.params:
            folded = LAYER_OPS[src.op].absorb_scale(src, layer.params["scale"])  # None unless src is linear
            if folded is None:
                continue
            w.layers[src.name] = replace(folded, origins={})
            rest = {k: v for k, v in layer.params.items() if k != "scale"}
            w.applied.append(f"folded the scale of affine {name!r} into {src.op} {src.name!r}")
            if rest:
                w.layers[name] = replace(layer, params=rest, origins={})
            else:
                w.drop(name, src.name)
            return True
        if _fold_forward(w, layer, src, readers) or _move_reshape(w, layer, src):
            return True
    return False


def _row_wise(layer: Layer) -> bool:
    """Whether ``layer`` acts on each row of its input's last axis alike (so a reshape that keeps that
    axis commutes with it)."""
    if layer.op == "relu":
        return True
    if layer.op == "affine":  # each parameter constant along every axis but the last
        return all(v.ndim <= len(layer.shape) and all(d == 1 for d in v.shape[:-1]) for v in layer.params.values())
    return layer.op == "dense" and layer.attrs["side"] == "right" and layer.params["W"].ndim == 2


def _move_reshape(w: _Work, layer: Layer, src: Layer) -> bool:
    """Move reshape ``src`` (keeping the last axis, feeding only ``layer``) after the row-wise ``layer``."""
    if src.op != "reshape" or not _row_wise(layer) or not src.shape or src.shape[-1] != w.layers[src.inputs[0]].shape[-1]:
        return False
    rows = w.layers[src.inputs[0]].shape[:-1]
    params = dict(layer.params) if layer.op == "dense" else \
        {k: v.reshape((1,) * len(rows) + (v.size,)) if v.size > 1 else v.reshape(()) for k, v in layer.params.items()}
    moved = replace(layer, inputs=list(src.inputs), shape=(*rows, layer.shape[-1]), params=params, origins={})
    w.layers[layer.name] = moved
    w.layers[src.name] = replace(src, inputs=[layer.name], shape=layer.shape)
    w.layers = _reordered(w.layers, src.name, layer.name)
    w.drop_alias(layer.name, src.name)
    w.applied.append(f"moved reshape {src.name!r} after {layer.op} {layer.name!r}")
    return True


def _reordered(layers: dict[str, Layer], first: str, after: str) -> dict[str, Layer]:
    """The layers with ``first`` moved to just after ``after`` (topological order kept)."""
    order = [n for n in layers if n != first]
    order.insert(order.index(after) + 1, first)
    return {n: layers[n] for n in order}


def _fold_forward(w: _Work, layer: Layer, src: Layer, readers: Counter) -> bool:
    """Fold the scale of affine ``src`` (feeding only ``layer``, a linear layer) into ``layer``'s weights."""
    if src.op != "affine" or "scale" not in src.params or not w.only_feeds(src.name, readers):
        return False
    s = src.params["scale"]
    if not np.all(s != 0):
        return False
    folded = LAYER_OPS[layer.op].absorb_input_scale(layer, s, src.shape)
    if folded is None:
        return False
    w.layers[layer.name] = replace(folded, origins={})
    w.applied.append(f"folded the scale of affine {src.name!r} into {layer.op} {layer.name!r} (input side)")
    if "bias" in src.params:
        w.layers[src.name] = replace(src, params={"bias": src.params["bias"] / s}, origins={})
    else:
        w.drop(src.name, src.inputs[0])
    return True


def _full_rank(layer: Layer) -> Layer:
    """An affine layer's parameters padded with leading axes of size 1 to the layer's rank."""
    rank = len(layer.shape)
    params = {k: v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v for k, v in layer.params.items()}
    return replace(layer, params=params)


def canonical_form(dag: Dag) -> tuple[Dag, list[str]]:
    """The DAG in the canonical spelling (same function), and the rewrites applied, in order."""
    w = _Work(dag)
    for name, layer in w.layers.items():
        w.layers[name] = _as_reduce(layer)
    for _ in range(4 * len(w.layers) + 1):  # every rewrite removes a layer or a scale: bounded
        if not _one_rewrite(w):
            break
    for name, layer in w.layers.items():
        if layer.op == "affine":
            w.layers[name] = _full_rank(layer)
    return w.to_dag(), w.applied


def summary(applied: list[str]) -> dict[str, int]:
    """How many rewrites of each kind (the text before the first quoted name)."""
    return dict(Counter(a.split(" '")[0] for a in applied))
