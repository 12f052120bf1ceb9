"""One spelling per network, for ``compare``: a DAG → DAG transform that keeps the function.

Exporters and optimisers spell one network differently (onnxsim and onnxruntime fold a
BatchNormalization into the conv before it and merge reshapes; exporters add identities). The
path-lifting Φ depends on the spelling, so :func:`canonical_form` brings a DAG to one spelling,
applying until nothing changes:

* an identity is dropped: a reshape to its input's shape, a transpose by the identity permutation,
  a one-input sum of sign +1;
* a chain of two reshapes (transposes) becomes one reshape (one transpose of the composed
  permutation) when the first feeds only the second;
* two affine layers in a row, the first feeding only the second, become one:
  ``s₂·(s₁·x + t₁) + t₂ = (s₂s₁)·x + (s₂t₁ + t₂)``;
* an affine scale right after a conv, conv-transpose or dense layer that feeds only it is folded into
  that layer's weights (``s·(W∗x) = (sW)∗x`` for a per-output-channel ``s``, the layer's
  ``absorb_scale``); the bias stays an affine layer after it;
* affine parameters are laid out at the layer's full rank (``(C,1,1)`` becomes ``(1,C,1,1)``).

Every rewrite is exact on the function, so the certificate ``‖A(x) − B(x)‖_1 ≤ max(‖x‖_∞,1)·d``
holds for the canonical parameters of A and B; ``d`` itself is the path-metric of those canonical
parameters (it is spelling-dependent: both models must be brought to the same spelling).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from .dag import Dag, Layer
from .ops import LAYER_OPS

_LINEAR = {"conv", "deconv", "dense"}


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

    def to_dag(self) -> Dag:
        out = Dag(opset=self.dag.opset, inputs=list(self.dag.inputs), outputs=self.outputs, notes=list(self.dag.notes),
                  activation_qdq=self.dag.activation_qdq)
        for layer in self.layers.values():
            out.add(layer, self.dag.graph.nodes[layer.name]["kind"] if layer.name in self.dag.graph
                    else LAYER_OPS[layer.op].kind)
        return out


def _is_identity(layer: Layer, src: Layer) -> bool:
    if layer.op == "reshape":
        return tuple(layer.shape) == tuple(src.shape)
    if layer.op == "transpose":
        return list(layer.attrs["perm"]) == list(range(len(layer.shape)))
    if layer.op == "sum":
        return len(layer.inputs) == 1 and layer.attrs["signs"][0] > 0 and tuple(layer.shape) == tuple(src.shape)
    return False


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
        if layer.op == "affine" and src.op in _LINEAR and "scale" in layer.params:
            folded = LAYER_OPS[src.op].absorb_scale(src, layer.params["scale"])
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
    return False


def _full_rank(layer: Layer) -> Layer:
    """An affine layer's parameters padded with leading axes of size 1 to the layer's rank."""
    rank = len(layer.shape)
    params = {k: v.reshape((1,) * (rank - v.ndim) + v.shape) if v.ndim < rank else v for k, v in layer.params.items()}
    return replace(layer, params=params)


def canonical_form(dag: Dag) -> tuple[Dag, list[str]]:
    """The DAG in the canonical spelling (same function), and the rewrites applied, in order."""
    w = _Work(dag)
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
